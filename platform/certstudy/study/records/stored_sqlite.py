"""A launched study's sqlite stores read with Python's own ``sqlite3``, for ``certstudy status``.

Importing Optuna, MLflow and the study schema (whose registries import torch) takes about 5 s of
the 6.5 s ``status`` took; a researcher polling a running study pays that every time. When both
stores are sqlite files (the default), status reads the few rows it shows straight from them,
read-only (``mode=ro``: a reader never creates, migrates or locks a store for writing). Other
stores (PostgreSQL, an MLflow server) go through the libraries (``stored.StoredStudy``).

Only what status shows is read, from tables whose layout Optuna and MLflow keep across releases
(MLflow is pinned; ``tests/test_fast_reads.py`` checks both readers against the libraries' own
view of the same study): Optuna's ``studies``, ``trials``, ``trial_params``, ``trial_values``,
``trial_user_attributes`` and ``study_user_attributes``; MLflow's ``runs``, ``tags`` and
``latest_metrics``.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from certstudy.errors import CertstudyError
from certstudy.study.records.names import OPTUNA_TAG, PARENT_TAG, ROLE_TAG, SERIES_PROBE, STUDY_TAG
from certstudy.study.records.store_probe import check_store
from certstudy.study.spec.store_urls import SQLITE_HEADER, is_sqlite, sqlite_path

TUNER_STATE = "tuner.pkl"  # Ray Tune's: what ``Tuner.can_restore`` looks for


def can_resume(ray_experiment: str) -> bool:
    """Whether Ray Tune saved a state to restore the study from. A local folder is checked without
    importing Ray (a second of ``certstudy status``); remote storage asks Ray Tune."""
    if "://" not in ray_experiment:
        return (Path(ray_experiment) / TUNER_STATE).is_file()
    from ray.tune import Tuner

    return bool(Tuner.can_restore(ray_experiment))


def existing_store(uri: str, what: str) -> str:
    """``uri`` unchanged when it names an intact sqlite database, an MLflow server that answers
    ``/health``, or another database; else a ``CertstudyError`` naming the file or server (missing,
    empty, in memory, failing sqlite's ``quick_check``, not answering). A file is opened read-only,
    so the check itself writes nothing."""
    if uri.startswith(("http://", "https://")):  # a dead server is one line within seconds, not a hang
        check_store(uri, what)
        return uri
    if not is_sqlite(uri):
        return uri
    path = sqlite_path(uri)
    if path is None:
        raise CertstudyError(f"{uri}: the {what} is an in-memory sqlite database, which holds no study; name a file")
    if not path.is_file():
        raise CertstudyError(f"{path}: no {what} there (was the study launched in this work directory?)")
    with open(path, "rb") as fh:
        header = fh.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        state = "is empty" if not header else "is not a sqlite database"
        raise CertstudyError(f"{path}: the {what} {state} (corrupt, or not certstudy's)")
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise CertstudyError(f"{path}: the {what} is corrupt (sqlite: {' '.join(str(verdict).split())[:120]})")
    return uri


@dataclass
class TrialRecord:
    """One Optuna trial as status shows it (state by Optuna's name: COMPLETE, PRUNED, ...)."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str
    experiment_id: str
    artifact_uri: str


@dataclass(frozen=True)
class RunData:
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of each metric


@dataclass(frozen=True)
class StoredRun:
    """An MLflow run as status and export read it, shaped like MLflow's ``Run`` where they read one
    (``info.run_id``, ``info.status``, ``data.tags``, ``data.metrics``), plus the evaluated epochs
    recorded (last ``train/loss`` step + 1; 0 when none). No params: nothing here reads them."""

    info: RunInfo
    data: RunData
    epochs: int = 0

    @classmethod
    def of(cls, run: Any, epochs: int = 0) -> StoredRun:
        """From MLflow's own ``Run``."""
        i = run.info
        return cls(
            RunInfo(i.run_id, i.status, i.experiment_id, i.artifact_uri),
            RunData(dict(run.data.tags), dict(run.data.metrics)),
            epochs,
        )


@contextmanager
def _read_only(path: Path, what: str) -> Iterator[sqlite3.Connection]:
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=20)) as db:
            yield db
    except sqlite3.Error as exc:
        raise CertstudyError(f"{path}: the {what} could not be read (sqlite: {exc})") from None


def _external(value: float, distribution_json: str) -> Any:
    """Optuna's stored parameter value in the user's terms (a categorical's choice, an int)."""
    dist = json.loads(distribution_json)
    name, attrs = dist.get("name", ""), dist.get("attributes", {})
    if name == "CategoricalDistribution":
        return attrs["choices"][int(value)]
    if name in ("IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"):
        return int(value)
    return float(value)


_INFINITE = {"INF_POS": math.inf, "INF_NEG": -math.inf}


def optuna_study(path: Path, study: str) -> tuple[dict[str, Any], list[TrialRecord]] | None:
    """The study's attributes and trials (by number), or None when no study of that name is there."""
    with _read_only(path, "Optuna storage") as db:
        row = db.execute("SELECT study_id FROM studies WHERE study_name = ?", (study,)).fetchone()
        if row is None:
            return None
        study_id = row[0]
        attrs = {
            k: json.loads(v)
            for k, v in db.execute("SELECT key, value_json FROM study_user_attributes WHERE study_id = ?", (study_id,))
        }
        trials: dict[int, TrialRecord] = {}
        for trial_id, number, state in db.execute(
            "SELECT trial_id, number, state FROM trials WHERE study_id = ? ORDER BY number", (study_id,)
        ):
            trials[trial_id] = TrialRecord(int(number), str(state), {}, None)
        for trial_id, name, value, dist in db.execute(
            "SELECT p.trial_id, p.param_name, p.param_value, p.distribution_json FROM trial_params p "
            "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = ? ORDER BY p.param_id",
            (study_id,),
        ):
            trials[trial_id].params[name] = _external(value, dist)
        values: dict[int, dict[int, float]] = {}
        for trial_id, objective, value, kind in db.execute(
            "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v "
            "JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = ?",
            (study_id,),
        ):
            values.setdefault(trial_id, {})[int(objective)] = _INFINITE.get(kind, value)
        for trial_id, by_objective in values.items():
            trials[trial_id].values = [by_objective[k] for k in sorted(by_objective)]
        for trial_id, key, value in db.execute(
            "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
            "JOIN trials t ON t.trial_id = a.trial_id WHERE t.study_id = ?",
            (study_id,),
        ):
            trials[trial_id].user_attrs[key] = json.loads(value)
    return attrs, sorted(trials.values(), key=lambda t: t.number)


def _runs(db: sqlite3.Connection, where: str, args: tuple[Any, ...], order: str = "") -> list[StoredRun]:
    found = db.execute(
        "SELECT run_uuid, status, experiment_id, artifact_uri FROM runs "
        f"WHERE lifecycle_stage = 'active' AND {where} {order}",
        args,
    ).fetchall()
    if not found:
        return []
    ids = tuple(row[0] for row in found)
    marks = ",".join("?" * len(ids))
    tags: dict[str, dict[str, str]] = {run_id: {} for run_id in ids}
    metrics: dict[str, dict[str, float]] = {run_id: {} for run_id in ids}
    epochs: dict[str, int] = {}
    for run_id, key, value in db.execute(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({marks})", ids):
        tags[run_id][key] = value
    for run_id, key, value, step, is_nan in db.execute(
        f"SELECT run_uuid, key, value, step, is_nan FROM latest_metrics WHERE run_uuid IN ({marks})", ids
    ):
        metrics[run_id][key] = math.nan if is_nan else float(value)
        if key == SERIES_PROBE:
            epochs[run_id] = int(step) + 1
    return [
        StoredRun(
            RunInfo(run_id, status, str(exp), uri or ""), RunData(tags[run_id], metrics[run_id]), epochs.get(run_id, 0)
        )
        for run_id, status, exp, uri in found
    ]


def _children(db: sqlite3.Connection, parent_run_id: str) -> list[StoredRun]:
    return _runs(db, "run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)", (PARENT_TAG, parent_run_id))


def mlflow_runs(path: Path, parent_run_id: str) -> tuple[StoredRun | None, dict[int, StoredRun]]:
    """The parent run, and the child run of each Optuna trial number (where a trial has several,
    a run left by a lost driver beside the one that finished it, the finished one)."""
    with _read_only(path, "MLflow tracking store") as db:
        parents = _runs(db, "run_uuid = ?", (parent_run_id,))
        children = _children(db, parent_run_id)
    by_number: dict[int, StoredRun] = {}
    for run in children:
        number = run.data.tags.get(OPTUNA_TAG)
        if number not in (None, "None") and (int(number) not in by_number or run.info.status == "FINISHED"):
            by_number[int(number)] = run
    return (parents[0] if parents else None), by_number


def latest_study_runs(path: Path, experiment: str, study: str) -> tuple[StoredRun, list[StoredRun]] | None:
    """The study's latest parent run in ``experiment`` and all its child runs (as
    ``Tracker.latest_study_run`` and ``Tracker.child_runs`` find them), or None when there is none."""
    with _read_only(path, "MLflow tracking store") as db:
        row = db.execute(
            "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (experiment,)
        ).fetchone()
        if row is None:
            return None
        parents = _runs(
            db,
            "experiment_id = ? AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = 'study') "
            "AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)",
            (row[0], ROLE_TAG, STUDY_TAG, study),
            order="ORDER BY start_time DESC LIMIT 1",
        )
        if not parents:
            return None
        return parents[0], _children(db, parents[0].info.run_id)


def local_artifact(run: StoredRun, name: str) -> Path | None:
    """A run's artifact file when its artifacts are on this machine's filesystem, else None."""
    uri = run.info.artifact_uri
    if uri.startswith("file://"):
        root = Path(unquote(urlsplit(uri).path))
    elif uri.startswith("/"):
        root = Path(uri)
    else:
        return None
    path = root / name
    return path if path.is_file() else None
