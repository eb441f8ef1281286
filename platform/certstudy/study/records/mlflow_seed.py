"""A new sqlite tracking store built from MLflow's finished schema instead of its migrations.

MLflow creates a new sqlite store by loading and applying every alembic migration since its first
schema (about 135 scripts): 2.2 s of a 2-core machine, on the path of every study launched into a
new work directory. For one MLflow release the schema those migrations end in is fixed, so
``mlflow_schema/mlflow-<version>.sql`` keeps it (tables, indexes, the alembic revision and the
rows the migrations insert; not the ``Default`` experiment, whose artifact location depends on
where the store is opened: MLflow adds it on first open, as it does after migrating). The file is
written by ``python -m certstudy.study.records.mlflow_seed --write`` from a store MLflow created itself.

A store is seeded only when it does not exist and the installed MLflow is exactly that version;
otherwise MLflow creates it as always. The seeded file appears whole or not at all (written
aside, then hard-linked into place, which fails if another process created the store first).
MLflow still checks the store's revision against its own head on every open.
``tests/test_mlflow_seed.py`` compares a seeded store with one MLflow migrated, table by table.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from contextlib import closing
from importlib.metadata import version
from pathlib import Path

from certstudy.study.spec.store_urls import sqlite_path

SCHEMA_DIR = Path(__file__).with_name("mlflow_schema")
_SKIPPED_ROWS = ('INSERT INTO "experiments"',)  # the Default experiment: MLflow adds it where the store is opened


def schema_file(mlflow_version: str | None = None) -> Path:
    return SCHEMA_DIR / f"mlflow-{mlflow_version or version('mlflow')}.sql"


def seed(uri: str) -> bool:
    """Creates the sqlite store at ``uri`` from the saved schema; False (nothing written) when the
    store exists, ``uri`` is not a plain sqlite file, or no schema is saved for this MLflow."""
    path = sqlite_path(uri) if "?" not in uri else None  # a URI with options is left to MLflow
    schema = schema_file()
    if path is None or path.exists() or not schema.exists() or not path.parent.is_dir():
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.seed-", dir=path.parent)
    os.close(fd)
    try:
        with closing(sqlite3.connect(tmp)) as db:
            db.executescript(schema.read_text())  # the saved script commits its own transaction
        try:
            os.link(tmp, path)  # atomic, and never over a store another process created meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def dump(store: Path) -> str:
    """The schema and migration-inserted rows of an MLflow-created sqlite store, as SQL."""
    with closing(sqlite3.connect(store)) as db:
        lines = [line for line in db.iterdump() if not line.startswith(_SKIPPED_ROWS)]
    return "\n".join(lines) + "\n"


def write_schema() -> Path:
    """Has the installed MLflow create an empty store and saves its schema for this version."""
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "mlflow.db"
        MlflowClient(f"sqlite:///{store}").search_experiments()
        text = dump(store)
    target = schema_file()
    target.parent.mkdir(exist_ok=True)
    target.write_text(text)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="save the installed MLflow's schema")
    args = parser.parse_args()
    if args.write:
        print(f"wrote {write_schema()}")
    else:
        path = schema_file()
        print(f"{path}: {'present' if path.exists() else 'missing (run with --write)'}")


if __name__ == "__main__":
    main()
