"""A seeded sqlite tracking store is the store MLflow's migrations make (study/records/mlflow_seed.py).

The saved schema is compared with a store the installed MLflow creates itself, table by table,
index by index and row by row; a seeded store then works as one (MLflow's own schema check on
open passes, the Default experiment appears, runs and metrics go in); a store that exists, a
server URI and an MLflow without a saved schema are left to MLflow.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from certstudy.study.records import mlflow_seed
from certstudy.study.records.tracking import Tracker

_CONSTRAINTS = ("CONSTRAINT ", "FOREIGN KEY", "CHECK ", "CHECK(", "PRIMARY KEY", "UNIQUE")


def _statement(sql: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A CREATE statement as (its lines in order, its constraint clauses as a set): MLflow's own
    migrations write a table's constraints in an order that changes with Python's hash seed."""
    lines = [line.strip().rstrip(",").strip() for line in (sql or "").splitlines()]
    kept = tuple(line for line in lines if not line.startswith(_CONSTRAINTS))
    return kept, tuple(sorted(line for line in lines if line.startswith(_CONSTRAINTS)))


def _contents(store: Path) -> dict[str, object]:
    with closing(sqlite3.connect(store)) as db:
        schema = sorted(
            (kind, name, table, _statement(sql))
            for kind, name, table, sql in db.execute(
                "select type, name, tbl_name, sql from sqlite_master where name not like 'sqlite_%'"
            )
        )
        tables = [row[1] for row in schema if row[0] == "table"]
        rows = {t: sorted(db.execute(f'select * from "{t}"').fetchall()) for t in tables if t != "experiments"}
        experiments = db.execute("select experiment_id, name, lifecycle_stage from experiments").fetchall()
    return {"schema": schema, "rows": rows, "experiments": experiments}


def test_the_saved_schema_is_the_installed_mlflows_own(tmp_path: Path) -> None:
    if not mlflow_seed.schema_file().exists():  # another 3.17.x: MLflow creates stores itself (slower, same result)
        pytest.skip(
            f"no schema saved for this MLflow ({mlflow_seed.schema_file().name}): python -m "
            "certstudy.study.records.mlflow_seed --write saves it"
        )
    migrated, seeded = tmp_path / "migrated.db", tmp_path / "seeded.db"
    MlflowClient(f"sqlite:///{migrated}").search_experiments()  # MLflow migrates a new store itself
    assert mlflow_seed.seed(f"sqlite:///{seeded}")
    MlflowClient(f"sqlite:///{seeded}").search_experiments()  # opening it adds the Default experiment
    assert _contents(seeded) == _contents(migrated)


def test_a_seeded_store_takes_runs_and_passes_mlflows_schema_check(tmp_path: Path) -> None:
    if not mlflow_seed.schema_file().exists():
        pytest.skip("no schema saved for this MLflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path / "artifacts")  # seeds, then MLflow opens it (and checks its revision)
    experiment = tracker.experiment_id("seeded")
    run = tracker.client.create_run(experiment, run_name="r")
    tracker.log_metrics(run.info.run_id, {"train/loss": 0.5}, step=3)
    again = MlflowClient(uri)
    history = again.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(3, 0.5)]
    assert [e.name for e in again.search_experiments()] == ["seeded", "Default"]
    assert not list(tmp_path.glob(".mlflow.db.seed-*"))  # the file written aside is gone


def test_only_a_new_plain_sqlite_store_of_this_mlflow_is_seeded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"")
    assert not mlflow_seed.seed(f"sqlite:///{existing}") and existing.read_bytes() == b""
    assert not mlflow_seed.seed("http://127.0.0.1:5000")
    assert not mlflow_seed.seed(f"sqlite:///{tmp_path / 'opts.db'}?timeout=5")
    assert not mlflow_seed.seed(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    monkeypatch.setattr(mlflow_seed, "SCHEMA_DIR", tmp_path / "no-schemas")  # another MLflow release
    assert not mlflow_seed.seed(f"sqlite:///{tmp_path / 'other.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.db"]
