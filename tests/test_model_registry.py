"""``certstudy export --register``: the best trials' models in the MLflow Model Registry, loadable by alias."""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml

from certstudy.cli import main
from certstudy.study.records.model_registry import BEST_ALIAS, RANK_TAG, TRIAL_TAG
from certstudy.study.spec.schema import StudySpec
from certstudy.trial.build import load_splits
from certstudy.trial.loop import _fixed_subset
from conftest import launch_study, tiny_study

pytestmark = pytest.mark.integration


def test_registered_best_model_loads_by_alias_and_reproduces_its_runs_test_accuracy(tmp_path: Path) -> None:
    study = launch_study(tmp_path, tiny_study("reg"))
    work, client = study["work"], study["client"]
    assert main(["export", "reg", "--workdir", str(work), "--top", "2", "--name", "reg-model"]) == 0
    docs = list(yaml.safe_load_all((work / "reg" / "best.yaml").read_text()))

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    best = client.get_model_version_by_alias("reg-model", BEST_ALIAS)
    assert best.run_id == docs[0]["provenance"]["mlflow_run_id"]
    assert best.tags[RANK_TAG] == "1" and best.tags[TRIAL_TAG] == str(docs[0]["provenance"]["optuna_trial"])
    logged = client.search_logged_models(experiment_ids=[study["exp"].experiment_id])
    assert len(logged) == 2  # in the study's experiment, its artifacts inside the work directory
    assert all(Path(m.artifact_location.removeprefix("file://")).is_relative_to(work) for m in logged), logged
    versions = client.search_model_versions("name='reg-model'")
    assert sorted(int(v.tags[RANK_TAG]) for v in versions) == [1, 2]

    info = mlflow.models.get_model_info(f"models:/reg-model@{BEST_ALIAS}")
    assert info.signature is not None and info.metadata is not None
    assert yaml.safe_load(info.metadata["study"])["provenance"]["rank"] == 1
    assert "test/clean_acc" in info.metadata["metrics"]

    model = mlflow.pytorch.load_model(f"models:/reg-model@{BEST_ALIAS}").eval()
    cfg = StudySpec.model_validate(docs[0]).trial_config()
    splits = load_splits(cfg, str(work / "data"))
    idx = _fixed_subset(len(splits.y_test), cfg.evaluation.test_subset, cfg.seed + 3)
    with torch.no_grad():
        predicted = model(splits.floats(splits.x_test[idx])).argmax(1)
    accuracy = (predicted == splits.y_test[idx]).sum().item() / len(idx)  # the same count of correct points
    assert accuracy == pytest.approx(client.get_run(best.run_id).data.metrics["test/clean_acc"], abs=1e-6)


def test_a_bad_registered_model_name_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study = launch_study(tmp_path, tiny_study("regbad", search={"num_trials": 1, "max_concurrent": 1, "seed": 1}))
    assert main(["export", "regbad", "--workdir", str(study["work"]), "--name", "../x y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--name" in err[0], err


class _Payload:
    """Unpickling this creates a file: proof that a tampered model file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_name_owned_by_another_study_an_empty_name_and_a_tampered_model(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Hostile inputs round two, item 10 (and item 9's tampered ``model.pt``): nothing is written
    before the name is checked, another study's name needs --take-name, and the printed loading
    hint works as printed, from another folder, without leaving a stray store behind."""
    import pickle
    import subprocess
    import sys

    from certstudy.study.records.model_registry import check_name, default_name
    from certstudy.study.records.names import MODEL_ARTIFACT_DIR
    from certstudy.trial.checkpoint import MODEL_FILE

    one = {"search": {"num_trials": 1, "max_concurrent": 1, "seed": 2}}
    (tmp_path / "a").mkdir()
    a = launch_study(tmp_path / "a", tiny_study("own-a", **one))
    work, client = a["work"], a["client"]
    b_path = tmp_path / "own-b.yaml"
    b_path.write_text(yaml.safe_dump(tiny_study("own-b", **one)))
    assert main(["launch", str(b_path), "--workdir", str(work)]) == 0
    capsys.readouterr()

    assert main(["export", "own-a", "--workdir", str(work), "--name", "shared"]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("load the rank-1 model: "))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = hint.removeprefix("load the rank-1 model: python -c ").strip('"')
    done = subprocess.run([sys.executable, "-c", command], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(elsewhere.iterdir()), list(elsewhere.iterdir())  # no stray ./mlflow.db or ./mlruns
    owned = client.get_model_version_by_alias("shared", BEST_ALIAS)

    out = tmp_path / "b.yaml"
    for argv, needle in (
        (["--name", "shared"], "holds models of study own-a"),
        (["--name", ""], "registered model name"),
        (["--name", "../x"], "registered model name"),
    ):
        assert main(["export", "own-b", "--workdir", str(work), "-o", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, err
        assert not out.exists()  # nothing written before the name was checked
    assert client.get_model_version_by_alias("shared", BEST_ALIAS).version == owned.version  # alias untouched
    assert main(["export", "own-b", "--workdir", str(work), "--name", "shared", "--take-name"]) == 0
    assert client.get_model_version_by_alias("shared", BEST_ALIAS).version != owned.version
    capsys.readouterr()
    check_name(default_name("s" * 100), given=False)  # the default name of a 100-character study is a name

    docs = list(yaml.safe_load_all((work / "own-b" / "best.yaml").read_text()))
    run_id = docs[0]["provenance"]["mlflow_run_id"]
    model_file = (
        Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / MODEL_ARTIFACT_DIR / MODEL_FILE
    )
    marker = tmp_path / "unpickled"
    model_file.write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["export", "own-b", "--workdir", str(work), "--name", "tampered"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not a plain weights file" in err and "weights_only=False" not in err, err
    assert not marker.exists()
