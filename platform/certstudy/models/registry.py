"""The model registry."""

from certstudy.registry import Registry

MODELS: Registry = Registry("model")
