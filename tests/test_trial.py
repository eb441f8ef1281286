"""The plain-PyTorch trial: it learns, it is deterministic, and a resumed run ends identically."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from certstudy.errors import TrialFailed
from certstudy.trial import TrialConfig, run_trial


def _cfg(**kw) -> TrialConfig:
    base = {
        "model": {"name": "mlp", "params": {"width": 64}},
        "method": {"name": "adversarial", "params": {"eps": 0.05, "steps": 2}},
        "training": {"epochs": 4, "batch_size": 64, "lr": 3e-3},
        "evaluation": {"attack": {"eps": 0.05, "steps": 3}, "val_subset": 200, "test_subset": 200},
        "dataset": {"poisoning": {"rate": 0.1}},
    }
    base.update(kw)
    return TrialConfig.model_validate(base)


def test_training_improves_accuracy_on_digits(tmp_path: Path) -> None:
    history: list[dict] = []
    final = run_trial(
        _cfg(method={"name": "erm"}, training={"epochs": 6, "lr": 3e-3}),
        lambda m, d: history.append(m),
        data_dir=str(tmp_path),
    )
    assert len(history) == 6 and [int(m["epoch"]) for m in history] == list(range(6))
    assert history[-1]["val/clean_acc"] > history[0]["val/clean_acc"] + 0.1
    assert final["test/clean_acc"] > 0.8
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert all(k in final for k in ("test/clean_acc", "test/robust_acc", "gap/robust_acc", "train/robust_acc"))


def test_resumed_trial_ends_with_the_same_metrics_as_an_uninterrupted_one(tmp_path: Path) -> None:
    cfg = _cfg(checkpoint={"every_epochs": 1})
    full = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))

    saved = tmp_path / "epoch1"

    class Interrupt(Exception):
        pass

    def stop_after_epoch_1(metrics: dict, ckpt: str | None) -> None:
        if metrics["epoch"] == 1:
            shutil.copytree(ckpt, saved)
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(cfg, stop_after_epoch_1, data_dir=str(tmp_path))
    seen: list[int] = []
    resumed = run_trial(cfg, lambda m, d: seen.append(int(m["epoch"])), data_dir=str(tmp_path), resume_from=saved)
    assert seen == [2, 3]
    assert resumed == full


def test_diverging_loss_fails_the_trial_with_its_reason(tmp_path: Path) -> None:
    cfg = _cfg(
        model={"name": "mlp", "params": {"width": 512, "depth": 4}},
        method={"name": "erm"},
        training={"epochs": 3, "optimizer": "sgd", "lr": 10.0, "momentum": 0.99},
    )
    with pytest.raises(TrialFailed, match="epoch"):
        run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))


def test_poisoned_points_are_scored_against_their_flipped_labels_at_every_epoch(tmp_path: Path) -> None:
    history: list[dict] = []
    cfg = _cfg(method={"name": "erm"}, training={"epochs": 3, "lr": 3e-3}, dataset={"poisoning": {"rate": 0.3}})
    run_trial(cfg, lambda m, d: history.append(m), data_dir=str(tmp_path))
    fits = [m["train/poisoned_acc"] for m in history]
    assert len(fits) == 3
    # three epochs teach the digits, not the flips: the net predicts the true class of a flipped point, so
    # it fits few of the flipped labels while it fits most observed labels (70 % of them are clean)
    assert fits[-1] < 0.3 and history[-1]["train/acc"] > 0.5

    clean: list[dict] = []
    run_trial(_cfg(dataset={"poisoning": {"rate": 0.0}}), lambda m, d: clean.append(m), data_dir=str(tmp_path))
    assert clean and all("train/poisoned_acc" not in m for m in clean)
