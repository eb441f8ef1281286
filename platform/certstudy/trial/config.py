"""The fully resolved configuration of one trial: every hyperparameter fixed.

Component params (dataset options, model params, method params) stay plain dicts here and are
validated against the registered component's own pydantic model when the trial is built (and
earlier, with field paths, when a study file is loaded), so this module needs no knowledge of
which components exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from certstudy.attacks.autoattack import STANDARD_ATTACKS, AttackName
from certstudy.data.augmentation import Augment
from certstudy.data.poisoning import Poisoning
from certstudy.metric_names import SPLIT_METRIC
from certstudy.schema import Schema

MAX_SEED = 2**31 - 1
"""The largest seed a study or trial takes: Optuna's samplers and numpy take seeds below 2**32, and a
trial derives seeds a few thousand above its own."""


class DatasetConfig(Schema):
    name: str = "digits"
    options: dict[str, Any] = Field(default_factory=dict)
    poisoning: Poisoning = Field(default_factory=Poisoning)
    augment: Augment = Field(default_factory=Augment)


class ComponentConfig(Schema):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(Schema):
    name: Literal["constant", "cosine", "step", "multistep"] = "constant"
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    milestones: list[int] = Field(default_factory=list, description="multistep: epochs at which lr decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step / multistep decay factor")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up from lr/10")


class TrainingConfig(Schema):
    epochs: int = Field(10, ge=1, le=100000)
    batch_size: int = Field(64, ge=1, le=100000)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0, le=100)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient's global norm")
    full_batch: bool = Field(False, description="gradient descent: steps on the whole train split")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="autocast dtype of the training loss (fp16 with a GradScaler); evaluation, certificates and the "
        "audit run in fp32",
    )
    channels_last: bool = Field(
        False, description="channels-last memory format for image models and batches (faster convolutions on CUDA)"
    )
    cudnn_benchmark: bool = Field(False, description="let cuDNN pick the fastest kernels (CUDA; not bit-reproducible)")
    steps_per_epoch: int = Field(
        1, ge=1, le=100000, description="full_batch only: gradient steps between two evaluations"
    )

    @model_validator(mode="after")
    def _steps_need_full_batch(self) -> TrainingConfig:
        if self.steps_per_epoch > 1 and not self.full_batch:
            raise ValueError("steps_per_epoch applies to full_batch training (an epoch of minibatches is one pass)")
        return self

    @model_validator(mode="after")
    def _milestones_in_range(self) -> TrainingConfig:
        bad = [m for m in self.schedule.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(f"schedule.milestones {bad} must lie in (0, epochs={self.epochs})")
        return self


class AttackConfig(Schema):
    norm: Literal["l2", "linf"] = "linf"
    eps: float = Field(0.1, ge=0)
    steps: int = Field(10, ge=0, le=10000)
    step_size: float | None = Field(None, gt=0, description="default 2.5 * eps / steps")
    restarts: int = Field(1, ge=1, le=100)
    random_start: bool = True
    at_training_radius: bool = Field(
        False,
        description="attack with the training method's own norm and radius (its threat model) instead of norm/eps",
    )


def _default_radii() -> dict[str, list[float]]:
    return {"l2": [0.0, 0.25, 0.5, 0.75, 1.0], "linf": [0.0, 0.01, 0.02, 0.05, 0.1]}


class AuditConfig(Schema):
    """The soundness audit of deterministic certificates: a strong PGD at each certified radius."""

    enabled: bool = True
    attack: Literal["pgd", "apgd"] = Field(
        "pgd", description="pgd: margin PGD; apgd: APGD (Croce & Hein) on the margin loss, with its adaptive step size"
    )
    steps: int = Field(50, ge=50, le=10000, description="attack steps (at least 50)")
    restarts: int = Field(5, ge=5, le=100, description="random restarts (at least 5)")


class AutoAttackConfig(Schema):
    """AutoAttack (Croce & Hein 2020) on the test split at the end of a trial, at every positive radius
    of the evaluation attack norm's grid: ``test/autoattack_acc_<norm>_r<r>``."""

    version: Literal["standard", "custom"] = Field(
        "standard",
        description="standard: APGD-CE, APGD-T, FAB-T, Square (RobustBench's evaluation); custom: the attacks listed",
    )
    attacks: list[AttackName] | None = Field(None, description="custom only: the attacks to run, in order")
    subset: int = Field(
        200,
        ge=1,
        le=100000,
        description="test points attacked: a fixed subset of the certified test points, the same for every trial of a "
        "study",
    )
    batch_size: int = Field(250, ge=1, le=100000)

    @model_validator(mode="after")
    def _attacks_match_version(self) -> AutoAttackConfig:
        if self.version == "custom" and not self.attacks:
            raise ValueError("version custom needs a non-empty list of attacks")
        if self.version == "standard" and self.attacks is not None:
            raise ValueError(f"version standard runs {', '.join(STANDARD_ATTACKS)}; list attacks with version custom")
        return self

    @property
    def attack_names(self) -> tuple[str, ...]:
        return tuple(self.attacks) if self.attacks else STANDARD_ATTACKS


class EvaluationConfig(Schema):
    attack: AttackConfig = Field(default_factory=AttackConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    certifiers: list[ComponentConfig] = Field(
        default_factory=list, description="certifiers run on the test points at the end"
    )
    radii: dict[Literal["l2", "linf"], list[float]] = Field(
        default_factory=_default_radii, description="the radius grid of certified-accuracy metrics, per norm"
    )
    attack_grid: bool = Field(
        False,
        description="also attack the test points at every radius of the attack norm's grid "
        "(test/robust_acc_<norm>_r<r>)",
    )
    autoattack: AutoAttackConfig | None = Field(
        None, description="AutoAttack at the end on a fixed test subset (None: off)"
    )
    noise_sigmas: list[Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=list,
        description="test accuracy under Gaussian noise of each standard deviation (test/noise_acc_s<sigma>; one "
        "seeded draw per test point, clipped to the input box), the corruption metric of the HR paper",
    )
    certify_subset: int | None = Field(
        None, ge=1, description="test points certified (None: the evaluated test points)"
    )
    certify_val_subset: int = Field(
        0, ge=0, description="val points certified at the end, for val/certified_* objectives (0: none)"
    )
    val_subset: int | None = Field(None, ge=1, description="fixed val points evaluated each epoch (None: all)")
    every: int = Field(
        1,
        ge=1,
        le=10000,
        description="epochs between evaluations; reports, checkpoints and pruning decisions happen on evaluated "
        "epochs, and the last epoch is always evaluated",
    )
    train_subset: int | None = Field(
        None, ge=1, description="fixed train points for train/robust_acc (None: as many as val)"
    )
    test_subset: int | None = Field(None, ge=1, description="test points evaluated at the end (None: all)")
    batch_size: int = Field(512, ge=1, le=100000)
    final_model: Literal["last", "best"] = Field(
        "last",
        description="the model evaluated on test and certified at the end: the last epoch's, or the best epoch's by "
        "best_metric (a pruned trial always uses its best)",
    )
    best_metric: str = Field(
        "val/robust_acc", pattern=SPLIT_METRIC, description="the per-epoch metric that picks the best epoch"
    )
    best_mode: Literal["max", "min"] = "max"

    @model_validator(mode="after")
    def _radii_valid(self) -> EvaluationConfig:
        for norm, grid in self.radii.items():
            if any(not (r >= 0 and r < float("inf")) for r in grid):
                raise ValueError(f"radii.{norm} must be finite and >= 0, got {grid}")
            if len(set(grid)) != len(grid):
                raise ValueError(f"radii.{norm} lists a radius twice: {grid}")
        return self


DEFAULT_CHECKPOINT_S = 30.0


class CheckpointPolicy(Schema):
    """How often a trial saves its state (model, optimizer, schedule, method, RNG, history) between
    evaluated epochs: after ``every_s`` seconds of training since the last save (the default, 30 s),
    or every ``every_epochs`` evaluated epochs. Whatever the policy, a trial also saves at its end,
    when it is pruned or stopped early, and before it reports a failure; a resumed trial re-runs at
    most the work since its last save, and ends bit-exactly as an uninterrupted one."""

    every_s: float | None = Field(
        None, gt=0, le=7 * 86400, description="save after this many seconds since the last save (default 30)"
    )
    every_epochs: int | None = Field(None, ge=1, le=100000, description="save every this many evaluated epochs")

    @model_validator(mode="after")
    def _one_cadence(self) -> CheckpointPolicy:
        if self.every_s is not None and self.every_epochs is not None:
            raise ValueError("give every_s or every_epochs, not both")
        return self

    @property
    def seconds(self) -> float | None:
        """The time cadence in force: ``every_s``, or 30 s when neither cadence is given."""
        if self.every_epochs is not None:
            return None
        return self.every_s if self.every_s is not None else DEFAULT_CHECKPOINT_S

    def due(self, seconds_since: float, epochs_since: int) -> bool:
        """Whether an evaluated epoch, ``epochs_since`` of them and ``seconds_since`` seconds after the
        last save, saves now."""
        if self.every_epochs is not None:
            return epochs_since >= self.every_epochs
        return seconds_since >= (self.seconds or 0.0)


class TrialConfig(Schema):
    """What ``run_trial`` needs; a study's resolved trial, or an exported configuration."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="mlp"))
    method: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="erm"))
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    threads: int = Field(1, ge=1, description="torch intra-op threads (the trial's CPU share)")
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
