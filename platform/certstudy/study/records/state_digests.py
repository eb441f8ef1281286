"""Keyed digests (HMAC-SHA256) of the Ray Tune state a resume unpickles, recorded in the Optuna storage.

``certstudy resume`` restores the Ray Tune experiment, and restoring unpickles files of its folder
(``tuner.pkl``, ``searcher-state-*.pkl``, ``search_gen_state-*.json``, which is a cloudpickle
despite its name, and the trial objects inside ``experiment_state-*.json``): whoever can write
that folder could run code on the next resume. So every version of every file in the
experiment folder's root is digested *before* it can reach the folder, and a resume refuses, in
one line, a file whose digest was never recorded.

The digests are keyed with the user's state key (``study/records/state_key.py``), which lives outside the
work directory: whoever can rewrite the study folder *and* its Optuna storage still cannot forge a
digest, so write access to the work directory alone never runs code on resume. Each digest also
binds the file's name, so one recorded file cannot stand in for another.

When versions are recorded: Ray Tune writes its experiment state to a driver staging folder
(experiment state, then the search algorithm's files, then it asks each callback for its state)
and only afterwards copies the folder to the experiment folder in the background. certstudy's
tracking callback records the staging folder's digests when it is asked for its state, so each
version is recorded before its copy starts, and a driver killed at any moment leaves only
recorded versions behind. ``tuner.pkl`` is written once per launch or resume, straight to the
experiment folder, and recorded right after. The last ``HISTORY`` digests of each file are kept
(a copy may lag behind the newest version).

Only a local or shared-filesystem experiment folder is checked; with ``s3://`` storage the bucket
must be as trusted as the code (README, Security).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import optuna

from certstudy.errors import CertstudyError
from certstudy.study.records.names import RAY_STATE_DIGESTS_ATTR
from certstudy.study.records.state_key import state_key

HISTORY = 16
NOT_STATE = frozenset({".validate_storage_marker"})


def keyed_digest(path: Path, key: bytes) -> str:
    """HMAC-SHA256 under ``key`` of the file's name, a NUL, and its bytes."""
    digest = hmac.new(key, path.name.encode() + b"\0", hashlib.sha256)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_files(folder: Path) -> list[Path]:
    """The experiment folder's own files (trial folders hold only JSON, CSV and weights-only checkpoints)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name not in NOT_STATE and not p.name.startswith("tmp-")
    )


def record(study: optuna.Study, folder: Path) -> None:
    """Adds the digests of ``folder``'s state files to those recorded in ``study`` (one write, only
    when something is new)."""
    key = state_key()
    recorded: dict[str, list[str]] = {k: list(v) for k, v in study.user_attrs.get(RAY_STATE_DIGESTS_ATTR, {}).items()}
    changed = False
    for path in state_files(folder):
        seen = recorded.setdefault(path.name, [])
        value = keyed_digest(path, key)
        if value not in seen:
            seen.append(value)
            del seen[:-HISTORY]
            changed = True
    if changed:
        study.set_user_attr(RAY_STATE_DIGESTS_ATTR, recorded)


def verify(study: optuna.Study, folder: str) -> None:
    """Raises ``CertstudyError`` naming the first state file of ``folder`` whose digest certstudy
    never recorded; remote storage (``scheme://``) is not checked."""
    if "://" in folder:
        return
    key = state_key()
    recorded = study.user_attrs.get(RAY_STATE_DIGESTS_ATTR)
    if not isinstance(recorded, dict):
        raise CertstudyError(
            f"{folder}: no digests of its Ray state are recorded (launched by an older certstudy); "
            f"refusing to unpickle it"
        )
    for path in state_files(Path(folder)):
        seen = recorded.get(path.name)
        value = keyed_digest(path, key)
        if not isinstance(seen, list) or not any(isinstance(d, str) and hmac.compare_digest(d, value) for d in seen):
            raise CertstudyError(
                f"{path}: does not match any version certstudy wrote under this user's state key (HMAC differs); "
                f"the Ray state was changed outside certstudy, and resuming would unpickle it: refusing"
            )
