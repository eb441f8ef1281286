"""study/engine/atomic_sync.py: the experiment state reaches its folder through renames, with Ray's exclude rule."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
from ray.train._internal.storage import _ExcludingLocalFilesystem, _FilesystemSyncer

from certstudy.study.engine import atomic_sync


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upload_copies_a_folder_through_renames_and_skips_what_ray_would_exclude(tmp_path: Path) -> None:
    src, dst = tmp_path / "staging", tmp_path / "experiment"
    for name in ("experiment_state-x.json", "trial_0/result.json", "trial_0/checkpoint_000001/model.pt", "a.pkl"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(name.encode())
    (dst).mkdir()
    (dst / "a.pkl").write_bytes(b"old")
    exclude = ["*/checkpoint_*"]
    atomic_sync.upload_atomically(str(src), None, str(dst), exclude)
    copied = _tree(dst)
    ray_view = _ExcludingLocalFilesystem(root_path=src, exclude=exclude)
    kept = {n for n in _tree(src) if not ray_view._should_exclude(str(src / n))}
    assert set(copied) == kept == {"experiment_state-x.json", "trial_0/result.json", "a.pkl"}
    assert copied["a.pkl"] == b"a.pkl"
    assert not list(dst.rglob(atomic_sync.TMP_PREFIX + "*"))


def test_a_failed_copy_leaves_the_previous_version_and_no_temporary_file(tmp_path: Path) -> None:
    dst = tmp_path / "state.json"
    dst.write_text("previous")
    missing = tmp_path / "gone.json"  # the copy fails (the source vanished), as a full disk makes it fail
    try:
        atomic_sync.copy_atomically(missing, dst)
    except OSError:
        pass
    assert dst.read_text() == "previous"
    assert not list(tmp_path.glob(atomic_sync.TMP_PREFIX + "*"))


def _ours(fn: object) -> bool:
    return getattr(fn, "__func__", None) is atomic_sync.DeferredDeletions.upload_state


def test_install_routes_local_storage_through_the_atomic_upload_and_leaves_remote_to_ray(tmp_path: Path) -> None:
    with atomic_sync.installed():
        local = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(), sync_period=1, sync_timeout=10)
        fn, kwargs = local._sync_up_command(str(tmp_path), str(tmp_path / "out"))
        assert _ours(fn)
        fn(**kwargs)
        remote = _FilesystemSyncer(
            storage_filesystem=pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem()),
            sync_period=1,
            sync_timeout=10,
        )
        fn, _ = remote._sync_up_command(str(tmp_path), "out")
        assert not _ours(fn)


def test_the_trial_folders_reach_the_experiment_folder_before_its_state(tmp_path: Path, monkeypatch) -> None:
    src, dst = tmp_path / "staging", tmp_path / "experiment"
    for name in ("experiment_state-x.json", "trial_1/result.json", "searcher-state-x.pkl", "trial_0/result.json"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    order: list[str] = []
    real = atomic_sync.copy_atomically
    monkeypatch.setattr(
        atomic_sync, "copy_atomically", lambda s, d: (order.append(d.relative_to(dst).as_posix()), real(s, d))
    )
    atomic_sync.upload_atomically(str(src), None, str(dst))
    assert sorted(order[:2]) == ["trial_0/result.json", "trial_1/result.json"]
    assert sorted(order[2:]) == ["experiment_state-x.json", "searcher-state-x.pkl"]


def test_a_checkpoint_is_deleted_only_after_a_state_saved_later_has_been_uploaded(tmp_path: Path) -> None:
    with atomic_sync.installed():
        from ray.train._internal import checkpoint_manager

        old, new = tmp_path / "trial_0" / "checkpoint_000001", tmp_path / "trial_0" / "checkpoint_000009"
        for folder in (old, new):
            folder.mkdir(parents=True)
            (folder / "state.pt").write_bytes(b"x")
        staging, experiment = tmp_path / "staging", tmp_path / "experiment"
        staging.mkdir()
        (staging / "experiment_state-x.json").write_text("{}")
        syncer = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(), sync_period=1, sync_timeout=10)
        fn, kwargs = syncer._sync_up_command(str(staging), str(experiment))  # launched before the deletion
        checkpoint_manager._delete_fs_path(fs=pyarrow.fs.LocalFileSystem(), fs_path=str(old))
        fn(**kwargs)
        assert old.is_dir()  # the uploaded state may still name it
        fn, kwargs = syncer._sync_up_command(str(staging), str(experiment))  # launched after: its state does not
        fn(**kwargs)
        assert not old.exists() and new.is_dir()


def test_the_upload_command_ray_keeps_with_its_syncer_pickles(tmp_path: Path) -> None:
    """Ray keeps the last upload command on its syncer and pickles it with the experiment state."""
    from ray import cloudpickle

    with atomic_sync.installed():
        syncer = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(), sync_period=1, sync_timeout=10)
        command = syncer._sync_up_command(str(tmp_path), str(tmp_path / "out"))
        fn, kwargs = cloudpickle.loads(cloudpickle.dumps(command))
        assert _ours(fn) and kwargs["fs_path"] == str(tmp_path / "out")
