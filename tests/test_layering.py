"""The code's structure holds: layers import downwards, every record name has one home, and a
command-line override is validated like the file it overrides."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from certstudy.cli import main
from certstudy.study.records import names as records
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
    for path in (PACKAGE / "study").rglob("*.py"):
        assert not [m for m in _imports(path) if m.startswith("certstudy.dashboards")], path
    for layer in LOWER:
        for path in (PACKAGE / layer).glob("*.py"):
            bad = [
                m
                for m in _imports(path)
                if m.split(".")[0] in ("ray", "optuna", "mlflow") or m.startswith("certstudy.study")
            ]
            assert not bad, (path, bad)


FLOORS = ("spec", "records", "engine")  # lowest first: each imports only the floors below it


def _floor_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["certstudy", "study"] and len(parts) > 2 else None


def test_the_study_floors_import_downwards_and_the_spec_floor_loads_no_ray_optuna_or_mlflow() -> None:
    """spec <- records <- engine, counting imports inside functions too; the spec floor imports Ray,
    Optuna and MLflow nowhere at module level (a pruner is built with Optuna only when asked)."""
    assert sorted(p.name for p in (PACKAGE / "study").iterdir() if p.suffix == ".py") == ["__init__.py"]
    for floor in FLOORS:
        allowed = FLOORS[: FLOORS.index(floor) + 1]
        for path in (PACKAGE / "study" / floor).glob("*.py"):
            upward = [m for m in _imports(path) if _floor_of(m) is not None and _floor_of(m) not in allowed]
            assert not upward, (path, upward)
    for path in (PACKAGE / "study" / "spec").glob("*.py"):
        top = ast.parse(path.read_text()).body
        heavy = [
            m
            for node in top
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for m in ([node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
            if m and m.split(".")[0] in ("ray", "optuna", "mlflow")
        ]
        assert not heavy, (path, heavy)


def test_the_study_layer_has_no_import_cycles() -> None:
    """Module-level and function-level imports between the study layer's modules form no cycle."""
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path
        for path in (PACKAGE / "study").rglob("*.py")
        if path.name != "__init__.py"
    }
    edges = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in edges[m]:
            assert state.get(n) != 1, " -> ".join([*trail, m, n])
            if n not in state:
                visit(n, [*trail, m])
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m, [])


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
        if path == Path(records.__file__):
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
