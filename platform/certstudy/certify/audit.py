"""Soundness audit: attack every point a deterministic certificate certifies, at its certified radius.

A sound certificate can never be broken, so any point whose prediction a strong PGD changes inside
its certified ball is a violation (a bug in a bound, a layer treated wrongly, a norm mix-up).
The attack maximises the margin max_{i != c} z_i - z_c of the certified class c (it flips the
prediction exactly when it turns positive), in the certificate's norm, clipped to the data box,
with many steps and random restarts, from the point itself and from random starts: PGD with a fixed
step schedule, or APGD (Croce & Hein 2020), whose adaptive step size finds the narrow
counterexamples a fixed schedule steps over. APGD assumes the [0, 1] box.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from certstudy import phases
from certstudy.attacks import pgd
from certstudy.attacks.autoattack import apgd_margin
from certstudy.certify.base import ABSTAIN, Certificate
from certstudy.models.base import eval_mode


@dataclass(frozen=True)
class AuditResult:
    points: int
    violations: int
    violating_indices: list[int]


def audit(
    model: nn.Module,
    x: Tensor,
    certificate: Certificate,
    *,
    attack: str = "pgd",
    steps: int,
    restarts: int,
    bounds: tuple[float, float] | None,
    seed: int,
    batch_size: int = 512,
) -> AuditResult:
    """Attacks every point with a positive certified radius; counts those whose prediction changes."""
    radii = certificate.radii.to(torch.float64)
    preds = certificate.predictions
    certified = ((preds != ABSTAIN) & torch.isfinite(radii) & (radii > 0)).nonzero().squeeze(1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    bad: list[int] = []
    with eval_mode(model):
        for i in range(0, len(certified), batch_size):
            phases.advance(i, len(certified))
            idx = certified[i : i + batch_size]
            xb = x[idx.to(x.device)]
            target = preds[idx].to(x.device)
            exact = radii[idx].to(x.device)
            eps = exact.to(x.dtype)
            eps = torch.where(
                eps.double() > exact, torch.nextafter(eps, torch.zeros_like(eps)), eps
            )  # never attack beyond the radius
            if attack == "apgd":
                adv = apgd_margin(
                    model, xb, target, eps, norm=certificate.norm, steps=steps, restarts=restarts, seed=seed + i
                )  # type: ignore[arg-type]
            else:
                adv = pgd(
                    model,
                    xb,
                    target,
                    eps=eps,
                    norm=certificate.norm,
                    steps=steps,
                    restarts=restarts,
                    bounds=bounds,
                    generator=gen,
                    loss="margin",
                )  # type: ignore[arg-type]
            with torch.no_grad():
                flipped = model(adv).argmax(1) != target
            bad += idx[flipped.cpu()].tolist()
    return AuditResult(len(certified), len(bad), bad)
