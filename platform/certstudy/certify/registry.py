"""The certifier registry."""

from certstudy.certify.base import Certifier
from certstudy.registry import Registry

CERTIFIERS: Registry[type[Certifier]] = Registry("certifier")
