"""Empirical risk minimisation: the mean cross-entropy on clean inputs (the baseline)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from certstudy.methods.base import Method, MethodParams
from certstudy.methods.registry import METHODS


class ERMParams(MethodParams):
    """ERM has no hyperparameters of its own."""


@METHODS.register("erm")
class ERM(Method):
    Params = ERMParams

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)
