"""When a trial saves its state (``checkpoint: {every_s | every_epochs}``): on its cadence, always at
its end, at a prune or early stop and before a failure; and a trial resumed from an older save re-runs
only what came after it and ends bit-exactly as an uninterrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from certstudy.errors import SpecError, TrialFailed
from certstudy.trial import TrialConfig, loop, run_trial
from certstudy.trial.checkpoint import load
from certstudy.trial.loop import StopRequest
from conftest import tiny_study


def _cfg(checkpoint: dict | None = None, epochs: int = 6) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "model": {"name": "mlp", "params": {"width": 32}},
            "method": {"name": "erm"},
            "training": {"epochs": epochs, "batch_size": 128, "lr": 3e-3},
            "evaluation": {"attack": {"eps": 0.05, "steps": 2}, "val_subset": 100, "test_subset": 100},
            **({"checkpoint": checkpoint} if checkpoint is not None else {}),
        }
    )


class Clock:
    """The loop's ``time.monotonic``, advanced by the test: an epoch lasts ``epoch_s`` seconds."""

    def __init__(self, epoch_s: float) -> None:
        self.now, self.epoch_s = 1000.0, epoch_s

    def __call__(self) -> float:
        return self.now


def _saved_epochs(cfg: TrialConfig, tmp_path: Path, clock: Clock | None = None) -> tuple[list[int], list[int]]:
    """(epochs reported, epochs whose report carried a checkpoint), the final summary excluded."""
    reported, saved = [], []

    def report(metrics: dict, ckpt: str | None) -> None:
        if "best/epoch" in metrics:
            return
        reported.append(int(metrics["epoch"]))
        if ckpt is not None:
            assert load(ckpt)["epoch"] == int(metrics["epoch"])
            saved.append(int(metrics["epoch"]))
        if clock is not None:
            clock.now += clock.epoch_s

    run_trial(cfg, report, data_dir=str(tmp_path))
    return reported, saved


def test_every_epochs_saves_on_its_cadence_and_at_the_end(tmp_path: Path) -> None:
    assert _saved_epochs(_cfg({"every_epochs": 2}, epochs=7), tmp_path) == (list(range(7)), [1, 3, 5, 6])
    assert _saved_epochs(_cfg({"every_epochs": 1}, epochs=3), tmp_path) == ([0, 1, 2], [0, 1, 2])


def test_every_s_saves_after_that_much_training_and_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's clock moves 12 s at each report (the next epoch training): epoch e is evaluated
    12·e s after the start, and a save restarts the count at the clock after its report."""
    clock = Clock(epoch_s=12.0)  # the 30 s default: epoch 3 (36 s; count restarts at 48), next due at 84 s
    monkeypatch.setattr(loop.time, "monotonic", clock)
    assert _saved_epochs(_cfg(epochs=7), tmp_path, clock) == (list(range(7)), [3, 6])
    clock = Clock(epoch_s=12.0)  # every 20 s: epoch 2 (24 s; restarts at 36), next due at 60 s, after the end
    monkeypatch.setattr(loop.time, "monotonic", clock)
    assert _saved_epochs(_cfg({"every_s": 20}, epochs=5), tmp_path, clock) == (list(range(5)), [2, 4])
    clock = Clock(epoch_s=12.0)
    monkeypatch.setattr(loop.time, "monotonic", clock)
    assert _saved_epochs(_cfg({"every_s": 20}, epochs=9), tmp_path, clock) == (list(range(9)), [2, 5, 8])


def test_a_prune_decision_saves_the_finished_trial(tmp_path: Path) -> None:
    ckpts: list[tuple[int, str | None]] = []

    def report(metrics: dict, ckpt: str | None) -> StopRequest | None:
        if ckpt is not None:
            ckpts.append((int(metrics["epoch"]), shutil.copytree(ckpt, tmp_path / f"c{len(ckpts)}")))
        return StopRequest("median", "pruned in a test") if metrics["epoch"] == 2 else None

    summary = run_trial(_cfg({"every_s": 3600}), report, data_dir=str(tmp_path))
    assert summary["epoch"] == 2.0
    assert [e for e, _ in ckpts] == [2]  # none before the decision, one with it
    assert load(ckpts[0][1])["finished"] == summary


def test_a_failing_trial_saves_its_last_good_epoch_first_and_resumes_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg({"every_s": 3600})
    full = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    real_check = loop._check_finite

    def fail_at_3(metrics: dict, epoch: int) -> None:
        if epoch == 3:
            raise TrialFailed("metric val/clean_loss is nan at epoch 3")
        real_check(metrics, epoch)

    monkeypatch.setattr(loop, "_check_finite", fail_at_3)
    reports: list[tuple[int, bool]] = []
    saved = tmp_path / "last-good"

    def report(metrics: dict, ckpt: str | None) -> None:
        reports.append((int(metrics["epoch"]), ckpt is not None))
        if ckpt is not None:
            shutil.copytree(ckpt, saved)

    with pytest.raises(TrialFailed, match="epoch 3"):
        run_trial(cfg, report, data_dir=str(tmp_path))
    assert reports == [(0, False), (1, False), (2, False), (2, True)]  # epoch 2 again, now with its state
    assert load(saved)["epoch"] == 2

    monkeypatch.setattr(loop, "_check_finite", real_check)
    seen: list[int] = []
    resumed = run_trial(cfg, lambda m, d: seen.append(int(m["epoch"])), data_dir=str(tmp_path), resume_from=saved)
    assert seen[:3] == [3, 4, 5] and resumed == full


def test_resuming_from_an_older_save_reruns_the_rest_bit_exactly(tmp_path: Path) -> None:
    """Saves every 3rd epoch; the trial is stopped after reporting epoch 4 (saved at 2): the resumed
    trial re-runs 3 and 4, reporting them exactly as before, and ends as the uninterrupted one."""
    cfg = _cfg({"every_epochs": 3})
    first: dict[int, dict] = {}
    full = run_trial(cfg, lambda m, d: None if first.setdefault(int(m["epoch"]), m) else None, data_dir=str(tmp_path))
    saved = tmp_path / "saved"

    class Interrupt(Exception):
        pass

    def stop_after_4(metrics: dict, ckpt: str | None) -> None:
        if ckpt is not None:
            shutil.rmtree(saved, ignore_errors=True)
            shutil.copytree(ckpt, saved)
        if metrics["epoch"] == 4:
            raise Interrupt  # raised by the reporter (the driver stopping it): nothing is flushed

    with pytest.raises(Interrupt):
        run_trial(cfg, stop_after_4, data_dir=str(tmp_path))
    assert load(saved)["epoch"] == 2
    again: dict[int, dict] = {}
    resumed = run_trial(
        cfg,
        lambda m, d: None if again.setdefault(int(m["epoch"]), m) else None,
        data_dir=str(tmp_path),
        resume_from=saved,
    )
    assert sorted(again) == [3, 4, 5] and all(again[e] == first[e] for e in (3, 4))
    assert resumed == full


@pytest.mark.parametrize(
    "section, message",
    [
        ({"every_s": 30, "every_epochs": 2}, "give every_s or every_epochs, not both"),
        ({"every_s": 0}, "greater than 0"),
        ({"every_epochs": 0}, "greater than or equal to 1"),
        ({"every": 3}, "every"),
    ],
)
def test_a_bad_checkpoint_section_names_the_field(section: dict, message: str, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="the study layer needs Optuna (absent where the GPU check runs)")
    from certstudy.study.spec.loading import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("s", checkpoint=section)))
    with pytest.raises(SpecError) as err:
        load_study(path)
    assert f"{path}: checkpoint" in str(err.value) and message in str(err.value), err.value
