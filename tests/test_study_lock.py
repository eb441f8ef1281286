"""One study per folder at a time (issue: hardening, item 8): a second ``launch`` or ``resume`` of a
running study is refused naming the running process, and two launches racing on a new work
directory both set up their stores cleanly. Real processes, real Ray, real sqlite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from certstudy.cli import main
from conftest import tiny_study, wait_until_held
from trial_hooks import hold_env

pytestmark = pytest.mark.integration


def _one_trial(name: str) -> dict:
    return tiny_study(
        name, training={"epochs": 2, "batch_size": 128}, search={"num_trials": 1, "max_concurrent": 1, "seed": 0}
    )


def _launch(path: Path, work: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_a_running_study_refuses_a_second_launch_and_a_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, work, hold = tmp_path / "busy.yaml", tmp_path / "work", tmp_path / "hold"
    path.write_text(yaml.safe_dump(_one_trial("busy")))
    hold.mkdir()
    first = _launch(path, work, hold_env(hold, 0, 0))
    try:
        wait_until_held(hold, 1, first)  # the first launch is mid-trial, held there
        for argv in (["launch", str(path)], ["resume", "busy"]):
            assert main([*argv, "--workdir", str(work)]) == 1
            err = capsys.readouterr().err.strip()
            assert "\n" not in err, err
            assert f"study 'busy' is already running in {work}" in err and f"pid {first.pid}: certstudy" in err, err
        (hold / "release").touch()
        out = first.communicate(timeout=180)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    assert [p.name for p in work.iterdir() if p.name.startswith("busy")] == ["busy"]  # nothing moved aside
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("busy").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]  # one parent, one trial
    # the lock went with its holder: the study can be launched again
    assert main(["launch", str(path), "--workdir", str(work)]) == 0


def test_two_launches_racing_on_a_new_work_directory_both_set_up_cleanly_and_take_turns(tmp_path: Path) -> None:
    work = tmp_path / "work"
    procs = []
    for name in ("race-a", "race-b"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_one_trial(name)))
        procs.append(_launch(path, work))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0 and "Traceback" not in out, out
    # two drivers on one sqlite store: serialized, and said so (README: Running on a cluster)
    noted = [out for out in outs if f"also records into {work / 'mlflow.db'}; sqlite takes one writer" in out]
    assert noted and all("MLflow server on PostgreSQL" in out for out in noted), outs
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    for name in ("race-a", "race-b"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"], name
        child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)  # every epoch recorded, once each
        history = client.get_metric_history(child.info.run_id, "val/robust_acc")
        assert sorted(m.step for m in history) == [0, 1], name


def test_the_lock_file_records_the_command_line_without_any_url_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round two, item 4: the holder's command line is recorded with every URL's secrets masked."""
    from certstudy.study.records.lock import LOCKS_DIR, StudyLock
    from certstudy.workdir import Workdir

    argv = [
        "certstudy",
        "launch",
        "s.yaml",
        "--tracking-uri=postgresql://u:s3cr/et@db:5432/mlflow",
        "--optuna-storage",
        "postgresql://u@db/optuna?password=s3cret#frag",
    ]
    monkeypatch.setattr("sys.argv", argv)
    work = Workdir(tmp_path)
    with StudyLock(work, "locked"):
        held = (tmp_path / LOCKS_DIR / "locked.lock").read_text()
    assert "s3cr" not in held and "frag" not in held, held
    assert "postgresql://u:***@db:5432/mlflow" in held and "password=***" in held, held


def test_the_moved_aside_folder_is_not_a_way_around_the_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Round two, item 5: while ``<study>`` is being launched again, its moved-aside earlier launch
    ``<study>.prev-T`` (whose study.yaml names the live study) can be neither resumed nor read as a
    study, by a second real process; the live launch ends as if alone. ``.prev-`` is reserved."""
    path, work, hold = tmp_path / "aside.yaml", tmp_path / "work", tmp_path / "hold"
    path.write_text(yaml.safe_dump(_one_trial("aside")))
    assert main(["launch", str(path), "--workdir", str(work)]) == 0
    hold.mkdir()
    live = _launch(path, work, hold_env(hold, 0, 0))
    try:
        wait_until_held(hold, 1, live)
        (aside,) = [p.name for p in work.iterdir() if p.name.startswith("aside.prev-")]
        for command in ("resume", "status", "export"):
            other = subprocess.run(
                [sys.executable, "-m", "certstudy.cli", command, aside, "--workdir", str(work)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            err = other.stderr.strip()
            assert other.returncode == 2 and "\n" not in err and "moved aside" in err, (command, other.stdout, err)
        (hold / "release").touch()
        out = live.communicate(timeout=180)[0]
    finally:
        if live.poll() is None:
            live.kill()
    assert live.returncode == 0 and "Traceback" not in out, out
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("aside").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4  # two launches: a parent and a trial each

    reserved = tmp_path / "reserved.yaml"
    reserved.write_text(yaml.safe_dump(_one_trial("x.prev-20200101-000000")))
    assert main(["validate", str(reserved)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "name" in err and "reserved" in err, err
