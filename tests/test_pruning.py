"""Pruning without a cluster: the overfitting rule on synthetic series, the pruner section of a
study file, the searcher/scheduler pair on a real Optuna storage, and a trial that is asked to
stop (it finishes on its best epoch)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from certstudy.errors import SpecError
from certstudy.metric_names import LAST_EPOCH_TEST
from certstudy.study.engine.optuna_bridge import StudyPruner, StudySearcher
from certstudy.study.spec.loading import validate_spec
from certstudy.study.spec.pruning import OverfittingRule, PrunerConfig, PruningConfig
from certstudy.trial import run_trial
from certstudy.trial.checkpoint import MODEL_FILE, load
from certstudy.trial.config import CheckpointPolicy, TrialConfig
from certstudy.trial.loop import StopRequest
from conftest import tiny_study

SPACE = {"x": optuna.distributions.FloatDistribution(0, 1)}


def first_firing(rule: OverfittingRule, values: list[float], gaps: list[float] | None = None) -> int | None:
    """The first epoch at which the rule fires when fed the series epoch by epoch."""
    gaps = gaps or [0.0] * len(values)
    series: dict[int, tuple[float, float]] = {}
    for e, (v, g) in enumerate(zip(values, gaps)):
        series[e] = (v, g)
        if rule.check(series) is not None:
            return e
    return None


# --- the overfitting rule -----------------------------------------------------------------


def test_rule_fires_after_patience_epochs_at_least_min_drop_below_the_best() -> None:
    rule = OverfittingRule(min_drop=0.05, patience=3)
    #        0    1    2    3    4     5     6     7
    vals = [0.3, 0.5, 0.6, 0.7, 0.64, 0.65, 0.64, 0.60]
    assert first_firing(rule, vals) == 6  # epochs 4, 5, 6 are each >= 0.05 below 0.7
    assert first_firing(rule, vals[:6]) is None


def test_rule_resets_on_a_recovery_and_a_new_best_moves_the_bar() -> None:
    rule = OverfittingRule(min_drop=0.05, patience=3)
    assert first_firing(rule, [0.7, 0.6, 0.6, 0.66, 0.6, 0.6]) is None  # 0.66 is only 0.04 below
    assert first_firing(rule, [0.7, 0.6, 0.6, 0.8, 0.7, 0.7, 0.7]) == 6
    assert first_firing(rule, [0.7, 0.65, 0.65, 0.65]) == 3  # exactly min_drop counts


def test_rule_never_fires_during_warmup() -> None:
    rule = OverfittingRule(min_drop=0.05, patience=2, warmup=5)
    vals = [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert first_firing(rule, vals) == 5
    gap_rule = OverfittingRule(min_drop=None, max_gap=0.1, warmup=3)
    assert first_firing(gap_rule, [0.5] * 5, [0.5, 0.5, 0.5, 0.5, 0.5]) == 3
    assert first_firing(gap_rule, [0.5] * 3, [0.5] * 3) is None


def test_rule_fires_on_the_robust_generalisation_gap() -> None:
    rule = OverfittingRule(min_drop=None, max_gap=0.1)
    assert first_firing(rule, [0.5] * 6, [0.02, 0.05, 0.1, 0.1, 0.11, 0.2]) == 4  # strictly above
    assert first_firing(rule, [0.5] * 3, [math.nan] * 3) is None


def test_rule_ignores_nan_epochs_and_needs_a_criterion() -> None:
    rule = OverfittingRule(min_drop=0.05, patience=2)
    assert first_firing(rule, [0.7, math.nan, 0.6]) is None
    with pytest.raises(ValueError, match="min_drop, max_gap"):
        OverfittingRule(min_drop=None, max_gap=None)


def test_rule_reproduces_the_rice_log_reading() -> None:
    """Robust accuracy that peaks and decays (the shape of Rice et al.'s CIFAR-10 log, 1,000-image
    validation noise of about a point) is flagged after the peak, not on the plateau before it."""
    gen = torch.Generator().manual_seed(0)
    epochs = torch.arange(60, dtype=torch.float64)
    curve = torch.where(epochs < 30, 0.3 + 0.2 * epochs / 30, 0.535 - 0.003 * (epochs - 30))
    noisy = (curve + 0.01 * torch.randn(60, generator=gen, dtype=torch.float64)).tolist()
    fired = first_firing(OverfittingRule(min_drop=0.02, patience=5), noisy)
    assert fired is not None and 35 <= fired <= 50


# --- the pruning section ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
        {"name": "percentile", "percentile": 25.0},
        {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3},
        {"name": "hyperband", "min_resource": 1, "max_resource": 9},
        {"name": "threshold", "lower": 0.2},
        {"name": "wilcoxon", "p_threshold": 0.05},
        {"name": "patient", "patience": 2, "wrapped": {"name": "median"}},
        {"name": "patient", "patience": 2},
        {"name": "none"},
    ],
)
def test_every_optuna_pruner_by_name(cfg: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        pruner = PrunerConfig.model_validate(cfg).build()
    assert isinstance(pruner, optuna.pruners.BasePruner)


def study_with(**overrides: object) -> dict:
    spec = tiny_study("pr")
    spec.update(overrides)
    return spec


def test_spec_errors_name_the_pruning_field() -> None:
    with pytest.raises(SpecError, match=r"pruning\.pruner.*unexpected keyword argument 'bogus'"):
        validate_spec(study_with(pruning={"pruner": {"name": "median", "bogus": 1}}), "s.yaml")
    with pytest.raises(SpecError, match=r"pruning\.pruner\.name.*multi-objective"):
        validate_spec(
            study_with(
                pruning={"pruner": "median"}, objectives=[{"metric": "val/robust_acc"}, {"metric": "val/clean_acc"}]
            ),
            "s.yaml",
        )
    certified = study_with(
        pruning={"pruner": "median"},
        objectives=[{"metric": "val/certified_acc_lipschitz_l2_r0.25"}],
        evaluation={"certifiers": [{"name": "lipschitz"}], "certify_val_subset": 10},
    )
    with pytest.raises(SpecError, match="measured only at the end"):
        validate_spec(certified, "s.yaml")
    with pytest.raises(SpecError, match=r"pruning\.overfitting.*min_drop, max_gap"):
        validate_spec(study_with(pruning={"overfitting": {"min_drop": None}}), "s.yaml")
    with pytest.raises(SpecError, match=r"pruning\.pruner\.name"):
        validate_spec(study_with(pruning={"pruner": "asha"}), "s.yaml")


def test_a_pruned_study_ends_trials_on_their_best_epoch_by_the_objective() -> None:
    spec = validate_spec(
        study_with(
            pruning={"overfitting": {"min_drop": 0.05}}, objectives=[{"metric": "val/robust_loss", "mode": "min"}]
        ),
        "s.yaml",
    )
    assert (spec.evaluation.final_model, spec.evaluation.best_metric, spec.evaluation.best_mode) == (
        "best",
        "val/robust_loss",
        "min",
    )
    multi = validate_spec(
        study_with(
            pruning={"overfitting": {"min_drop": 0.05}},
            objectives=[{"metric": "val/robust_acc"}, {"metric": "val/clean_acc"}],
        ),
        "s.yaml",
    )
    assert (multi.evaluation.final_model, multi.evaluation.best_metric) == ("best", "val/robust_acc")
    explicit = validate_spec(study_with(pruning={"pruner": "median"}, evaluation={"final_model": "last"}), "s.yaml")
    assert explicit.evaluation.final_model == "last"
    plain = validate_spec(study_with(), "s.yaml")
    assert plain.evaluation.final_model == "last" and not plain.pruning.enabled


# --- searcher and scheduler on a real Optuna storage ----------------------------------------


def make_searcher(tmp_path: Path, pruning: dict, metric: object = "m", mode: object = "max") -> StudySearcher:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return StudySearcher(
        space=SPACE,
        metric=metric,
        mode=mode,
        storage=storage,
        study_name="s",
        pruning=PruningConfig.model_validate(pruning),
    )


def run_epochs(s: StudySearcher, trial_id: str, values: list[float], gaps: list[float] | None = None) -> int | None:
    """Feeds epochs until a decision; returns the epoch it was taken at."""
    for e, v in enumerate(values):
        d = s.observe(
            trial_id,
            {"m": v, "epoch": float(e), "val/robust_acc": v, "gap/robust_acc": (gaps or [0.0] * len(values))[e]},
        )
        if d is not None:
            return d.epoch
    return None


def test_searcher_prunes_with_the_optuna_pruner_and_records_pruned(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, {"pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 1}})
    assert isinstance(s.study.pruner, StudyPruner) and isinstance(s.study.pruner.wrapped, optuna.pruners.MedianPruner)
    for tid, vals in (("a", [0.5, 0.6, 0.7]), ("b", [0.4, 0.5, 0.6])):
        s.suggest(tid)
        assert run_epochs(s, tid, vals) is None
        s.on_trial_complete(tid, result={"m": vals[-1]})
    s.suggest("c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicate-step warnings from Optuna
        assert run_epochs(s, "c", [0.3, 0.1, 0.05]) == 1  # best so far 0.3 < median 0.55 at epoch 1
        assert s.observe("c", {"m": 0.1, "epoch": 1.0}).reason == "median"  # Ray's duplicate: same decision
    s.on_trial_complete("c", result={"m": 0.3, "best/epoch": 0.0})
    trials = {t.number: t for t in s.study.get_trials()}
    assert [trials[i].state for i in range(3)] == [optuna.trial.TrialState.COMPLETE] * 2 + [
        optuna.trial.TrialState.PRUNED
    ]
    pruned = trials[2]
    assert pruned.value == pytest.approx(0.1)  # its last intermediate value, not the best epoch's
    assert pruned.intermediate_values == {0: 0.3, 1: 0.1}
    assert pruned.user_attrs["prune_reason"] == "median" and pruned.user_attrs["pruned_at_epoch"] == 1
    assert trials[0].value == pytest.approx(0.7)


def test_overfitting_rule_prunes_multi_objective_studies_optuna_pruners_do_not(tmp_path: Path) -> None:
    s = make_searcher(
        tmp_path, {"overfitting": {"min_drop": 0.1, "patience": 2}}, metric=["m", "n"], mode=["max", "max"]
    )
    s.suggest("a")
    assert run_epochs(s, "a", [0.5, 0.8, 0.6, 0.6, 0.6]) == 3
    s.on_trial_complete("a", result={"m": 0.8, "n": 0.5})
    t = s.study.get_trials()[0]
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["prune_reason"] == "overfitting"
    assert t.intermediate_values == {}  # multi-objective studies have no intermediate values


def test_failure_after_a_prune_decision_is_a_failure(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, {"pruner": {"name": "threshold", "lower": 0.5}})
    s.suggest("a")
    assert run_epochs(s, "a", [0.1]) == 0
    s.on_trial_complete("a", result={"m": 0.1, "certstudy_failure": "TrialFailed: out of memory"})
    t = s.study.get_trials()[0]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["fail_reason"].startswith("TrialFailed")


def test_restore_takes_back_decisions_that_reached_the_storage(tmp_path: Path) -> None:
    s = make_searcher(tmp_path, {"pruner": {"name": "threshold", "lower": 0.5}})
    s.suggest("a")
    s.suggest("b")
    s.save(str(tmp_path / "searcher.pkl"))  # the experiment checkpoint, taken before the decision
    assert run_epochs(s, "a", [0.9, 0.2]) == 1
    fresh = make_searcher(tmp_path, {"pruner": {"name": "threshold", "lower": 0.5}})
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.prune_decision("a") is not None and fresh.prune_decision("a").epoch == 1
    assert fresh.prune_decision("b") is None
    fresh.on_trial_complete("a", result={"m": 0.9, "best/epoch": 0.0})
    assert fresh.study.get_trials()[0].state == optuna.trial.TrialState.PRUNED


# --- the trial side: asked to stop, it finishes on its best epoch ----------------------------


def small_trial(**evaluation: object) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "model": {"name": "mlp", "params": {"width": 16, "depth": 1}},
            "method": {"name": "erm"},
            "training": {"epochs": 6, "batch_size": 256, "lr": 0.01},
            "evaluation": {"attack": {"eps": 0.05, "steps": 2}, "val_subset": 100, "test_subset": 100, **evaluation},
            "threads": 1,
        }
    )


def test_a_stopped_trial_finishes_on_its_best_epoch(tmp_path: Path) -> None:
    reports: list[dict] = []
    saved: dict[str, dict] = {}

    def report(metrics: dict, checkpoint_dir: str | None) -> StopRequest | None:
        reports.append(dict(metrics))
        if "best/epoch" in metrics:
            saved["final"] = load(checkpoint_dir)
            saved["weights"] = torch.load(Path(checkpoint_dir) / MODEL_FILE, weights_only=True)
        return StopRequest("median", 3) if metrics.get("epoch") == 3.0 and "best/epoch" not in metrics else None

    out = run_trial(small_trial(best_metric="val/clean_loss", best_mode="min"), report, data_dir=str(tmp_path))
    assert [r["epoch"] for r in reports] == [0.0, 1.0, 2.0, 3.0, 3.0]  # four epochs, then the summary
    losses = [r["val/clean_loss"] for r in reports[:4]]
    best = min(range(4), key=lambda e: losses[e])
    assert out["best/epoch"] == best and out["best/val/clean_loss"] == losses[best]
    assert "val/clean_loss" not in out and "test/clean_acc" in out
    best_state = saved["final"]["best"]
    assert best_state["epoch"] == best
    assert all(torch.equal(saved["weights"][k], best_state["model"][k]) for k in saved["weights"])


def test_a_trial_ending_on_its_best_epoch_also_reports_its_last_epochs_test_accuracy(tmp_path: Path) -> None:
    """Robust overfitting is the best epoch against the last: the summary carries both on the test points."""
    out = run_trial(
        small_trial(final_model="best", best_metric="val/clean_loss", best_mode="min"),
        lambda m, d: None,
        data_dir=str(tmp_path),
    )
    clean, robust = LAST_EPOCH_TEST
    assert 0 <= out[clean] <= 1 and 0 <= out[robust] <= out[clean]
    if out["best/epoch"] == 5:
        assert (out[clean], out[robust]) == (out["test/clean_acc"], out["test/robust_acc"])
    cfg = small_trial(final_model="last", best_metric="val/clean_loss", best_mode="min")
    last = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    assert (out[clean], out[robust]) == (last["test/clean_acc"], last["test/robust_acc"])  # the same last model


def test_final_model_best_and_resume_keep_the_same_best_epoch(tmp_path: Path) -> None:
    cfg = small_trial(final_model="best", best_metric="val/clean_acc")
    cfg = cfg.model_copy(update={"checkpoint": CheckpointPolicy(every_epochs=1)})  # a save at epoch 2 to resume from
    full: list[dict] = []
    run_trial(cfg, lambda m, d: full.append(dict(m)), data_dir=str(tmp_path))
    assert "best/epoch" in full[-1] and len(full) == 7
    ckpt: dict[str, str] = {}
    part: list[dict] = []

    def stop_after_two(m: dict, d: str | None) -> None:
        part.append(dict(m))
        if m["epoch"] == 2.0:
            import shutil

            shutil.copytree(d, tmp_path / "ck")
            ckpt["dir"] = str(tmp_path / "ck")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trial(cfg, stop_after_two, data_dir=str(tmp_path))
    resumed: list[dict] = []
    out = run_trial(cfg, lambda m, d: resumed.append(dict(m)), data_dir=str(tmp_path), resume_from=ckpt["dir"])
    assert out == full[-1]


def test_best_metric_must_be_reported_every_epoch(tmp_path: Path) -> None:
    from certstudy.errors import TrialFailed

    with pytest.raises(TrialFailed, match="best_metric 'val/no_such'"):
        run_trial(small_trial(final_model="best", best_metric="val/no_such"), lambda m, d: None, data_dir=str(tmp_path))


def test_study_file_round_trips_with_a_pruning_section(tmp_path: Path) -> None:
    from certstudy.study.spec.loading import dump_study, load_study

    spec = validate_spec(
        study_with(
            pruning={
                "pruner": {"name": "patient", "patience": 2, "wrapped": {"name": "median", "n_startup_trials": 3}},
                "overfitting": {"min_drop": 0.03, "warmup": 4},
            }
        ),
        "s.yaml",
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(dump_study(spec)))
    again = load_study(path)
    assert again.pruning == spec.pruning and again.evaluation == spec.evaluation


def test_restore_hands_trials_proposed_after_the_checkpoint_to_new_ray_trials(tmp_path: Path) -> None:
    """A lost driver: Optuna proposed trial 1 after Ray's last experiment checkpoint. After the
    restore, Ray proposes a new trial; it takes trial 1 over (same parameters) instead of asking a
    third, so the study keeps its planned number of Optuna trials."""
    s = make_searcher(tmp_path, {})
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    lost = s.suggest("b")
    fresh = make_searcher(tmp_path, {})
    fresh.restore(str(tmp_path / "searcher.pkl"))
    again = fresh.suggest("c")
    assert again == lost and again["_optuna_trial"] == 1
    fresh.suggest("d")
    assert [t.number for t in fresh.study.get_trials()] == [0, 1, 2]


def test_restore_keeps_the_outcome_of_trials_that_ended_after_the_checkpoint(tmp_path: Path) -> None:
    """A lost driver: trial "a" was told COMPLETE after Ray's last experiment checkpoint. Ray runs
    it again from its last trial checkpoint after the restore; Optuna keeps the first outcome and
    the re-run's epochs are not reported to a finished trial (Optuna would raise)."""
    s = make_searcher(tmp_path, {"pruner": {"name": "threshold", "lower": 0.5}})
    s.suggest("a")
    assert run_epochs(s, "a", [0.6, 0.7]) is None
    s.save(str(tmp_path / "searcher.pkl"))
    assert run_epochs(s, "a", [0.6, 0.7, 0.8]) is None
    s.on_trial_complete("a", result={"m": 0.8})
    fresh = make_searcher(tmp_path, {"pruner": {"name": "threshold", "lower": 0.5}})
    fresh.restore(str(tmp_path / "searcher.pkl"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fresh.observe("a", {"m": 0.1, "epoch": 2.0}) is None  # no report, no prune decision
        fresh.on_trial_complete("a", result={"m": 0.1})
    t = fresh.study.get_trials()[0]
    assert t.state == optuna.trial.TrialState.COMPLETE and t.value == pytest.approx(0.8)
    assert t.intermediate_values == {0: 0.6, 1: 0.7, 2: 0.8}
