"""The training-method registry."""

from certstudy.methods.base import Method
from certstudy.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")
