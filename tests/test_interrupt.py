"""Ctrl-C during a study: the launch exits, and no MLflow run is left RUNNING."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import tiny_study

pytestmark = pytest.mark.integration


def test_interrupted_study_leaves_no_run_running(tmp_path: Path) -> None:
    spec = tiny_study("interrupted", training={"epochs": 200, "batch_size": 128}, search={"num_trials": 4, "max_concurrent": 2, "seed": 0})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    work = tmp_path / "work"
    proc = subprocess.Popen([shutil.which("certstudy") or "", "launch", str(path), "--workdir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until trials are running and logging
            time.sleep(2)
            try:
                exp = client.get_experiment_by_name("interrupted")
                runs = client.search_runs([exp.experiment_id]) if exp else []
            except Exception:  # the store may not exist yet
                runs = []
            children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
            if len(children) >= 2 and all(r.data.metrics for r in children):
                break
        else:
            pytest.fail("trials did not start within 120 s")
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0, out
    runs = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], out
    parent = [r for r in runs if r.data.tags.get("certstudy.role") == "study"]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    children = [r for r in runs if r.data.tags.get("certstudy.role") == "trial"]
    assert children and all(r.info.status in ("KILLED", "FINISHED", "FAILED") for r in children)
    assert any(r.data.tags.get("certstudy.fail_reason") for r in children if r.info.status == "KILLED")
