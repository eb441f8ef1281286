"""A real study end to end: local Ray, MLflow on sqlite, Optuna on sqlite, the console scripts.

One of the three trials diverges (lr = 10 with SGD, momentum 0.99), so the same study also shows
that a failing trial ends FAILED with its reason in MLflow and Optuna while the study goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
import yaml

from certstudy.cli import main
from conftest import launch_study, tiny_study

pytestmark = pytest.mark.integration

EPOCHS = 3
SPEC = tiny_study(
    "itest",
    model={"name": "mlp", "params": {"width": 512, "depth": 4}},
    training={
        "epochs": EPOCHS,
        "batch_size": 128,
        "optimizer": "sgd",
        "momentum": 0.99,
        "search": {"lr": {"type": "categorical", "choices": [10.0, 0.003]}},
    },
    search={"sampler": "random", "num_trials": 3, "max_concurrent": 2, "seed": 0},
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return launch_study(tmp_path_factory.mktemp("study"), SPEC)


def test_one_parent_run_and_one_nested_child_per_trial(study: dict) -> None:
    assert len(study["parents"]) == 1
    parent = study["parents"][0]
    assert parent.info.status == "FINISHED" and parent.data.tags["certstudy.study"] == "itest"
    assert len(study["children"]) == 3
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in study["children"])
    assert not [r for r in study["children"] + study["parents"] if r.info.status == "RUNNING"]


def test_failed_trial_is_failed_with_reason_in_mlflow_and_optuna_and_the_study_goes_on(study: dict) -> None:
    by_state = {s: [t for t in study["optuna"].trials if t.state.name == s] for s in ("COMPLETE", "FAIL")}
    assert len(by_state["COMPLETE"]) == 2 and len(by_state["FAIL"]) == 1, [t.state for t in study["optuna"].trials]
    failed = by_state["FAIL"][0]
    assert failed.params["training.lr"] == 10.0
    assert "training loss became nan" in failed.user_attrs["fail_reason"]
    failed_runs = [c for c in study["children"] if c.info.status == "FAILED"]
    assert len(failed_runs) == 1
    assert failed_runs[0].data.tags["ray.trial_id"] == failed.user_attrs["ray_trial_id"]
    assert "training loss became nan" in failed_runs[0].data.tags["certstudy.fail_reason"]


def test_child_runs_hold_the_resolved_config_and_per_epoch_metrics(study: dict) -> None:
    client = study["client"]
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study["optuna"].trials}
    for child in study["children"]:
        ot_trial = by_ray_id[child.data.tags["ray.trial_id"]]
        params = child.data.params
        assert params["method.name"] == ot_trial.params["method"] == child.data.tags["certstudy.method"]
        assert float(params["training.lr"]) == ot_trial.params["training.lr"]
        assert params["model.params.width"] == "512" and params["dataset.poisoning.rate"] == "0.1"
        assert params["seed"] == "0" and params["threads"] == "1"
        if ot_trial.params["method"] == "adversarial":
            assert float(params["method.params.eps"]) == ot_trial.params["adversarial.eps"]
        if child.info.status != "FINISHED":
            continue
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val/robust_acc")]
        assert steps == list(range(EPOCHS))
        for name in ("test/clean_acc", "test/robust_acc", "gap/robust_acc", "train/robust_acc"):
            assert name in child.data.metrics
        assert ot_trial.value == pytest.approx(child.data.metrics["val/robust_acc"], abs=0)
        assert sorted(ot_trial.intermediate_values) == list(range(EPOCHS))  # Optuna steps are epochs, like MLflow steps
        assert [a.path for a in client.list_artifacts(child.info.run_id, "model")] == ["model/model.pt"]


def test_optuna_storage_links_trials_to_the_parent_run(study: dict) -> None:
    attrs = study["optuna"].user_attrs
    assert attrs["mlflow_parent_run_id"] == study["parents"][0].info.run_id
    assert len(study["optuna"].trials) == 3


def test_export_then_run_reproduces_the_exported_metrics_exactly(study: dict) -> None:
    work, out = study["work"], study["root"] / "best.yaml"
    assert (
        main(["export", "itest", "--workdir", str(work), "--metric", "val/robust_acc", "--top", "3", "-o", str(out)])
        == 0
    )
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2  # the failed trial is never exported
    values = [d["provenance"]["metrics"]["val/robust_acc"] for d in docs]
    assert values == sorted(values, reverse=True)
    best = docs[0]
    assert "search" not in best["training"] and "method" in best and "methods" not in best
    assert best["provenance"]["mlflow_run_id"] in {c.info.run_id for c in study["children"]}
    exe = shutil.which("certstudy") or ""
    assert exe, "the console script should be installed"
    proc = subprocess.run(
        [exe, "run", str(out), "--workdir", str(work), "--no-track"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "reproduced the exported metrics exactly" in proc.stdout, proc.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_study_on_loopback_with_nested_runs(study: dict) -> None:
    port = _free_port()
    exe = shutil.which("certstudy") or ""
    proc = subprocess.Popen(
        [exe, "ui", "--workdir", str(study["work"]), "--port", str(port), "--study", "itest"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("MLflow UI did not come up within 90 s")
        body = json.dumps({"experiment_ids": [study["exp"].experiment_id], "max_results": 100}).encode()
        req = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            runs = json.load(r)["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
        parent_id = study["parents"][0].info.run_id
        assert sum(1 for t in tags if t.get("certstudy.role") == "study") == 1
        assert sum(1 for t in tags if t.get("mlflow.parentRunId") == parent_id) == 3
    finally:
        os.killpg(proc.pid, 15)
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in out and f"/runs/{parent_id}" in out
