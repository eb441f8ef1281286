"""Clean and PGD-robust accuracy/loss on fixed subsets; the per-epoch and final metric names.

Metric names are an API (README lists them). The evaluation attack draws its random starts from a
generator seeded afresh for every evaluation, so epochs are compared on the same perturbation
draws and evaluating never moves the training RNG stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certstudy.attacks import pgd
from certstudy.models.base import eval_mode
from certstudy.trial.config import AttackConfig
from certstudy.trial.environment import sum_dtype


@dataclass(frozen=True)
class Scores:
    clean_acc: float
    clean_loss: float
    robust_acc: float
    robust_loss: float


def _identity(x: Tensor) -> Tensor:
    return x


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attack: AttackConfig,
    bounds: tuple[float, float] | None,
    *,
    batch_size: int,
    seed: int,
    to_float: Callable[[Tensor], Tensor] = _identity,
) -> Scores:
    """Clean and robust scores of ``model`` on (x, y) under the evaluation attack.

    ``x`` may be stored compactly (``Splits.floats`` is then ``to_float``, applied per batch). The
    sums stay on the device until the end: one host sync per evaluation, none per batch.
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    n = len(y)
    sums = torch.zeros(4, dtype=sum_dtype(x.device), device=x.device)
    with eval_mode(model):
        for i in range(0, n, batch_size):
            xb, yb = to_float(x[i : i + batch_size]), y[i : i + batch_size]
            with torch.no_grad():
                logits = model(xb)
            x_adv = pgd(
                model,
                xb,
                yb,
                eps=attack.eps,
                norm=attack.norm,
                steps=attack.steps,
                step_size=attack.step_size,
                random_start=attack.random_start,
                restarts=attack.restarts,
                bounds=bounds,
                generator=gen,
            )
            with torch.no_grad():
                adv_logits = model(x_adv)
                sums += torch.stack(
                    [
                        (logits.argmax(1) == yb).sum(),
                        F.cross_entropy(logits, yb, reduction="sum"),
                        (adv_logits.argmax(1) == yb).sum(),
                        F.cross_entropy(adv_logits, yb, reduction="sum"),
                    ]
                ).to(sums.dtype)
    a, b, c, d = (sums / max(n, 1)).tolist()
    return Scores(a, b, c, d)


@torch.no_grad()
def clean_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int, to_float: Callable[[Tensor], Tensor] = _identity
) -> float:
    """Clean accuracy of ``model`` on (x, y), without an attack (NaN on no points); one host sync."""
    if len(y) == 0:
        return float("nan")
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with eval_mode(model):
        for i in range(0, len(y), batch_size):
            correct += (model(to_float(x[i : i + batch_size])).argmax(dim=1) == y[i : i + batch_size]).sum()
    return float(correct) / len(y)
