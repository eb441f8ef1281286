"""The code's structure holds: layers import downwards, every record name has one home, and a
command-line override is validated like the file it overrides."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from certstudy.cli import main
from certstudy.study import records
from conftest import REPO, tiny_study

PACKAGE = REPO / "platform" / "certstudy"
LOWER = ("trial", "methods", "certify", "attacks", "data", "models")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_study_never_imports_dashboards_and_lower_layers_never_import_study_or_the_trackers() -> None:
    for path in (PACKAGE / "study").glob("*.py"):
        assert not [m for m in _imports(path) if m.startswith("certstudy.dashboards")], path
    for layer in LOWER:
        for path in (PACKAGE / layer).glob("*.py"):
            bad = [
                m
                for m in _imports(path)
                if m.split(".")[0] in ("ray", "optuna", "mlflow") or m.startswith("certstudy.study")
            ]
            assert not bad, (path, bad)


def test_every_record_name_is_spelled_only_in_records() -> None:
    tree = ast.parse(Path(records.__file__).read_text())
    names = {  # the string literals records.py itself defines (a few names it re-exports live lower down)
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    names = {n for n in names if any(c in n for c in "._/")}  # not plain words such as "model"
    assert len(names) >= 25
    for path in PACKAGE.rglob("*.py"):
        if path.name == "records.py":
            continue
        text = path.read_text()
        spelled = sorted(n for n in names if f'"{n}"' in text)
        assert not spelled, (path, spelled)


@pytest.mark.parametrize(
    "value, message", [(1000000, "less than or equal to 100000"), (0, "greater than or equal to 1")]
)
def test_num_trials_override_is_validated_like_the_file(
    value: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(tiny_study("override")))
    work = tmp_path / "work"
    assert main(["launch", str(path), "--workdir", str(work), "--num-trials", str(value)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"search.num_trials: got {value}" in err and message in err, err
    assert not work.exists()  # nothing started, nothing written


def test_num_trials_override_is_checked_against_the_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tiny_study(
        "grid",
        methods=[
            {
                "name": "adversarial",
                "params": {"steps": 2},
                "search": {"eps": {"type": "categorical", "choices": [0.02, 0.05]}},
            }
        ],
        training={"epochs": 2, "batch_size": 128},
        search={"sampler": "grid", "num_trials": 2},
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["launch", str(path), "--workdir", str(tmp_path / "work"), "--num-trials", "3"]) == 2
    assert "the grid has 2 points" in capsys.readouterr().err
