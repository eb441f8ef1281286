"""Models by name (see base.ModelFactory)."""

from certstudy.models import cnn, cnn7, dm, gloro_nets, lenet, mlp, mnist_cnn, preact_resnet, two_layer, wide_resnet  # noqa: F401  (registration)
from certstudy.models.base import ModelParams
from certstudy.models.registry import MODELS

__all__ = ["MODELS", "ModelParams"]
