"""A full disk, before and during a study, on a real small tmpfs the test mounts (issue: hardening).

Before: one line, exit 1, no traceback, nothing left RUNNING. During: the study stops with one
line and exit 1, ``status`` (read-only) shows the runs it could not close as interrupted, and once
space is freed ``resume`` completes every trial with each epoch in MLflow exactly once (the epochs
MLflow could not take are back-filled from the trial folders, or re-run from the last checkpoint;
an epoch MLflow already has is never logged again).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import launch_and_interrupt, tiny_study

pytestmark = pytest.mark.integration

DISK_MB = 64
FILLER = "filler"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs mounted for the test (skipped where mounting is not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path) -> None:
    """Writes a file until the filesystem refuses another byte (only on the test's own small disk)."""
    size = os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize
    assert size <= DISK_MB << 20, f"{disk} is not the test's {DISK_MB} MB tmpfs: refusing to fill it"
    with open(disk / FILLER, "wb") as fh:
        block = b"\0" * (1 << 20)
        try:
            while True:
                fh.write(block)
                fh.flush()
        except OSError:
            pass
    os.sync()
    with pytest.raises(OSError):
        (disk / f"probe-{uuid.uuid4().hex}").write_bytes(b"\0" * 4096)


def certstudy(*args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "certstudy.cli", *args], capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def assert_one_line(out: str) -> None:
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0], out


def test_a_launch_on_a_full_disk_is_one_line_and_leaves_nothing_running(tmp_path: Path, small_disk: Path) -> None:
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(tiny_study("full", search={"num_trials": 2, "max_concurrent": 2, "seed": 3})))
    work = small_disk / "work"
    # A work directory that holds a finished study, then the disk fills up.
    assert certstudy("launch", str(path), "--workdir", str(work))[0] == 0
    fill(small_disk)
    rc, out = certstudy("launch", str(path), "--workdir", str(work))
    assert rc == 1, out
    assert_one_line(out)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("full").experiment_id])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    # A fresh work directory on the full disk: the same one line.
    rc, out = certstudy("launch", str(path), "--workdir", str(small_disk / "fresh"))
    assert rc == 1, out
    assert_one_line(out)


def test_a_disk_that_fills_during_a_study_stops_it_and_resume_completes_it(tmp_path: Path, small_disk: Path) -> None:
    spec = tiny_study("filled", search={"num_trials": 3, "max_concurrent": 2, "seed": 3})
    epochs = spec["training"]["epochs"]
    rc, out, work = launch_and_interrupt(
        tmp_path, spec, hold_from=0, hold_epoch=1, held=2, act=lambda _: fill(small_disk), workdir=small_disk / "work"
    )
    assert rc == 1, out
    assert_one_line(out)
    assert "certstudy resume filled" in out

    rc, out = certstudy("status", "filled", "--workdir", str(work))
    assert rc == 0, out
    assert "interrupted" in out and "resume" in out

    (small_disk / FILLER).unlink()
    rc, out = certstudy("resume", "filled", "--workdir", str(work))
    assert rc == 0, out
    assert "Traceback" not in out

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("filled").experiment_id])
    parents = [r for r in runs if r.data.tags.get("certstudy.role") == "study"]
    children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.info.run_name for r in children) == [f"filled-{n:04d}-{m}" for n, m in _methods(work)]
    for run in children:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags)
        assert "certstudy.reason" not in run.data.tags, run.data.tags
        steps = collections.Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert dict(steps) == {e: 1 for e in range(epochs)}, (run.info.run_name, steps)
    study = optuna.load_study(study_name="filled", storage=f"sqlite:///{work / 'filled' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def _methods(work: Path) -> list[tuple[int, str]]:
    study = optuna.load_study(study_name="filled", storage=f"sqlite:///{work / 'filled' / 'optuna.db'}")
    return sorted((t.number, str(t.params["method"])) for t in study.trials)


def test_an_out_of_space_error_is_found_however_the_libraries_wrapped_it() -> None:
    import errno
    import sqlite3

    from certstudy.errors import disk_full_cause, disk_full_message

    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except BaseException as exc:
                raise RuntimeError("commit failed") from exc
        except RuntimeError as outer:
            return outer

    assert disk_full_cause(wrapped(OSError(errno.ENOSPC, "No space left on device", "/x/y"))) is not None
    assert disk_full_cause(wrapped(sqlite3.OperationalError("database or disk is full"))) is not None
    assert disk_full_cause(wrapped(OSError(errno.EACCES, "Permission denied"))) is None
    message = disk_full_message(wrapped(OSError(errno.ENOSPC, "No space left", "/w/s/study.yaml")), "/w")
    assert message is not None and "\n" not in message and "/w/s/study.yaml" in message
