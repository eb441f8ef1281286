"""The certifier registry."""

from certstudy.registry import Registry

CERTIFIERS: Registry = Registry("certifier")
