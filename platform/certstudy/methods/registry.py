"""The training-method registry."""

from certstudy.registry import Registry

METHODS: Registry = Registry("method")
