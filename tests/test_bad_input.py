"""Hostile or careless study files: each is one line naming the file and the problem, exit 2,
nothing started, and refused quickly (issue: hardening, bad input)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from certstudy.cli import main
from conftest import tiny_study

BILLION_LAUGHS = "".join(
    f"{a}: &{a} [" + ",".join([f"*{b}" if b else '"lol"'] * 9) + "]\n" for a, b in zip("abcdefghi", ["", *"abcdefgh"])
)


def _refused(path: Path, capsys: pytest.CaptureFixture[str], *needles: str, args: tuple[str, ...] = ()) -> str:
    work = path.parent / "work"
    t = time.perf_counter()
    assert main(["launch", str(path), "--workdir", str(work), *args]) == 2
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err, err
    for needle in needles:
        assert needle in err, err
    assert not work.exists()  # nothing started, nothing written
    assert elapsed < 5, elapsed
    return err


def _study_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_a_key_given_twice_is_an_error_not_last_one_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _study_with(tmp_path, "name: one\nname: two\nmethod: {name: erm}\n")
    _refused(path, capsys, "key 'name' is given twice (line 2)")
    nested = _study_with(tmp_path, "name: x\nmethod: {name: erm}\ntraining: {epochs: 2, epochs: 3}\n")
    _refused(nested, capsys, "key 'epochs' is given twice")


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _study_with(
        tmp_path,
        "name: merged\nbase: &b {epochs: 2, batch_size: 64}\nmethod: {name: erm}\ntraining: {<<: *b, epochs: 3}\n",
    )
    # the merge is legal YAML; the unknown top-level key 'base' is what validation refuses
    _refused(path, capsys, "base")


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"training": {"epochs": 2, "lr": float("inf")}}, "training.lr: got inf"),
        ({"training": {"epochs": 2, "grad_clip": float("nan")}}, "training.grad_clip"),
        ({"evaluation": {"attack": {"eps": float("inf")}}}, "evaluation.attack.eps"),
        ({"training": {"epochs": True}}, "training.epochs: got True; a boolean where a number is expected"),
        ({"model": {"name": "mlp", "params": {"width": True}}}, "model.params.width"),
        ({"seed": 2**40}, "seed: got 1099511627776"),
        ({"search": {"num_trials": 2, "seed": 2**33}}, "search.seed"),
        ({"dataset": {"name": "digits", "options": {"val_fraction": 0.6, "test_fraction": 0.5}}}, "must be below 1"),
        ({"tracking": {"tracking_uri": "gopher://host/x"}}, "unknown scheme 'gopher'"),
    ],
)
def test_non_finite_boolean_and_out_of_range_values_are_refused(
    section: dict, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study("bad")
    for key, value in section.items():
        study[key] = {**study.get(key, {}), **value} if isinstance(value, dict) and key != "dataset" else value
    path = _study_with(tmp_path, yaml.safe_dump(study))
    _refused(path, capsys, needle)


def test_inf_is_refused_in_search_ranges_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tiny_study("bad")
    study["methods"][1]["search"]["eps"] = {"type": "float", "low": 0.0, "high": float("inf")}
    _refused(_study_with(tmp_path, yaml.safe_dump(study)), capsys, "high: got inf", "finite")
    study["methods"][1]["search"]["eps"] = {"type": "int", "low": True, "high": 3}
    _refused(_study_with(tmp_path, yaml.safe_dump(study)), capsys, "low: got a boolean")


def test_an_alias_bomb_is_refused_fast_and_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _study_with(tmp_path, BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 1000
    _refused(path, capsys, "expands to more than 100,000 nodes")


def test_deep_nesting_binary_and_huge_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(_study_with(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n"), capsys, "nested more than 64 levels")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"name: x\xff\xfe\n")
    _refused(binary, capsys, "not UTF-8 text")
    huge = tmp_path / "h.yaml"
    huge.write_text("# " + "x" * 1_100_000 + "\n")
    _refused(huge, capsys, "at most 1,000,000 bytes")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "f.yaml"
    os.mkfifo(fifo)
    _refused(fifo, capsys, "not a regular file")


def test_an_error_never_prints_more_than_about_80_characters_of_a_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study("long")
    study["model"] = {"name": "x" * 500}
    err = _refused(_study_with(tmp_path, yaml.safe_dump(study)), capsys, "model")
    assert "x" * 100 not in err and len(err) < 400, err
    over = tmp_path / "o.yaml"
    over.write_text(yaml.safe_dump({"methods": [{"name": "erm", "params": {"k": "y" * 500}}]}))
    err = _refused(_study_with(tmp_path, yaml.safe_dump(tiny_study("o"))), capsys, args=("--overrides", str(over)))
    assert "y" * 100 not in err and "methods overridden" in err, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["status", "x", "--workdir", "{file}"], "--workdir: got '{file}'; is not a directory"),
        (["ui", "--port", "70000", "--workdir", "{dir}"], "--port: got 70000; a TCP port is 1-65535"),
        (["ui", "--port", "0", "--workdir", "{dir}"], "--port: got 0"),
        (["export", "x", "-o", "{dir}", "--workdir", "{dir}"], "is a directory; give a file path"),
        (["export", "x", "--top", "0", "--workdir", "{dir}"], "--top: must be at least 1"),
        (["resume", "nosuch", "--workdir", "{dir}"], "no study 'nosuch'"),
    ],
)
def test_cli_misuse_is_one_line_exit_2_and_writes_nothing(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, afile = tmp_path / "w", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("")
    fill = {"file": str(afile), "dir": str(folder)}
    code = main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code in (1, 2) and "\n" not in err and needle.format(**fill) in err, err
    assert list(folder.iterdir()) == []  # nothing written


def test_a_read_only_work_directory_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        path = _study_with(tmp_path, yaml.safe_dump(tiny_study("ro")))
        assert main(["launch", str(path), "--workdir", str(mount)]) == 2
        assert "is not writable, and launch writes there" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize(
    ("where", "value", "needle"),
    [
        ("objective", "val/made_up_acc", "objectives[0].metric: got 'val/made_up_acc'"),
        ("best_metric", "val/nope", "evaluation.best_metric: got 'val/nope'; not a metric this study reports"),
        ("overfitting", "val/nope", "pruning.overfitting.metric: got 'val/nope'"),
        ("objective", "train/gloro_eps", "objectives[0].metric: got 'train/gloro_eps'"),  # erm/adversarial do not
    ],
)
def test_objectives_and_pruning_metrics_must_be_metrics_the_study_reports(
    where: str, value: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study("metric")
    if where == "objective":
        study["objectives"] = [{"metric": value, "mode": "max"}]
    elif where == "best_metric":
        study["evaluation"]["best_metric"] = value
    else:
        study["pruning"] = {"overfitting": {"metric": value}}
    _refused(_study_with(tmp_path, yaml.safe_dump(study)), capsys, needle)


def test_a_methods_own_per_epoch_metric_may_steer_its_study(tmp_path: Path) -> None:
    study = tiny_study("own", methods=[{"name": "gloro", "params": {"eps": 0.1}}])
    study["objectives"] = [{"metric": "train/gloro_lambda", "mode": "min"}]
    path = _study_with(tmp_path, yaml.safe_dump(study))
    assert main(["validate", str(path), "--workdir", str(tmp_path / "w")]) == 0


@pytest.mark.parametrize(
    "method",
    [
        {"name": "erm"},
        {"name": "adversarial", "params": {"eps": 0.05, "steps": 1}},
        {"name": "gloro", "params": {"eps": 0.1}},
        {"name": "crown_ibp", "params": {"eps": 0.05, "gap_weight": 0.1, "feasibility_weight": 0.1}},
        {"name": "hr", "params": {"eps": 0.05, "steps": 1}},
        {"name": "smoothing", "params": {"sigma": 0.25}},
    ],
    ids=lambda m: m["name"],
)
def test_every_per_epoch_metric_a_method_reports_is_declared(method: dict, tmp_path: Path) -> None:
    """What validation checks objectives against (``epoch_metrics_of``) is what a trial reports."""
    from certstudy.study.spec.checks import epoch_metrics_of
    from certstudy.study.spec.loading import validate_spec
    from certstudy.trial import run_trial

    study = tiny_study("declared", methods=[method])
    study["training"] = {"epochs": 1, "batch_size": 256}
    study["evaluation"] = {"attack": {"eps": 0.05, "steps": 1}, "val_subset": 64, "test_subset": 64}
    spec = validate_spec(study, "s.yaml")
    reports: list[dict] = []
    run_trial(spec.trial_config(), lambda m, d: reports.append(m), data_dir=str(tmp_path))
    per_epoch = {k for k in reports[0] if k.split("/")[0] in ("train", "val", "gap")}
    assert per_epoch <= epoch_metrics_of(spec), per_epoch - epoch_metrics_of(spec)


@pytest.mark.parametrize(
    ("device", "gpu", "needle"),
    [
        ("cuda:1", 1, "device: got 'cuda:1'; a trial sees only the 1 GPU(s) of resources.gpu"),
        ("cuda:0", 0, "device: got 'cuda:0'"),
    ],
)
def test_a_cuda_index_beyond_the_trials_gpus_is_refused(
    device: str, gpu: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = tiny_study("gpu", device=device, resources={"cpu": 1, "gpu": gpu})
    _refused(_study_with(tmp_path, yaml.safe_dump(study)), capsys, needle)


def test_a_cuda_device_the_process_cannot_see_fails_the_run_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    visible = torch.cuda.device_count()
    study = tiny_study("gpurun", methods=[{"name": "erm"}], device=f"cuda:{visible}")
    study["resources"] = {"cpu": 1, "gpu": visible + 1}
    study["training"] = {"epochs": 1}
    path = _study_with(tmp_path, yaml.safe_dump(study))
    assert main(["run", str(path), "--workdir", str(tmp_path / "w"), "--no-track"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"device 'cuda:{visible}' requested" in err, err
