"""Nothing written outside the work directory from a study file, and read-only commands that never
write (issue: hardening, items 1 and 9). Real files, a real tmpfs remounted read-only, real sqlite."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from certstudy.cli import main
from conftest import tiny_study


def _launch_refused(tmp_path: Path, study: dict, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    work = tmp_path / "work"
    assert main(["launch", str(path), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err, err
    for needle in needles:
        assert needle in err, err
    assert not work.exists()
    return err


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped", "a/b", ".hidden", ".."])
def test_an_experiment_name_follows_the_study_name_rule(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _launch_refused(tmp_path, tiny_study("exp", tracking={"experiment": name}), capsys, "tracking.experiment")


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("sqlite:////{outside}/elsewhere.db", "must be inside the work directory"),
        ("sqlite:///../elsewhere.db", "must be inside the work directory"),
        ("sqlite:///", "must be inside the work directory"),
        ("postgresql://u@localhost/db", "give a postgresql store with --tracking-uri"),
        ("mysql://u@localhost/db", "give a mysql store with --tracking-uri"),
    ],
)
def test_a_study_files_tracking_store_stays_in_the_work_directory(
    uri: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    study = tiny_study("uri", tracking={"tracking_uri": uri.format(outside=str(outside).lstrip("/"))})
    _launch_refused(tmp_path, study, capsys, "tracking.tracking_uri", needle)
    assert list(outside.iterdir()) == [] and not (tmp_path / "elsewhere.db").exists()


def test_a_relative_sqlite_store_lands_inside_the_work_directory(tmp_path: Path) -> None:
    from certstudy.study.spec.loading import validate_spec
    from certstudy.workdir import Workdir

    spec = validate_spec(tiny_study("rel", tracking={"tracking_uri": "sqlite:///stores/m.db"}), "s.yaml")
    work = Workdir.resolve(tmp_path / "work")
    assert spec.tracking_uri(work) == f"sqlite:///{work.root / 'stores' / 'm.db'}"
    inside = f"sqlite:///{work.root / 'stores' / 'abs.db'}"  # an absolute path inside is fine too
    spec = validate_spec(tiny_study("abs", tracking={"tracking_uri": inside}), "s.yaml")
    assert spec.tracking_uri(work) == inside
    # the command line is the user's own choice: taken as given
    assert spec.tracking_uri(work, "postgresql://u@db/x") == "postgresql://u@db/x"


def test_a_command_line_tracking_uri_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("cli")))
    args = ["launch", str(path), "--workdir", str(tmp_path / "w"), "--tracking-uri", "gopher://x/y"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "--tracking-uri" in err and "unknown scheme 'gopher'" in err and "\n" not in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("layout", ["/etc/passwd", "../../secret", "dashboards/default.yaml", "default.yaml"])
def test_a_study_file_names_a_layout_never_a_path(
    layout: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _launch_refused(tmp_path, tiny_study("lay", dashboard=layout), capsys, "dashboard")
    assert "root:" not in err  # /etc/passwd's content is never read, let alone echoed


def test_the_work_directorys_own_layouts_are_found_by_name_and_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    (work / "dashboards").mkdir(parents=True)
    (work / "dashboards" / "mine.yaml").write_text(yaml.safe_dump({"panels": [{"type": "top_table", "top": 5}]}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("mine", dashboard="mine")))
    assert main(["validate", str(path), "--workdir", str(work)]) == 0
    # without that work directory the name is unknown
    assert main(["validate", str(path), "--workdir", str(tmp_path / "other")]) == 2
    assert "no such layout" in capsys.readouterr().err
    # a layout whose content is a secret-looking scalar: refused, the content not printed
    (work / "dashboards" / "mine.yaml").write_text("TOP-SECRET-TOKEN-0123456789\n")
    assert main(["validate", str(path), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "TOP-SECRET" not in err and "got a string" in err and "dashboard" in err, err


# --- read-only commands -------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished 2-trial study, launched by a separate ``certstudy`` process (so this one holds no
    file of it open) on a tmpfs this fixture mounts, so that a test can remount it read-only; on a
    plain folder where mounting is not permitted."""
    root = tmp_path_factory.mktemp("ro")
    mount = root / "mnt"
    mount.mkdir()
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount)], capture_output=True).returncode
        == 0
    )
    study = tiny_study("readonly", search={"num_trials": 2, "max_concurrent": 2, "seed": 1})
    study["training"]["epochs"] = 2
    try:
        (mount / "readonly.yaml").write_text(yaml.safe_dump(study))
        _certstudy("launch", str(mount / "readonly.yaml"), "--workdir", str(mount / "work"))
        yield mount
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def _certstudy(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    import sys

    done = subprocess.run([sys.executable, "-m", "certstudy.cli", *argv], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_status_works_on_a_read_only_mount(finished: Path) -> None:
    """First of the module's tests on ``finished``: no process has its stores open yet."""
    remount = subprocess.run(["mount", "-o", "remount,ro", str(finished)], capture_output=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount the tmpfs read-only here ({remount.stderr.decode().strip()[:80]})")
    try:
        out = _certstudy("status", "readonly", "--workdir", str(finished / "work")).stdout
        assert "completed" in out, out
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(finished)], check=True)


def test_status_writes_nothing_in_the_work_directory_or_the_current_one(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = finished / "work"
    before = _snapshot(work)
    monkeypatch.chdir(tmp_path)
    assert main(["status", "readonly", "--workdir", str(work)]) == 0
    assert "readonly" in capsys.readouterr().out
    assert _snapshot(work) == before
    assert list(tmp_path.iterdir()) == []  # no ./mlruns, no stray database
    assert main(["validate", str(finished / "readonly.yaml"), "--workdir", str(work)]) == 0
    assert _snapshot(work) == before


@pytest.mark.parametrize(
    ("store", "damage", "needle"),
    [
        ("mlflow.db", "remove", "no MLflow tracking store there"),
        ("mlflow.db", "empty", "the MLflow tracking store is empty"),
        ("readonly/optuna.db", "remove", "no Optuna storage there"),
        ("readonly/optuna.db", "empty", "the Optuna storage is empty"),
        ("readonly/optuna.db", "garbage", "is not a sqlite database"),
        ("mlflow.db", "truncate", "the MLflow tracking store is corrupt"),
    ],
)
def test_a_missing_empty_or_corrupt_store_is_one_line_naming_the_file(
    store: str, damage: str, needle: str, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = finished / "work"
    target = work / store
    intact = target.read_bytes()
    if damage == "remove":
        target.unlink()
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "garbage":
        target.write_bytes(os.urandom(8192))
    else:  # keep the header, lose the pages the schema points at
        target.write_bytes(intact[:4096] + b"\0" * (len(intact) - 4096))
    try:
        before = _snapshot(work)
        commands = [["status", "readonly"]]
        if store == "mlflow.db":  # export reads MLflow only
            commands.append(["export", "readonly", "-o", str(tmp_path / "out.yaml")])
        for argv in commands:
            code = main([*argv, "--workdir", str(work)])
            err = capsys.readouterr().err.strip()
            assert code == 1 and "\n" not in err and str(target) in err and needle in err, (argv, err)
            assert _snapshot(work) == before  # the damaged file is neither created nor "repaired"
    finally:
        target.write_bytes(intact)
