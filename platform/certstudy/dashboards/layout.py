"""Dashboard layouts: which panels, which metrics and parameters, in what order (dashboards/*.yaml).

A study file names a layout (never a path): it is looked up in the repository's ``dashboards/``
folder (``default`` always exists), then in the work directory's ``dashboards/``. Only the command
line (``certstudy dashboard --layout PATH``) may give a path. A layout is validated like a study
file, with one-line errors naming the field; an error never echoes what the file holds (a value is
shown by its type only), so a refused file's content is not printed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, ValidationError

from certstudy.errors import SpecError
from certstudy.safe_yaml import load_file
from certstudy.schema import DiscriminatedSchema, Schema
from certstudy.study.spec.loading import validate_spec
from certstudy.study.spec.schema import LAYOUT_NAME_PATTERN, StudySpec
from certstudy.workdir import Workdir

LAYOUTS_DIR = Path(__file__).resolve().parents[3] / "dashboards"


class Panel(DiscriminatedSchema):
    title: str | None = None


class CertifiedCurves(Panel):
    """Certified accuracy against radius, for the top trials of each method and certificate."""

    type: Literal["certified_curves"]
    top: int = Field(3, ge=1, le=50)


class CertificationGap(Panel):
    """Certified, AutoAttack and PGD accuracy against radius for the top trials, the gap between
    AutoAttack (or PGD) and the certificate shaded."""

    type: Literal["certification_gap"]
    top: int = Field(3, ge=1, le=20)


class Pareto(Panel):
    """Clean against certified (or robust) accuracy for every finished trial, with the Pareto front."""

    type: Literal["pareto"]
    x: str = "test/clean_acc"
    y: str | None = Field(
        None, description="default: the first certificate at its largest radius, else test/robust_acc"
    )


class LearningCurves(Panel):
    """Per-epoch series of every trial; pruned trials marked where they stopped, with the reason."""

    type: Literal["learning_curves"]
    metrics: list[str] = Field(default_factory=lambda: ["train/robust_acc", "val/robust_acc"], min_length=1)


class ParamEffects(Panel):
    """The objective (or ``metric``) against each searched hyperparameter."""

    type: Literal["param_effects"]
    metric: str | None = None
    params: list[str] | None = None


class Heatmap(Panel):
    """The mean objective over a 2-D grid of two searched hyperparameters (default: the first two)."""

    type: Literal["heatmap"]
    x: str | None = None
    y: str | None = None
    metric: str | None = None
    bins: int = Field(6, ge=2, le=50)


class Importances(Panel):
    """Optuna's parameter importances for the objective (single-objective studies)."""

    type: Literal["importances"]


class TopTable(Panel):
    """The top trials with their metrics and the command that exports each."""

    type: Literal["top_table"]
    top: int = Field(10, ge=1, le=1000)
    metrics: list[str] = Field(default_factory=lambda: ["val/robust_acc", "test/clean_acc", "test/robust_acc"])


AnyPanel = Annotated[
    CertifiedCurves | CertificationGap | Pareto | LearningCurves | ParamEffects | Heatmap | Importances | TopTable,
    Field(discriminator="type"),
]


PANEL_TYPES = frozenset(get_args(cls.model_fields["type"].annotation)[0] for cls in get_args(get_args(AnyPanel)[0]))


class Layout(Schema):
    title: str = "{study}"
    panels: list[AnyPanel] = Field(min_length=1)


def layout_dirs(workdir: Workdir | None = None) -> list[Path]:
    """Where a layout name is looked up, first match wins: the shipped ones, then the work directory's."""
    return [LAYOUTS_DIR] + ([workdir.layouts_dir] if workdir is not None else [])


def layout_names(workdir: Workdir | None = None) -> list[str]:
    return sorted({p.stem for d in layout_dirs(workdir) for p in d.glob("*.yaml")})


def _kind(value: object) -> str:
    """A value named by its type only (``a str``, ``a mapping``): errors must not print file content."""
    kind = {dict: "mapping", list: "list", str: "string", int: "integer", float: "number", bool: "boolean"}
    name = kind.get(type(value), type(value).__name__)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def find_layout(name_or_path: str, workdir: Workdir | None = None) -> Path:
    """A layout name -> its file in ``layout_dirs``; anything else is a path (command line only)."""
    if re.fullmatch(LAYOUT_NAME_PATTERN, name_or_path):
        for folder in layout_dirs(workdir):
            if (folder / f"{name_or_path}.yaml").is_file():
                return folder / f"{name_or_path}.yaml"
        raise SpecError(
            name_or_path,
            "dashboard",
            name_or_path,
            f"no such layout; known: {', '.join(layout_names(workdir)) or 'none'} (or give a path to --layout)",
        )
    path = Path(name_or_path)
    if not path.exists():
        raise SpecError(str(path), "--layout", name_or_path, "no such file")
    return path


def load_layout(name_or_path: str, workdir: Workdir | None = None) -> Layout:
    path = find_layout(name_or_path, workdir)
    source = str(path)
    docs = load_file(path, "layout")
    data = docs[0] if len(docs) == 1 else None
    try:
        return Layout.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p not in PANEL_TYPES)
        raise SpecError(source, where or "layout", _Shown(_kind(err.get("input"))), err["msg"]) from None


class _Shown(str):
    """Printed as is by ``SpecError`` (no quotes): a description, not a value."""

    def __repr__(self) -> str:
        return str(self)


def check_study_layout(spec: StudySpec, source: str, workdir: Workdir | None = None) -> None:
    """The layout a study file names exists and is valid (raises ``SpecError`` on its ``dashboard`` field)."""
    try:
        load_layout(spec.dashboard, workdir)
    except SpecError as exc:
        raise SpecError(source, "dashboard", spec.dashboard, f"{exc}") from None


def validate_study(data: Any, source: str, workdir: Workdir | None = None) -> StudySpec:
    """A study document validated as the CLI validates it: the study itself, then its dashboard layout."""
    spec = validate_spec(data, source)
    check_study_layout(spec, source, workdir)
    return spec
