"""Hostile files and addresses, round two (items 6, 8, 9): a study file with a NUL byte, stores a
command must not create, store URIs that cannot keep records, a tracking server that accepts and
never answers, values long enough to flood a terminal. Each is one line and exit 2 (1 for a store
that stopped answering), before anything is created. Real files, real sockets, real sqlite."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from certstudy.cli import main
from conftest import tiny_study


def _one_line(capsys: pytest.CaptureFixture[str], *needles: str, limit: int = 420) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and len(err) <= limit, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("text", ["name: a\0b\n", 'name: ok\nx: "\x00"\n', "name: ok\x07\n", "\x1b[2Jname: ok\n"])
def test_control_characters_in_a_study_file(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    _one_line(capsys, str(path), "control character")


def _crafted_study(work: Path, name: str, stores: dict[str, str]) -> None:
    """A study folder as ``launch`` leaves it, with ``stores.json`` naming ``stores``."""
    folder = work / name
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(tiny_study(name)))
    (folder / "stores.json").write_text(json.dumps(stores))


@pytest.mark.parametrize("command", ["status", "dashboard", "resume", "export"])
def test_reading_a_study_never_creates_the_stores_its_record_names(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    new_optuna, new_mlflow = tmp_path / "new-optuna.db", tmp_path / "new-mlflow.db"
    _crafted_study(
        work,
        "crafted",
        {"tracking_uri": f"sqlite+pysqlite:///{new_mlflow}", "optuna_storage": f"sqlite+pysqlite:///{new_optuna}"},
    )
    assert main([command, "crafted", "--workdir", str(work)]) in (1, 2)
    _one_line(capsys, "no ")
    assert not new_optuna.exists() and not new_mlflow.exists()
    assert not (work / "mlflow.db").exists() and not (work / "crafted" / "optuna.db").exists()


@pytest.mark.parametrize("command", ["status", "export"])
def test_an_in_memory_store_in_a_record_is_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    _crafted_study(work, "inmem", {"tracking_uri": "sqlite://", "optuna_storage": "sqlite:///:memory:"})
    assert main([command, "inmem", "--workdir", str(work)]) in (1, 2)
    _one_line(capsys, "in-memory")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("postgresql://certstudy@127.0.0.1:{port}/mlflow", "does not answer"),
        ("mysql://certstudy@127.0.0.1:{port}/mlflow", "mysql"),
        ("mssql://certstudy@127.0.0.1:{port}/mlflow", "mssql"),
        ("databricks://profile", "unknown scheme"),
        ("sqlite:////etc/passwd", "not a sqlite database"),
        ("sqlite://", "in-memory"),
        ("sqlite+pysqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("http://127.0.0.1:{port}", "unreachable"),
    ],
)
def test_a_tracking_uri_that_cannot_keep_records_is_refused_before_anything_starts(
    uri: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("stores")))
    work = tmp_path / "work"
    started = time.monotonic()
    assert main(["launch", str(path), "--workdir", str(work), "--tracking-uri", uri.format(port=_closed_port())]) == 2
    assert time.monotonic() - started < 30
    _one_line(capsys, "--tracking-uri", needle)
    assert not work.exists()


def test_export_against_a_server_that_never_answers_is_one_line_within_30_s(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        work = tmp_path / "work"
        _crafted_study(work, "hung", {"tracking_uri": uri, "optuna_storage": f"sqlite:///{work / 'hung' / 'o.db'}"})
        for command in (["export", "hung", "--tracking-uri", uri], ["export", "hung"]):
            started = time.monotonic()
            assert main([*command, "--workdir", str(work)]) in (1, 2)
            assert time.monotonic() - started < 30
            _one_line(capsys, uri)


def test_long_values_are_elided_from_the_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tiny_study("long")
    study["k" * 100_000] = 1
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["validate", str(path)]) == 2
    _one_line(capsys, str(path), "unknown key")
    assert main(["validate", str(path), "--set", "x" * 100_000 + "=1"]) == 2
    _one_line(capsys)
    assert main(["status", "s" * 100_000]) == 2
    _one_line(capsys, "study name")


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("training.batch_size", 10**12, "training.batch_size"),
        ("evaluation.batch_size", 10**12, "evaluation.batch_size"),
    ],
)
def test_absurd_sizes_are_refused(
    key: str, value: int, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("absurd")))
    assert main(["validate", str(path), "--set", f"{key}={value}"]) == 2
    _one_line(capsys, field)
