"""Projected gradient descent (Madry et al.) in the l2 or linf ball, with restarts.

Returns, per example, the highest-loss point seen over all iterates and restarts, starting from
the clean input itself, so the attack never lowers the loss. Iterates stay inside the eps-ball and
inside the input box. Gradients are taken w.r.t. the perturbation only: parameter gradients are
left untouched, so the attack can run inside a training step.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["l2", "linf"]


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """The closest point of the eps-ball (centred at 0) to ``delta``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def random_start(x: Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A point drawn uniformly from the eps-ball."""
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    d = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction * radius * eps


def _clip(x: Tensor, delta: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    return delta if bounds is None else (x + delta).clamp(*bounds) - x


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    step_size: float | None = None,
    random_init: bool = True,
    restarts: int = 1,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Adversarial inputs maximising the per-example cross-entropy within ||x' - x|| <= eps."""
    if eps <= 0 or steps <= 0:
        return x.detach()
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        with torch.no_grad():
            best_loss = F.cross_entropy(model(x), y, reduction="none")
        best = x.clone()
        for _ in range(restarts):
            delta = _clip(x, random_start(x, eps, norm, generator), bounds) if random_init else torch.zeros_like(x)
            for step in range(steps + 1):
                delta.requires_grad_(True)
                losses = F.cross_entropy(model(x + delta), y, reduction="none")
                improved = losses.detach() > best_loss
                best_loss = torch.where(improved, losses.detach(), best_loss)
                best = torch.where(improved.view(-1, *([1] * (x.dim() - 1))), (x + delta).detach(), best)
                if step == steps:
                    break
                (grad,) = torch.autograd.grad(losses.sum(), delta)
                with torch.no_grad():
                    if norm == "linf":
                        delta = delta + alpha * grad.sign()
                    else:
                        delta = delta + alpha * grad / _flat_norm(grad).clamp_min(1e-12)
                    delta = _clip(x, project(delta, eps, norm), bounds)
        return best
    finally:
        model.train(was_training)
