"""The ``pruning`` section of a study file: an Optuna pruner and a robust-overfitting rule.

Both are decided on the driver after every epoch (``optuna_bridge.StudyScheduler``). The pruner is
any of Optuna's, by name, with its own arguments (``patient`` wraps another); it sees the single
objective's per-epoch values, so it cannot run in multi-objective studies. The overfitting rule
(Rice et al. 2020, "Overfitting in adversarially robust deep learning") reads robust validation accuracy and the
robust generalisation gap of the trial alone, so it works in any study.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from certstudy.metric_names import SPLIT_METRIC
from certstudy.schema import Schema

if TYPE_CHECKING:
    import optuna

PRUNERS: dict[str, str] = {
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
    "patient": "PatientPruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}
"""Study-file pruner names -> the class in ``optuna.pruners``. Optuna is imported only when a pruner
is built, so reading a study file does not load it."""


class PrunerConfig(Schema):
    """``{name: median, n_startup_trials: 5, n_warmup_steps: 3}``; ``patient`` takes ``wrapped``
    (another pruner, or none) beside ``patience`` and ``min_delta``. Other keys are the Optuna
    pruner's own keyword arguments (steps are epochs)."""

    model_config = ConfigDict(extra="allow")

    name: Literal[
        "median", "percentile", "successive_halving", "hyperband", "patient", "threshold", "wilcoxon", "none"
    ] = "none"

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _buildable(self) -> PrunerConfig:
        if self.name != "none" or self.kwargs:
            self.build()  # Optuna checks its own arguments; its message becomes the field's error
        return self

    def build(self) -> optuna.pruners.BasePruner:
        import optuna  # here, not at the top: the spec floor reads study files without Optuna

        kwargs = self.kwargs
        if self.name == "patient":
            wrapped = kwargs.pop("wrapped", None)
            inner = PrunerConfig.model_validate(
                wrapped if isinstance(wrapped, Mapping) else {"name": wrapped or "none"}
            )
            kwargs["wrapped_pruner"] = None if inner.name == "none" else inner.build()
        try:
            with warnings.catch_warnings():  # Patient and Wilcoxon are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return getattr(optuna.pruners, PRUNERS[self.name])(**kwargs)
        except TypeError as exc:
            raise ValueError(f"{self.name} pruner: {exc}") from None


class OverfittingRule(Schema):
    """Stop a trial whose robust validation accuracy has fallen at least ``min_drop`` below its best
    for ``patience`` consecutive epochs, or whose robust generalisation gap exceeds ``max_gap``.

    Epochs count from 0; no decision is taken at an epoch below ``warmup`` (the best so far and the
    run of low epochs still include warm-up epochs). Accuracies are fractions in [0, 1]: on a
    1,000-point validation set epoch-to-epoch noise is about 0.013, so ``min_drop`` below 0.02
    prunes on noise.
    """

    metric: str = Field("val/robust_acc", pattern=SPLIT_METRIC)
    gap_metric: str = Field("gap/robust_acc", pattern=SPLIT_METRIC, description="train minus val robust accuracy")
    min_drop: float | None = Field(0.02, gt=0, le=1)
    patience: int = Field(5, ge=1, le=100000)
    max_gap: float | None = Field(None, gt=0, le=1)
    warmup: int = Field(0, ge=0, le=100000)

    @model_validator(mode="after")
    def _something_to_check(self) -> OverfittingRule:
        if self.min_drop is None and self.max_gap is None:
            raise ValueError("give min_drop, max_gap or both")
        return self

    def check(self, series: Mapping[int, tuple[float, float]]) -> str | None:
        """``series``: epoch -> (metric, gap) for every epoch so far. Returns why the latest epoch
        is overfit, or None."""
        if not series:
            return None
        epoch = max(series)
        if epoch < self.warmup:
            return None
        value, gap = series[epoch]
        if self.max_gap is not None and math.isfinite(gap) and gap > self.max_gap:
            return f"robust generalisation gap {gap:.3f} > max_gap {self.max_gap:g} at epoch {epoch}"
        if self.min_drop is None or epoch + 1 < self.patience:
            return None
        best = -math.inf
        drops: dict[int, float] = {}
        for e in sorted(series):
            v = series[e][0]
            if math.isfinite(v):
                best = max(best, v)
            drops[e] = best - v if math.isfinite(v) else math.nan
        window = range(epoch - self.patience + 1, epoch + 1)
        if all(e in drops and drops[e] >= self.min_drop - 1e-12 for e in window):
            return (
                f"{self.metric} {value:.3f} at least {self.min_drop:g} below its best {best:.3f} for "
                f"{self.patience} epochs (epoch {epoch})"
            )
        return None


class PruningConfig(Schema):
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    overfitting: OverfittingRule | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_pruner(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("pruner"), str):
            return {**data, "pruner": {"name": data["pruner"]}}
        return data

    @property
    def enabled(self) -> bool:
        return self.pruner.name != "none" or self.overfitting is not None
