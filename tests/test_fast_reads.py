"""``certstudy status`` and ``export`` read sqlite stores with Python's sqlite3 (issue: overhead, fixed
costs): what they read is exactly what Optuna and MLflow give for the same study, and the commands
import neither of them, nor torch or Ray."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from certstudy.study.records.export import export
from certstudy.study.records.launched import LaunchedStudy
from certstudy.study.records.status import _library_records, read_records, study_status
from certstudy.workdir import Workdir
from conftest import launch_study, tiny_study

pytestmark = pytest.mark.integration


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_status_and_export_read_sqlite_as_the_libraries_do_and_import_neither(tmp_path: Path) -> None:
    spec = tiny_study(
        "fast",
        model={"name": "mlp", "params": {"depth": 1}, "search": {"width": {"type": "int", "low": 16, "high": 48}}},
        search={"num_trials": 4, "max_concurrent": 2, "seed": 5},
        pruning={"pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}},
    )
    got = launch_study(tmp_path, spec)
    workdir = Workdir(got["work"])
    launched = LaunchedStudy.read(workdir, "fast")
    assert launched.num_trials == 4 and launched.objective.metric == "val/robust_acc"

    fast, slow = read_records(workdir, launched), _library_records(workdir, launched)
    assert [t.number for t in fast.trials] == [0, 1, 2, 3]
    for a, b in zip(fast.trials, slow.trials):
        assert (a.number, a.state, a.values) == (b.number, b.state, b.values)
        assert _same(a.params, b.params) and _same(a.user_attrs, b.user_attrs), (a, b)
        assert isinstance(a.params["method"], str) and isinstance(a.params["model.width"], int)
    assert fast.parent is not None and slow.parent is not None
    assert sorted(fast.runs) == sorted(slow.runs) == [0, 1, 2, 3]
    for run_a, run_b in [(fast.parent, slow.parent)] + [(fast.runs[n], slow.runs[n]) for n in fast.runs]:
        assert run_a.info == run_b.info and run_a.epochs == run_b.epochs
        assert run_a.data.tags == run_b.data.tags and _same(run_a.data.metrics, run_b.data.metrics)
    assert all(r.epochs >= 1 for r in fast.runs.values())
    assert fast.ray_experiment == slow.ray_experiment

    st = study_status(workdir, "fast")
    assert sum(st.counts.values()) == 4 and not st.resumable and st.parent_status.startswith("FINISHED")

    # export: the same documents read straight from sqlite and through MLflow (--tracking-uri forces it)
    quick_path, quick = export(workdir, "fast", top=3, out=tmp_path / "quick.yaml")
    _, slow_docs = export(
        workdir, "fast", top=3, out=tmp_path / "slow.yaml", tracking_uri=f"sqlite:///{got['work'] / 'mlflow.db'}"
    )
    assert len(quick) == min(3, len(slow_docs)) >= 1 and _same(quick, slow_docs)
    assert quick_path.read_text() == (tmp_path / "slow.yaml").read_text().replace("slow.yaml", "quick.yaml")

    # the commands themselves, and not one of the heavy libraries imported
    for argv, shown in (
        (["status", "fast"], "study fast: 4 of 4 trials proposed"),
        (["export", "fast", "-o", str(tmp_path / "cli.yaml")], "exported to"),
    ):
        code = (
            "import sys, json; from certstudy.cli import main; rc = main(json.loads(sys.argv[1])); "
            "print(json.dumps([rc, sorted(m for m in ('torch', 'mlflow', 'optuna', 'ray', 'sqlalchemy') "
            "if m in sys.modules)]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps([*argv, "--workdir", str(got["work"])])],
            capture_output=True,
            text=True,
            check=True,
        )
        rc, heavy = json.loads(out.stdout.strip().splitlines()[-1])
        assert rc == 0 and heavy == [], out.stdout
        assert shown in out.stdout, out.stdout
