"""Projected gradient descent (Madry et al.) in the l2 or linf ball, with restarts.

Returns, per example, the highest-loss point seen over all iterates and restarts, starting from
the clean input itself, so the attack never lowers the loss. Iterates stay inside the eps-ball and
inside the input box. Gradients are taken w.r.t. the perturbation only: parameter gradients are
left untouched, so the attack can run inside a training step. ``eps`` may be one radius per
example (the soundness audit attacks each point at its own certified radius), and the loss may be
the margin max_{i != y} z_i - z_y (Carlini & Wagner), which is positive exactly when the label flips.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["l2", "linf"]
Radius = float | Tensor  # one radius, or one per example (shape (B,))


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _per_example(eps: Radius, like: Tensor) -> Radius:
    return eps.to(like).view(-1, *([1] * (like.dim() - 1))) if isinstance(eps, Tensor) else eps


def project(delta: Tensor, eps: Radius, norm: Norm) -> Tensor:
    """The closest point of the eps-ball (centred at 0) to ``delta``."""
    eps = _per_example(eps, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps) if isinstance(eps, Tensor) else delta.clamp(-eps, eps)
    scale = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * scale


def uniform_in_ball(x: Tensor, eps: Radius, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A point drawn uniformly from the eps-ball."""
    eps = _per_example(eps, x)
    if norm == "linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    d = x[0].numel()
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype) ** (
        1.0 / d
    )
    return direction * radius * eps


def _ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    return logits.scatter(1, y[:, None], -torch.inf).max(1).values - logits.gather(1, y[:, None]).squeeze(1)


def _clip(x: Tensor, delta: Tensor, bounds: tuple[float, float] | None) -> Tensor:
    return delta if bounds is None else (x + delta).clamp(*bounds) - x


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: Radius,
    norm: Norm,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    loss: Literal["ce", "margin"] = "ce",
) -> Tensor:
    """Adversarial inputs maximising the per-example loss within ||x' - x|| <= eps."""
    if steps <= 0 or (eps <= 0 if not isinstance(eps, Tensor) else bool((eps <= 0).all())):
        return x.detach()
    objective = _margin_loss if loss == "margin" else _ce_loss
    alpha = step_size if step_size is not None else _per_example(eps, x) * (2.5 / steps)
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        with torch.no_grad():
            best_loss = objective(model(x), y)
        best = x.clone()
        for _ in range(restarts):
            delta = _clip(x, uniform_in_ball(x, eps, norm, generator), bounds) if random_start else torch.zeros_like(x)
            for step in range(steps + 1):
                delta.requires_grad_(True)
                losses = objective(model(x + delta), y)
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
