"""Malformed study files are rejected before anything starts: one line, field path, exit code 2."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from certstudy.cli import main
from conftest import tiny_study

VALID = tiny_study("valid")


def _with(path: str, value: object) -> dict:
    """VALID with the value at dotted ``path`` (list indices as ints) replaced; None deletes it."""
    data = copy.deepcopy(VALID)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    node = data
    for k in keys[:-1]:
        node = node[k]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()

CASES = [
    # (id, data or raw text, expected field path in the message, expected fragment)
    ("unknown-method", _with("methods.1.name", "madry"), "methods[1].name", "known methods: "),
    ("epochs-wrong-type", _with("training.epochs", "ten"), "training.epochs", "'ten'"),
    (
        "lr-negative",
        {**_with("training.search", {}), "training": {"epochs": 2, "lr": -1}},
        "training.lr",
        "greater than 0",
    ),
    ("missing-name", _with("name", _DELETE), "name", "required"),
    ("unknown-top-level-key", {**VALID, "trainning": {"epochs": 3}}, "trainning", "unknown key"),
    (
        "unknown-attack-key",
        _with("evaluation.attack", {"epsilon": 0.1}),
        "evaluation.attack.epsilon",
        "allowed: norm, eps",
    ),
    ("unknown-method-param", _with("methods.1.params", {"epsilon": 0.1}), "methods[1].params.epsilon", "unknown key"),
    (
        "search-unknown-param",
        _with("model.search", {"widht": {"type": "int", "low": 8, "high": 64}}),
        "model.search.widht",
        "parameters: width",
    ),
    (
        "search-out-of-range",
        _with("methods.1", {"name": "adversarial", "search": {"steps": {"type": "int", "low": 0, "high": 5}}}),
        "methods[1].search.steps",
        "outside what steps allows",
    ),
    (
        "range-reversed",
        _with("training.search.lr", {"type": "float", "low": 0.1, "high": 0.01}),
        "training.search.lr",
        "must be below high",
    ),
    (
        "log-range-nonpositive",
        _with("training.search.lr", {"type": "float", "low": 0.0, "high": 0.1, "log": True}),
        "training.search.lr",
        "log range needs low > 0",
    ),
    (
        "unknown-distribution",
        _with("training.search.lr", {"type": "uniform", "low": 0.0, "high": 0.1}),
        "training.search.lr",
        "'uniform'",
    ),
    ("method-and-methods", {**VALID, "method": {"name": "erm"}}, "methods", "exactly one of"),
    ("no-method", {k: v for k, v in VALID.items() if k != "methods"}, "method", "exactly one of"),
    (
        "objective-on-test-split",
        _with("objectives", [{"metric": "test/robust_acc"}]),
        "objectives[0].metric",
        "would tune on the test split",
    ),
    (
        "objective-not-a-metric",
        _with("objectives", [{"metric": "robust_acc"}]),
        "objectives[0].metric",
        "per-epoch metrics",
    ),
    ("weak-audit", _with("evaluation.audit", {"steps": 10}), "evaluation.audit.steps", "greater than or equal to 50"),
    (
        "bound-certifier-bad-norm",
        _with("evaluation.certifiers", [{"name": "crown", "params": {"norm": "l1"}}]),
        "evaluation.certifiers[0].params.norm",
        "'linf' or 'l2'",
    ),
    (
        "unknown-certifier",
        _with("evaluation.certifiers", [{"name": "randomized"}]),
        "evaluation.certifiers[0].name",
        "known certifiers: ibp, crown, lipschitz, smoothing",
    ),
    (
        "certifier-bad-param",
        _with("evaluation.certifiers", [{"name": "smoothing", "params": {"sigma": 0.5, "alpha": 2}}]),
        "evaluation.certifiers[0].params.alpha",
        "less than 1",
    ),
    (
        "certifier-unknown-param",
        _with("evaluation.certifiers", [{"name": "smoothing", "params": {"noise": 0.5}}]),
        "evaluation.certifiers[0].params.noise",
        "allowed: sigma, n0, n",
    ),
    (
        "smoothing-without-sigma",
        _with("evaluation.certifiers", [{"name": "smoothing"}]),
        "evaluation.certifiers[0].params",
        "params.sigma is required",
    ),
    (
        "certifier-twice",
        _with(
            "evaluation.certifiers",
            [{"name": "smoothing", "params": {"sigma": 0.5}}, {"name": "smoothing", "params": {"sigma": 0.25}}],
        ),
        "evaluation.certifiers[1].name",
        "already issued",
    ),
    (
        "certified-objective-without-val-points",
        {
            **_with("evaluation.certifiers", [{"name": "smoothing", "params": {"sigma": 0.5}}]),
            "objectives": [{"metric": "val/certified_acc_smoothing_l2_r0.5"}],
        },
        "objectives[0].metric",
        "certify_val_subset > 0",
    ),
    (
        "certified-objective-off-grid",
        {
            **_with(
                "evaluation",
                {"certifiers": [{"name": "smoothing", "params": {"sigma": 0.5}}], "certify_val_subset": 20},
            ),
            "objectives": [{"metric": "val/certified_acc_smoothing_l2_r0.3"}],
        },
        "objectives[0].metric",
        "not reported by the configured certifiers",
    ),
    ("negative-radius", _with("evaluation.radii", {"l2": [0.0, -0.5]}), "evaluation", "finite and >= 0"),
    (
        "smoothing-lambda-out-of-range",
        _with("methods", [{"name": "smoothing", "search": {"lambda": {"type": "float", "low": -1.0, "high": 1.0}}}]),
        "methods[0].search.lambda",
        "outside what lambda allows",
    ),
    (
        "smoothing-unknown-regularizer",
        _with("methods", [{"name": "smoothing", "params": {"regularizer": "macer"}}]),
        "methods[0].params.regularizer",
        "'none', 'adre' or 'consistency'",
    ),
    (
        "objective-bad-mode",
        _with("objectives", [{"metric": "val/robust_acc", "mode": "maximize"}]),
        "objectives[0].mode",
        "'maximize'",
    ),
    (
        "poisoning-rate-above-1",
        _with("dataset.poisoning.rate", 1.5),
        "dataset.poisoning.rate",
        "less than or equal to 1",
    ),
    ("unknown-dataset", _with("dataset.name", "imagenet"), "dataset.name", "known datasets: digits"),
    (
        "unknown-dataset-option",
        _with("dataset.options", {"val_frac": 0.1}),
        "dataset.options.val_frac",
        "allowed: val_fraction, test_fraction",
    ),
    ("gpu-fraction-above-1", _with("resources.gpu", 1.5), "resources.gpu", "whole number"),
    (
        "file-tracking-uri",
        {**VALID, "tracking": {"tracking_uri": "file:./mlruns"}},
        "tracking.tracking_uri",
        "file stores are not supported",
    ),
    ("duplicate-method", _with("methods", [{"name": "erm"}, {"name": "erm"}]), "methods[1].label", "listed twice"),
    ("bad-study-name", _with("name", "my study"), "name", "should match pattern"),
    (
        "empty-categorical",
        _with("model.search", {"activation": {"type": "categorical", "choices": []}}),
        "model.search.activation.choices",
        "at least 1 item",
    ),
    (
        "milestone-after-end",
        {
            **_with("training.search", {}),
            "training": {"epochs": 5, "schedule": {"name": "multistep", "milestones": [3, 9]}},
        },
        "training",
        "milestones [9]",
    ),
    (
        "searched-and-fixed",
        {
            **VALID,
            "training": {"epochs": 3, "lr": 0.01, "search": {"lr": {"type": "float", "low": 0.001, "high": 0.1}}},
        },
        "training.search.lr",
        "fix it or search it",
    ),
    (
        "start-point-unknown-name",
        {**VALID, "search": {"num_trials": 3, "start_points": [{"training.learning_rate": 0.01}]}},
        "search.start_points[0].training.learning_rate",
        "parameters: method, adversarial.eps, training.lr",
    ),
    (
        "start-point-out-of-range",
        {**VALID, "search": {"num_trials": 3, "start_points": [{"method": "adversarial", "adversarial.eps": 0.5}]}},
        "search.start_points[0].adversarial.eps",
        "outside the searched range",
    ),
    (
        "start-point-unknown-method",
        {**VALID, "search": {"num_trials": 3, "start_points": [{"method": "hr"}]}},
        "search.start_points[0].method",
        "outside the searched range",
    ),
    ("bad-yaml", "name: x\nmethods: [ {name: erm\n", "", "not valid YAML"),
    ("not-a-mapping", "- just\n- a list\n", "", "must be a YAML mapping"),
]


@pytest.mark.parametrize("case_id,data,field,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_study_is_rejected_with_field_path_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case_id: str, data: object, field: str, fragment: str
) -> None:
    path = tmp_path / f"{case_id}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {path}")
    if field:
        assert f"{path}: {field}: " in err, err
    assert fragment in err, err


def test_launch_rejects_bad_file_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("training.epochs", 0)))
    work = tmp_path / "work"
    assert main(["launch", str(path), "--workdir", str(work)]) == 2
    assert "training.epochs" in capsys.readouterr().err
    assert not work.exists()  # no work directory, no MLflow store, no Ray


def test_valid_study_and_shipped_trials_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(VALID))
    shipped = sorted((Path(__file__).parents[1] / "trials").glob("*.yaml"))
    assert shipped, "trials/ should ship study files"
    assert main(["validate", "--no-preflight", str(path), *map(str, shipped)]) == 0
    assert capsys.readouterr().out.count("ok: ") == 1 + len(shipped)
