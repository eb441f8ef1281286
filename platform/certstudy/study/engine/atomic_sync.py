"""Ray Tune's experiment state reaches a local experiment folder whole, or not at all.

Ray Tune saves its experiment state (``experiment_state-*.json``, the searcher's files, the trial
folders' results) to a driver staging folder and then copies the folder to the experiment folder,
file by file, over the previous versions (``pyarrow.fs.copy_files``). A copy that fails halfway
(a full disk) leaves a truncated ``experiment_state-*.json``, and the study can no longer be
resumed: the previous version is gone and the new one does not parse. For a local or
shared-filesystem experiment folder, certstudy has Ray's background syncer copy each file to
``tmp-<name>`` beside its destination and rename it into place: a failed copy leaves the
previous version, exactly what a driver killed at that moment leaves, which ``resume`` handles.
The trial folders are copied before the experiment state at the folder's root, so that a state on
disk never points past results (``result.json``) that did not reach the disk with it: ``resume``
back-fills MLflow from those results.

Ray Tune also deletes a trial's older checkpoints (``CheckpointConfig(num_to_keep)``) the moment a
newer one registers, while the experiment state on disk, synced every few seconds, may still name
one of them: a driver killed then left a state whose trial could not be restored ("Could not recover
from checkpoint as it does not exist on storage anymore"). For a local experiment folder the
deletion is deferred until a state saved after it has reached the folder: each upload is stamped when
it is launched (right after Ray saves the state), and when it completes it deletes the checkpoints
whose deletion was asked before that stamp.

While a study runs (``installed``), ``ray_compat.experiment_sync`` puts these functions in place of
Ray's upload builder and checkpoint deletion. Remote storage (``s3://``) keeps Ray's own copy and
deletion: an object store writes each object whole.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow.fs

from certstudy.study.engine.ray_compat import experiment_sync, ray_experiment_sync

TMP_PREFIX = "tmp-"  # the state digests (study/records/state_digests.py) skip files named so

_ray_sync_up_command, _ray_delete = ray_experiment_sync()


def _excluded(relative: Path, exclude: list[str]) -> bool:
    """Ray's exclude rule: a pattern matches the file's relative path or one of its folders' ("a/")."""
    candidates = [relative.as_posix()] + [p.as_posix() + "/" for p in relative.parents if p != Path(".")]
    return any(fnmatch.fnmatch(c, pattern) for c in candidates for pattern in exclude)


def copy_atomically(source: Path, destination: Path) -> None:
    """``source`` to ``destination`` through a temporary file renamed into place; on failure the
    temporary file is removed and ``destination`` is as it was."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(TMP_PREFIX + destination.name)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def upload_atomically(local_path: str, fs: Any, fs_path: str, exclude: list[str] | None = None) -> None:
    """Ray's ``_upload_to_fs_path`` for a local destination, each file renamed into place."""
    source, destination = Path(local_path), Path(fs_path)
    if source.is_file():
        copy_atomically(source, destination)
        return
    destination.mkdir(parents=True, exist_ok=True)
    files = [Path(folder, name).relative_to(source) for folder, _, names in os.walk(source) for name in names]
    files = [f for f in files if not exclude or not _excluded(f, exclude)]
    # The trial folders (their result.json) before the experiment state that points past them: a copy
    # cut short between the two then leaves results ahead of the state (resume back-fills or skips
    # them), never a state ahead of results it no longer has.
    for relative in sorted(files, key=lambda f: len(f.parts) == 1):
        copy_atomically(source / relative, destination / relative)


class DeferredDeletions:
    """One study's checkpoint deletions, each waiting for a state upload launched after it was asked."""

    def __init__(self) -> None:
        self.deferred: list[tuple[float, Any, str]] = []  # (asked at, filesystem, path)
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Ray keeps the last upload command with its syncer and pickles it in the experiment state;
        a copy there has nothing to delete."""
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def delete_later(self, fs: Any, fs_path: str) -> None:
        """Ray's checkpoint deletion, deferred for a local folder until a later state has been uploaded."""
        if not isinstance(fs, pyarrow.fs.LocalFileSystem):
            _ray_delete(fs=fs, fs_path=fs_path)
            return
        with self.lock:
            self.deferred.append((time.monotonic(), fs, fs_path))

    def delete_asked_before(self, launched: float) -> None:
        """Deletes the checkpoints whose deletion was asked before ``launched``."""
        with self.lock:
            due = [d for d in self.deferred if d[0] < launched]
            self.deferred[:] = [d for d in self.deferred if d[0] >= launched]
        for _, fs, path in due:
            try:
                _ray_delete(fs=fs, fs_path=path)
            except FileNotFoundError:
                pass  # already gone (a resumed study asks again for what an earlier driver deleted)

    def upload_state(self, local_path: str, fs: Any, fs_path: str, exclude: list[str] | None, launched: float) -> None:
        """The experiment state's upload, then the deletions it has made safe."""
        upload_atomically(local_path, fs, fs_path, exclude)
        self.delete_asked_before(launched)

    def sync_up_command(
        self, syncer: Any, local_path: str, uri: str, exclude: list | None = None
    ) -> tuple[Callable[..., None], dict[str, Any]]:
        """What Ray's syncer runs to upload ``local_path`` to ``uri``: for a local folder, this
        module's upload (stamped now, right after Ray saved the state); else Ray's own."""
        if isinstance(syncer.storage_filesystem, pyarrow.fs.LocalFileSystem):
            args = {"local_path": local_path, "fs": None, "fs_path": uri, "exclude": exclude}
            return self.upload_state, {**args, "launched": time.monotonic()}
        return _ray_sync_up_command(syncer, local_path, uri, exclude)


def installed() -> AbstractContextManager[None]:
    """The block in which this process's Ray Tune syncers copy atomically and defer checkpoint
    deletion; Ray's own functions are back after it."""
    deletions = DeferredDeletions()

    def sync_up_command(syncer: Any, local_path: str, uri: str, exclude: list | None = None) -> Any:
        return deletions.sync_up_command(syncer, local_path, uri, exclude)

    return experiment_sync(sync_up_command, deletions.delete_later)
