"""PGD adversarial training (Madry et al. 2018): minimise the cross-entropy at PGD points.

Guarantees nothing by itself (PGD is a heuristic inner maximiser); it is the empirical-robustness
baseline and the setting in which robust overfitting (Rice et al. 2020) and benign overfitting
(Wang, Zhang & Arora 2024) are studied.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from certstudy.attacks import pgd
from certstudy.methods.base import Method, MethodParams
from certstudy.methods.registry import METHODS


class PGDParams(MethodParams):
    """The training attack; shared by every method that trains on PGD points."""

    eps: float = Field(0.1, ge=0, description="training radius in input space")
    norm: Literal["l2", "linf"] = "linf"
    steps: int = Field(7, ge=1, le=1000)
    step_size: float | None = Field(None, gt=0, description="default 2.5 * eps / steps")
    random_start: bool = True


def pgd_points(
    params: PGDParams,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bounds: tuple[float, float] | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD points of (x, y) under the method's training attack (x itself when eps = 0)."""
    return pgd(
        model,
        x,
        y,
        eps=params.eps,
        norm=params.norm,
        steps=params.steps,
        step_size=params.step_size,
        random_start=params.random_start,
        bounds=bounds,
        generator=generator,
    )


class AdversarialParams(PGDParams):
    """PGD-AT has only the attack's parameters."""


def pgd_threat_model(params: PGDParams) -> tuple[str, float]:
    return params.norm, params.eps


@METHODS.register("adversarial")
class AdversarialTraining(Method):
    Params = AdversarialParams
    params: AdversarialParams

    @classmethod
    def threat_model(cls, params: MethodParams) -> tuple[str, float] | None:
        return pgd_threat_model(params)  # type: ignore[arg-type]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(pgd_points(self.params, model, x, y, self.context.bounds)), y)
