"""Empirical robustness beside the certificates: AutoAttack at every radius, and the certification gap.

AutoAttack (Croce & Hein 2020) is the field's yardstick for empirical robust accuracy; a certificate
is judged against it. The certification gap of a certificate at radius r is the empirical robust
accuracy minus the certified accuracy, on the same points, at the same r: what the certificate
leaves on the table (the quantity Zhu et al.'s tightness regularizers try to shrink). Without
AutoAttack the evaluation's PGD at the grid radii stands in (``evaluation.attack_grid``), and the
metric says so in its name.

Guarantee: a sound certificate can never certify a point that an attack breaks, so its gap is
>= 0 at every radius. A negative gap is therefore a soundness alarm: the trial reports it as the
run tag ``certstudy.alarm`` (and the study prints it), whatever the audit found.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certstudy import phases
from certstudy.attacks import pgd
from certstudy.attacks.autoattack import autoattack_robust
from certstudy.certify.base import Certificate
from certstudy.certify.metrics import certified_radii
from certstudy.metric_names import (
    ALARM_TAG,
    TAG_PREFIX,
    autoattack_acc_name,
    cert_gap_name,
    noise_acc_name,
    radius_label,
)
from certstudy.models.base import eval_mode
from certstudy.trial.config import AttackConfig, AutoAttackConfig

ALARM_RESULT = f"{TAG_PREFIX}{ALARM_TAG}"  # how a trial's result carries the run tag


@dataclass
class Empirical:
    """Per-point verdicts of one attack at every positive radius of one norm's grid."""

    source: str  # "autoattack" or "pgd": the metric names say which
    norm: str
    points: Tensor  # positions among the certified test points
    robust: dict[float, Tensor] = field(default_factory=dict)  # radius -> bool per point


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    points: Tensor,
    *,
    norm: str,
    radii: list[float],
    config: AutoAttackConfig,
    seed: int,
) -> Empirical:
    """AutoAttack on ``x[points]`` at every positive radius (one seed for all radii)."""
    out = Empirical("autoattack", norm, points)
    xs, ys = x[points.to(x.device)], y[points.to(y.device)]
    positive = [r for r in radii if r > 0]
    # AutoAttack runs its attacks over all the points in one call: its progress is counted in radii
    phases.enter(phases.ATTACKING, step="autoattack", total=len(positive))
    for k, r in enumerate(positive):
        out.robust[r] = autoattack_robust(
            model, xs, ys, norm=norm, eps=r, attacks=config.attack_names, batch_size=config.batch_size, seed=seed
        ).cpu()  # type: ignore[arg-type]
        phases.advance(k + 1, len(positive))
    return out


def pgd_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attack: AttackConfig,
    radii: list[float],
    bounds: tuple[float, float] | None,
    batch_size: int,
    seed: int,
) -> Empirical:
    """The evaluation's PGD at every positive radius, per point (all of ``x``)."""
    out = Empirical("pgd", attack.norm, torch.arange(len(y)))
    for r in radii:
        if r <= 0:
            continue
        phases.enter(phases.ATTACKING, step=f"pgd r={r:g}", total=len(y))
        gen = torch.Generator(device=x.device).manual_seed(seed)
        verdicts = []
        with eval_mode(model):
            for i in range(0, len(y), batch_size):
                xb, yb = x[i : i + batch_size], y[i : i + batch_size]
                adv = pgd(
                    model,
                    xb,
                    yb,
                    eps=r,
                    norm=attack.norm,
                    steps=attack.steps,
                    random_start=attack.random_start,
                    restarts=attack.restarts,
                    bounds=bounds,
                    generator=gen,
                )
                with torch.no_grad():
                    verdicts.append((model(adv).argmax(1) == yb).cpu())
                phases.advance(min(i + batch_size, len(y)), len(y))
        out.robust[r] = torch.cat(verdicts)
    return out


@torch.no_grad()
def noise_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    sigmas: list[float],
    bounds: tuple[float, float] | None,
    *,
    batch_size: int,
    seed: int,
) -> dict[str, float]:
    """Accuracy on x + N(0, sigma^2 I), clipped to the input box, one draw per point from a seeded
    device generator (the same draws for every trial of a study): a corruption metric, not a
    certificate. Bennouna et al. report it next to clean and l2-PGD accuracy."""
    out: dict[str, float] = {}
    if not sigmas or len(y) == 0:
        return out
    with eval_mode(model):
        for sigma in sigmas:
            gen = torch.Generator(device=x.device).manual_seed(seed)
            correct = torch.zeros((), dtype=torch.int64, device=x.device)
            for i in range(0, len(y), batch_size):
                xb = x[i : i + batch_size]
                noisy = xb + sigma * torch.randn(xb.shape, generator=gen, device=xb.device, dtype=xb.dtype)
                if bounds is not None:
                    noisy = noisy.clamp(*bounds)
                correct += (model(noisy).argmax(dim=1) == y[i : i + batch_size]).sum()
            out[noise_acc_name(sigma)] = float(correct) / len(y)
    return out


def accuracy_metrics(empirical: Empirical) -> dict[str, float]:
    """``test/autoattack_acc_<norm>_r<r>`` (PGD's accuracies are reported by the attack grid)."""
    if empirical.source != "autoattack":
        return {}
    return {autoattack_acc_name(empirical.norm, r): float(v.double().mean()) for r, v in empirical.robust.items()}


def gap_metrics(empirical: Empirical, certificates: list[Certificate], y: Tensor) -> tuple[dict[str, float], list[str]]:
    """The gap of every certificate in the attack's norm at every attacked radius, and an alarm line
    for each negative one (``y``: labels of all certified points)."""
    metrics: dict[str, float] = {}
    alarms: list[str] = []
    for cert in certificates:
        if cert.norm != empirical.norm:
            continue
        radii = certified_radii(cert, y)[empirical.points.cpu()]
        for r, robust in empirical.robust.items():
            certified = radii >= r
            gap = float(robust.double().mean() - certified.double().mean())
            metrics[cert_gap_name(empirical.source, cert.name, cert.norm, r)] = gap
            if gap < 0:
                broken = int((certified & ~robust).sum())
                alarms.append(
                    f"{cert.name} certifies {-gap:.4f} more than {empirical.source} leaves robust at {cert.norm} "
                    f"{radius_label(r)} ({broken} certified points broken)"
                )
    return metrics, alarms
