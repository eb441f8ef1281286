"""Names of what a trial reports: metrics (an API the README lists) and result tags, built and
recognised here only.

Every layer imports from here: the trial layer reports under these names, the study layer validates
objectives and pruning metrics against these patterns, bench and the dashboards read them back.
"""

from __future__ import annotations

import re

TAG_PREFIX = "tags/"
"""String results under ``tags/<name>`` become run tags."""
ALARM_TAG = "certstudy.alarm"
"""A soundness alarm (a certificate contradicted by an attack): set by a trial, printed by the study."""

BEST_PREFIX = "best/"
"""In the last report of a trial that ended on its best epoch: ``best/<metric>`` is that epoch's value."""
BEST_EPOCH_KEY = "best/epoch"

LAST_EPOCH_TEST = ("test/last_epoch_clean_acc", "test/last_epoch_robust_acc")
"""In the last report of a trial that ended on its best epoch: clean and PGD accuracy on the test points
of the model as its last trained epoch left it (robust overfitting is best epoch against last)."""

SPLIT_METRIC = r"^(train|val|gap)/[A-Za-z0-9_.\-]+$"
"""A metric of the train or val split, or their gap: the only kind reported after every epoch."""

TRAIN_LOSS = "train/loss"
"""The training loss, reported at every evaluated epoch (the records read epochs from its steps)."""

POISONED_FIT = "train/poisoned_acc"
"""At every evaluated epoch of a study whose train labels are poisoned: clean accuracy on every poisoned
training point against its poisoned (observed) label, i.e. the share of the flips the net has fitted.
Bennouna et al.'s section 6.1 contrasts HR with ERM and PGD-AT once those have memorised the flips."""

EPOCH_METRICS = (
    TRAIN_LOSS,
    "train/acc",
    "train/robust_acc",
    "train/robust_loss",
    "val/clean_acc",
    "val/clean_loss",
    "val/robust_acc",
    "val/robust_loss",
    "gap/robust_acc",
    "gap/robust_loss",
    "train/lr",
)

CERTIFICATION_METRIC = re.compile(r"^(train|val|test)/(certified_acc|acr|abstain_rate)_")
END_ONLY_METRIC = re.compile(r"^(train|val|gap)/(autoattack_acc|cert_gap|pgd_cert_gap)_")
"""Measured on test points at the end only (no val variant): they cannot steer a search."""


def per_epoch_metric(metric: str) -> bool:
    """Reported after every epoch (not only at the end, as certified metrics are)."""
    return (
        bool(re.fullmatch(SPLIT_METRIC, metric))
        and not CERTIFICATION_METRIC.match(metric)
        and not END_ONLY_METRIC.match(metric)
    )


def radius_label(r: float) -> str:
    """How a radius appears in a metric name: ``0.25`` -> ``r0.25``, ``1.0`` -> ``r1``."""
    return f"r{r:g}"


def certified_acc_name(prefix: str, certificate: str, norm: str, r: float) -> str:
    return f"{prefix}/certified_acc_{certificate}_{norm}_{radius_label(r)}"


def robust_acc_name(norm: str, r: float) -> str:
    """PGD-robust test accuracy at one radius of the grid (``evaluation.attack_grid``)."""
    return f"test/robust_acc_{norm}_{radius_label(r)}"


def autoattack_acc_name(norm: str, r: float) -> str:
    return f"test/autoattack_acc_{norm}_{radius_label(r)}"


def noise_acc_name(sigma: float) -> str:
    """Test accuracy under one draw of Gaussian noise of standard deviation ``sigma`` (``evaluation.noise_sigmas``)."""
    return f"test/noise_acc_s{sigma:g}"


def cert_gap_name(source: str, certificate: str, norm: str, r: float) -> str:
    """The certification gap's name: ``test/cert_gap_...`` against AutoAttack, ``test/pgd_cert_gap_...``
    against PGD (when AutoAttack is off)."""
    prefix = "" if source == "autoattack" else f"{source}_"
    return f"test/{prefix}cert_gap_{certificate}_{norm}_{radius_label(r)}"


def certificate_metric_names(
    prefix: str, certificates: list[tuple[str, str]], grid: dict[str, list[float]]
) -> list[str]:
    """The per-certificate metric names ``certification_metrics`` will report (extras aside)."""
    names = []
    for name, norm in certificates:
        names += [certified_acc_name(prefix, name, norm, r) for r in grid.get(norm, [])]
        names += [f"{prefix}/acr_{name}", f"{prefix}/abstain_rate_{name}"]
    return names
