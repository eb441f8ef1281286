"""The one interface every training method implements.

A method is constructed from its typed params and a ``MethodContext`` and must provide
``loss(model, x, y) -> Tensor`` (a scalar to minimise). Optional hooks have no-op defaults here,
so the trial loop calls them on every method alike and never asks which method it is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from certstudy.data.base import Splits
from certstudy.schema import Schema


class MethodParams(Schema):
    """Base for a method's hyperparameters (the study file's ``params`` / ``search`` keys)."""


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the data and where it runs."""

    num_classes: int
    input_shape: tuple[int, ...]
    bounds: tuple[float, float] | None
    device: torch.device
    epochs: int


class Method:
    """Base class; subclasses set ``Params`` and implement ``loss``."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    needs: ClassVar[frozenset[str]] = frozenset()
    """What the method's loss needs of every layer of the model it trains (``certify/network.py``);
    checked at validation like the certifiers' needs."""
    epoch_metric_names: ClassVar[frozenset[str]] = frozenset()
    """Every name ``epoch_metrics`` may report: what a study's objectives, best-epoch and pruning
    metrics are checked against before anything runs (a test holds each method to it)."""
    model_is_classifier: ClassVar[bool] = True
    """The trained network is the classifier whose robustness is reported, so attacks on it (AutoAttack)
    measure it; False where it is a component of another classifier (smoothing's base classifier)."""

    @classmethod
    def needs_of(cls, params: MethodParams) -> frozenset[str]:
        """What the loss needs of every layer with these parameters (``needs`` unless a parameter adds more)."""
        return cls.needs

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        self.params = params
        self.context = context

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    @classmethod
    def certifier_defaults(cls, params: MethodParams) -> dict[str, dict[str, Any]]:
        """Certifier params this method's hyperparameters imply, by certifier name (e.g. the
        smoothing certifier's sigma is the training sigma); a study's own values override them."""
        return {}

    @classmethod
    def threat_model(cls, params: MethodParams) -> tuple[str, float] | None:
        """The (norm, radius) the method trains against, for evaluations that attack at the
        training radius (``evaluation.attack.at_training_radius``); None when it has none."""
        return None

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The network the method trains (e.g. with extra outputs); default: unchanged."""
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called before each training epoch (0-based), e.g. for eps schedules."""

    def epoch_metrics(self) -> dict[str, float]:
        """Method-specific metrics for the epoch just trained (e.g. ``train/hr_loss``)."""
        return {}

    def final_metrics(self, model: nn.Module, splits: Splits, *, batch_size: int, seed: int) -> dict[str, float | str]:
        """Method-specific results at the end of training (e.g. a certificate's two sides).

        Float values are metrics; string values under ``tags/<name>`` become run tags.
        """
        return {}

    def state_dict(self) -> dict[str, Tensor | float | int]:
        """Method state that must survive a checkpoint/resume."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        pass
