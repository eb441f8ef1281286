"""Checks before a study's first trial, each failing with one line that says what to change.

- resources: a trial's request (``resources.cpu``, ``resources.gpu``, fractions included) must fit
  on at least one alive node, or the trials would wait PENDING forever (ray#10756, ray#13905). On
  an autoscaling cluster whose GPU workers start at zero, ``--autoscaling`` makes this a warning.
- storage: Ray Tune's storage (``--storage``) must be one place that every node can write and see
  the driver's files in (a shared filesystem or object storage); Ray has not synced trial folders
  to the head since 2.7, and a node-local path fails later with a less clear error (ray#37177).
- tracking: the store must answer from the driver (``study/records/store_probe.py``; the driver writes
  every MLflow record, trials never talk to MLflow).
- Optuna storage: a database named by ``--optuna-storage`` must answer, and must not already hold a
  study of the same name (the default sqlite file is new with the study's folder; a shared database
  outlives it, and an earlier launch's trials would be taken for this one's).
"""

from __future__ import annotations

import uuid
from typing import Any

import optuna
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from certstudy.errors import CertstudyError
from certstudy.study.engine.optuna_bridge import open_storage


class PreflightError(CertstudyError):
    pass


def alive_nodes() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _describe(node: dict[str, Any]) -> str:
    r = node.get("Resources", {})
    return f"{node.get('NodeManagerAddress', '?')} ({r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU)"


def check_resources(
    cpu: float, gpu: float, extra: dict[str, float] | None = None, nodes: list[dict[str, Any]] | None = None
) -> None:
    """Raises unless some alive node has at least the trial's request of every resource."""
    nodes = alive_nodes() if nodes is None else nodes
    want = {"CPU": cpu, "GPU": gpu, **(extra or {})}
    for node in nodes:
        have = node.get("Resources", {})
        if all(have.get(k, 0.0) >= v for k, v in want.items() if v > 0):
            return
    asked = ", ".join(f"{k.lower()}={v:g}" for k, v in want.items() if v > 0)
    raise PreflightError(
        f"resources: a trial asks for {asked} and no node of the Ray cluster has that; nodes: "
        f"{'; '.join(_describe(n) for n in nodes) or 'none'}"
    )


@ray.remote(num_cpus=0)
def _probe_storage(storage: str, marker: str, node_tag: str) -> str | None:
    """On one node: the driver's marker must be visible and a file of our own writable."""
    import pyarrow.fs

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        if fs.get_file_info(f"{root}/{marker}").type == pyarrow.fs.FileType.NotFound:
            return "the driver's test file is not visible there (a node-local path?)"
        with fs.open_output_stream(f"{root}/{marker}.{node_tag}") as out:
            out.write(b"ok")
        fs.delete_file(f"{root}/{marker}.{node_tag}")
    except Exception as exc:  # noqa: BLE001 - reported as the node's problem
        return f"{type(exc).__name__}: {exc}"
    return None


def _as_uri(storage: str) -> str:
    return storage if "://" in storage else f"file://{storage}"


def check_storage(storage: str, nodes: list[dict[str, Any]] | None = None, timeout_s: float = 60.0) -> None:
    """Writes a marker from the driver and checks it from every alive node."""
    import pyarrow.fs

    uri = _as_uri(storage)
    fs, root = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(root, recursive=True)
    marker = f".certstudy-preflight-{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(f"{root}/{marker}") as out:
        out.write(b"ok")
    try:
        nodes = alive_nodes() if nodes is None else nodes
        probes = {
            _describe(n): _probe_storage.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(uri, marker, n["NodeID"][:12])
            for n in nodes
        }
        for where, ref in probes.items():
            try:
                problem = ray.get(ref, timeout=timeout_s)
            except ray.exceptions.GetTimeoutError:
                problem = f"no answer within {timeout_s:.0f} s"
            if problem:
                raise PreflightError(
                    f"storage {storage} is not shared with node {where}: {problem}; give --storage a shared "
                    f"filesystem path or s3://... that every node can reach"
                )
    finally:
        fs.delete_file(f"{root}/{marker}")


def check_optuna_storage(url: str, study: str, overwrite: bool) -> None:
    """``url`` answers and holds no study named ``study``; with ``overwrite`` an earlier one is
    deleted (as ``--overwrite`` deletes the earlier study folder)."""
    import sqlalchemy.exc

    try:
        storage = open_storage(url)
    except (ImportError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise PreflightError(f"optuna storage {url}: {_first_line(exc)}") from None
    try:
        names = {s.study_name for s in storage.get_all_studies()}
        if study in names:
            if not overwrite:
                raise PreflightError(
                    f"optuna storage {url} already holds a study named {study!r} (an earlier launch, perhaps from "
                    f"another work directory): resume it with certstudy resume {study} where it was launched, or "
                    f"launch with --overwrite to delete it"
                )
            optuna.delete_study(study_name=study, storage=storage)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise PreflightError(f"optuna storage {url}: {_first_line(exc)}") from None
    finally:
        storage.engine.dispose()


def _first_line(exc: BaseException) -> str:
    """A database driver's error as one line (SQLAlchemy appends its background URL on new lines)."""
    cause = exc.__cause__ or exc
    return " ".join(str(cause).strip().splitlines()[:1]) or type(cause).__name__
