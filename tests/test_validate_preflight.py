"""``validate`` and ``launch`` catch what a study could not run on (issue: watch and trust, item 3;
hostile inputs round two, item 9): resources this machine lacks, dataset files absent and not
obtainable, a tracking store that does not answer or holds nothing; each one line naming the field,
exit 2, before anything starts. ``--no-preflight`` writes such a study anyway. Real files, the real
machine's CPUs and GPUs, a real closed port."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import yaml

from certstudy.cli import main
from conftest import tiny_study

MNIST_RAW = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


def _mnist(name: str, **dataset_options: object) -> dict:
    return tiny_study(
        name,
        dataset={"name": "mnist", "options": {"train_subset": 256, "test_subset": 128, **dataset_options}},
        model={"name": "mlp", "params": {"width": 16, "depth": 1}},
    )


def _check(tmp_path: Path, study: dict, capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    work = tmp_path / "work"
    for command in ("validate", "launch"):
        assert main([command, str(path), "--workdir", str(work)]) == 2, command
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(path) in err and len(err) < 420, err
        for needle in needles:
            assert needle in err, err
        assert not work.exists()  # nothing started, nothing written
    assert main(["validate", "--no-preflight", str(path), "--workdir", str(work)]) == 0


def test_a_gpu_study_on_a_machine_without_that_many_gpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    study = tiny_study("gpus", resources={"cpu": 1, "gpu": gpus + 1})
    _check(tmp_path, study, capsys, "resources.gpu", f"this machine has {gpus} GPU(s)", "--no-preflight")


def test_more_cpus_than_this_machine_has(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpus = len(os.sched_getaffinity(0))
    _check(tmp_path, tiny_study("cpus", resources={"cpu": cpus + 1}), capsys, "resources.cpu", f"has {cpus} CPU(s)")


def test_dataset_files_absent_with_a_named_root_or_download_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _check(tmp_path, _mnist("rooted", root=str(tmp_path / "nowhere")), capsys, "dataset", "never downloaded into")
    monkeypatch.setenv("CERTSTUDY_DATA", str(tmp_path / "empty"))
    _check(tmp_path, _mnist("offline", download=False), capsys, "dataset", "download is off")


@pytest.mark.skipif(not MNIST_RAW.is_dir(), reason="the shared MNIST files are not on this machine")
def test_dataset_files_present_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "present.yaml"
    path.write_text(yaml.safe_dump(_mnist("present", root=str(MNIST_RAW.parents[1]), download=False)))
    assert main(["validate", str(path), "--workdir", str(tmp_path / "w")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("http://127.0.0.1:{port}", "is unreachable"),
        ("sqlite:///{tmp}/notes.db", "is not a sqlite database"),
        ("sqlite://", "inside the work directory"),  # a study file's sqlite database is a file in the work directory
    ],
)
def test_a_tracking_store_that_cannot_keep_records(
    uri: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.db").write_text("not a database\n")
    study = tiny_study("store", tracking={"tracking_uri": uri.format(port=port, tmp=work)})
    path = tmp_path / "store.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["validate", str(path), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tracking" in err and needle in err, err
