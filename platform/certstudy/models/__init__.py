"""Models by name (see base.ModelFactory)."""

from certstudy.models import cnn, mlp, two_layer  # noqa: F401  (registration)
from certstudy.models.base import ModelParams
from certstudy.models.registry import MODELS

__all__ = ["MODELS", "ModelParams"]
