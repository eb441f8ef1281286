"""The best epoch so far by one per-epoch metric, with what it takes to finish a trial on it.

Robust accuracy often peaks and then decays (robust overfitting, Rice et al. 2020), so the model
worth testing and certifying is the best validation epoch's, not the last one's. This keeps a copy
of that epoch's weights and method state (in memory and in every checkpoint, so it survives a
resume) and its metrics.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from certstudy.errors import TrialFailed
from certstudy.methods.base import Method


def _detached(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in state.items()}


class BestEpoch:
    def __init__(self, metric: str, mode: str) -> None:
        self.metric = metric
        self.mode = mode
        self.epoch: int | None = None
        self.value = math.nan
        self.metrics: dict[str, float | str] = {}
        self._model: dict[str, Any] = {}
        self._method: dict[str, Any] = {}

    def better(self, value: float) -> bool:
        """Strictly better than the best so far (ties keep the earlier epoch); NaN never is."""
        if not math.isfinite(value):
            return False
        if self.epoch is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value

    def update(self, epoch: int, metrics: dict[str, float | str], model: nn.Module, method: Method) -> bool:
        if self.metric not in metrics:
            per_epoch = ", ".join(sorted(k for k in metrics if "/" in k))
            raise TrialFailed(
                f"evaluation.best_metric {self.metric!r} is not reported every epoch; per-epoch metrics: {per_epoch}"
            )
        value = float(metrics[self.metric])
        if not self.better(value):
            return False
        self.epoch, self.value, self.metrics = epoch, value, dict(metrics)
        self._model = _detached(model.state_dict())
        self._method = _detached(method.state_dict())
        return True

    def restore(self, model: nn.Module, method: Method) -> None:
        """Loads the best epoch's weights and method state into ``model`` and ``method``."""
        model.load_state_dict(self._model)
        method.load_state_dict(self._method)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "value": self.value,
            "metrics": self.metrics,
            "model": self._model,
            "method": self._method,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state or state.get("epoch") is None:
            return
        self.epoch, self.value = int(state["epoch"]), float(state["value"])
        self.metrics, self._model, self._method = dict(state["metrics"]), state["model"], state["method"]
