"""Shared fixtures. Integration tests start real Ray and MLflow; nothing here mocks them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The tests' own state key (study/records/state_key.py), outside every test's work directory and the user's
# config; subprocesses inherit it.
os.environ["CERTSTUDY_STATE_KEY"] = os.path.join(tempfile.mkdtemp(prefix="certstudy-key-"), "state.key")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def tiny_study(name: str = "tiny", **overrides: object) -> dict:
    """A small, fast study on digits used by several tests."""
    study: dict = {
        "name": name,
        "dataset": {"name": "digits", "poisoning": {"rate": 0.1}},
        "model": {"name": "mlp", "params": {"width": 32, "depth": 1}},
        "methods": [
            {"name": "erm"},
            {
                "name": "adversarial",
                "params": {"steps": 2},
                "search": {"eps": {"type": "float", "low": 0.02, "high": 0.1}},
            },
        ],
        "training": {
            "epochs": 3,
            "batch_size": 128,
            "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        },
        "evaluation": {"attack": {"eps": 0.05, "steps": 3}, "val_subset": 128, "test_subset": 200},
        "objectives": [{"metric": "val/robust_acc", "mode": "max"}],
        "search": {"num_trials": 3, "max_concurrent": 2, "seed": 3},
        "resources": {"cpu": 1},
    }
    study.update(overrides)
    return study


def wait_until_held(hold: Path, count: int, proc: object, wait_s: float = 180) -> None:
    """Waits until ``count`` trials sit at the test-only hold point (``held-*`` files in ``hold``);
    fails with the process's output if it ends or ``wait_s`` passes first."""
    import subprocess
    import time

    assert isinstance(proc, subprocess.Popen)
    deadline = time.time() + wait_s
    while len(list(hold.glob("held-*"))) < count:
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            out = proc.communicate()[0]
            pytest.fail(f"{count} trials did not reach the hold point within {wait_s:.0f} s: {out}")
        time.sleep(0.2)


def launch_and_interrupt(
    root: Path,
    spec: dict,
    *,
    hold_from: int,
    hold_epoch: int,
    held: int,
    wait_s: float = 180,
    kill: bool = False,
    act: Callable[[Path], None] | None = None,
    workdir: Path | None = None,
) -> tuple[int, str, Path]:
    """``certstudy launch`` in a subprocess whose trials numbered ``hold_from`` and later wait after
    reporting epoch ``hold_epoch`` (the test-only hold of ``study/engine/trainable.py``); once ``held`` trials
    are waiting there, Ctrl-C (``kill``: SIGKILL to the driver and the Ray processes it started, a
    lost driver; ``act``: calls it with the hold folder instead, and then lets the trials go on).
    Nothing depends on how fast the trials run. Returns the exit code, the output and the work
    directory (``workdir``, default ``root/work``)."""
    import signal
    import subprocess
    import sys

    import yaml

    from trial_hooks import hold_env

    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    work = workdir or root / "work"
    hold = root / "hold"
    hold.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **hold_env(hold, hold_from, hold_epoch)},
    )
    try:
        wait_until_held(hold, held, proc, wait_s)
        if act is not None:
            act(hold)
            (hold / "release").touch()
        elif kill:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, work


def launch_study(root: Path, spec: dict) -> dict:
    """Launches ``spec`` for real (local Ray, MLflow and Optuna on sqlite under ``root``) and
    returns what the tests read back: the MLflow client, parent and child runs, the Optuna study."""
    import optuna
    import yaml
    from mlflow.tracking import MlflowClient

    from certstudy.cli import main

    name = spec["name"]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    work = root / "work"
    assert main(["launch", str(path), "--workdir", str(work)]) == 0
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("certstudy.role") == "study"]
    children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
    ot = optuna.load_study(study_name=name, storage=f"sqlite:///{work / name / 'optuna.db'}")
    return {
        "work": work,
        "client": client,
        "exp": exp,
        "parents": parents,
        "children": children,
        "optuna": ot,
        "root": root,
    }


def shared_mnist_root() -> Path:
    """The shared MNIST data root (a folder holding MNIST/raw/*.gz): $CERTSTUDY_DATA, else ../shared/data
    beside the repository. Tests that need it skip with the reason when it is absent; never copied."""
    root = Path(os.environ.get("CERTSTUDY_DATA") or REPO.parent / "shared" / "data")
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {root}/MNIST/raw (set CERTSTUDY_DATA to a folder holding MNIST/raw/)")
    return root


def ball_samples(x: torch.Tensor, eps: float, norm: str, n: int) -> torch.Tensor:
    """n points per example inside the ball intersected with [0, 1] (l-inf vertices and midpoints included)."""
    import torch

    gen = torch.Generator().manual_seed(1)
    if norm == "linf":
        d = (torch.randint(0, 3, (n, *x.shape), generator=gen).float() - 1) * eps  # vertices and midpoints
        d[: n // 2] = (torch.rand((n // 2, *x.shape), generator=gen) * 2 - 1) * eps
    else:
        d = torch.randn((n, *x.shape), generator=gen)
        d = d / d.flatten(2).norm(dim=2).view(n, len(x), 1, 1, 1) * eps
        d[: n // 2] *= torch.rand((n // 2, len(x), 1, 1, 1), generator=gen)
    return (x.unsqueeze(0) + d).clamp(0, 1)


def checkpoint_after_epoch(cfg: object, epoch: int, saved: Path, data_dir: Path) -> None:
    """Runs the trial until it reports ``epoch``, copies that epoch's checkpoint to ``saved`` and stops
    it there, as an interrupted trial stops."""
    import shutil

    from certstudy.trial import run_trial
    from certstudy.trial.config import CheckpointPolicy

    class Interrupt(Exception):
        pass

    def stop_after(metrics: dict, ckpt: str | None) -> None:
        if metrics["epoch"] == epoch:
            shutil.copytree(ckpt, saved)
            raise Interrupt

    cfg = cfg.model_copy(update={"checkpoint": CheckpointPolicy(every_epochs=1)})  # type: ignore[attr-defined]
    with pytest.raises(Interrupt):
        run_trial(cfg, stop_after, data_dir=str(data_dir))  # type: ignore[arg-type]
