"""The model registry."""

from certstudy.models.base import ModelFactory
from certstudy.registry import Registry

MODELS: Registry[type[ModelFactory]] = Registry("model")
