"""AutoAttack (Croce & Hein, ICML 2020) and APGD with the margin loss, through ``pyautoattack``.

The attacks themselves are Croce & Hein's code (github.com/fra31/auto-attack, packaged on PyPI as
``pyautoattack``, the copy RobustBench installs); this module only adapts it to certstudy: norms
named ``l2``/``linf``, per-point verdicts instead of adversarial batches, a seed that makes a run
reproducible without moving the caller's RNG streams, and an APGD whose loss is the margin
max_{i != c} z_i - z_c at a radius given per point (the soundness audit's attack).

Guarantees: a point counts as robust only if the model, re-run on the returned input, still
predicts its label; every returned input lies in the eps-ball (up to the attack's own float
rounding) and in the [0, 1] box AutoAttack assumes, so the caller must pass inputs in [0, 1].
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor, nn

from certstudy.attacks.pgd import Norm
from certstudy.models.base import eval_mode

AttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]
STANDARD_ATTACKS: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")  # version="standard"
LIBRARY_NORM = {"l2": "L2", "linf": "Linf"}

logging.getLogger("auto-attack").setLevel(logging.ERROR)  # its progress lines would flood a trial's log


def _devices(x: Tensor) -> list[int]:
    return [x.device.index or 0] if x.device.type == "cuda" else []


def autoattack_robust(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Norm,
    eps: float,
    attacks: tuple[str, ...] | None = None,
    batch_size: int = 250,
    seed: int = 0,
) -> Tensor:
    """Per point, whether ``model`` still classifies it correctly under AutoAttack at radius ``eps``
    (``attacks=None``: the standard version, APGD-CE, APGD-T, FAB-T and Square).

    Deterministic in ``seed`` on the CPU; the global RNG streams are restored afterwards.
    """
    from pyautoattack import AutoAttack  # imported on use: validation needs only the names above

    if eps <= 0:
        with torch.no_grad(), eval_mode(model):
            return torch.cat(
                [model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size] for i in range(0, len(y), batch_size)]
            )
    version = "standard" if attacks is None or tuple(attacks) == STANDARD_ATTACKS else "custom"
    with torch.random.fork_rng(devices=_devices(x)), eval_mode(model):
        adversary = AutoAttack(
            model,
            norm=LIBRARY_NORM[norm],
            eps=float(eps),
            version=version,
            attacks=None if version == "standard" else list(attacks or ()),
            seed=seed,
            device=x.device,
        )
        adversary.verbose = False
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
        with torch.no_grad():
            return torch.cat(
                [
                    model(x_adv[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
                    for i in range(0, len(y), batch_size)
                ]
            )


def _margin_apgd_class() -> type:
    from pyautoattack.autopgd_base import APGDAttack

    class MarginAPGD(APGDAttack):
        """APGD whose ``dlr`` slot holds the plain margin loss: positive exactly when the label flips,
        so maximising it is the direct search for a counterexample to a certificate."""

        def dlr_loss(self, logits: Tensor, y: Tensor) -> Tensor:
            return logits.scatter(1, y[:, None], -torch.inf).max(1).values - logits.gather(1, y[:, None]).squeeze(1)

    return MarginAPGD


def apgd_margin(
    model: nn.Module, x: Tensor, target: Tensor, eps: Tensor, *, norm: Norm, steps: int, restarts: int, seed: int
) -> Tensor:
    """The highest-margin point APGD finds for each example within its own radius ``eps[i]``
    (the clean point where no restart beats it), in the [0, 1] box.

    Each restart is one APGD run on the whole batch (``attack_single_run``: the library's
    ``perturb`` drops points between restarts, which a per-point radius cannot follow).
    """
    attack = _margin_apgd_class()(
        model, n_iter=steps, norm=LIBRARY_NORM[norm], n_restarts=1, eps=1.0, seed=seed, loss="dlr", device=x.device
    )
    radius = eps.to(x).view(-1, *([1] * (x.dim() - 1)))
    attack.eps = radius  # broadcasts per point through the step sizes and the projections
    attack.init_hyperparam(x)
    with torch.random.fork_rng(devices=_devices(x)), eval_mode(model):
        torch.manual_seed(seed)
        with torch.no_grad():
            best_loss = attack.dlr_loss(model(x), target)
        best = x.detach().clone()
        for _ in range(restarts):
            _, _, _, x_adv = attack.attack_single_run(x, target)
            with torch.no_grad():
                loss = attack.dlr_loss(model(x_adv), target)
            better = loss > best_loss
            best_loss = torch.where(better, loss, best_loss)
            best[better] = x_adv[better].detach()
    return best
