"""Dashboard layouts: which panels, which metrics and parameters, in what order (dashboards/*.yaml).

A layout is looked up by name in the repository's ``dashboards/`` folder (``default`` always
exists) or given as a path; it is validated like a study file, with one-line errors naming the
field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, ValidationError

from certstudy.errors import SpecError
from certstudy.safe_yaml import load_file
from certstudy.schema import DiscriminatedSchema, Schema
from certstudy.study.spec import StudySpec, validate_spec

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


def layout_names() -> list[str]:
    return sorted(p.stem for p in LAYOUTS_DIR.glob("*.yaml"))


def load_layout(name_or_path: str) -> Layout:
    path = Path(name_or_path)
    if not path.suffix:
        path = LAYOUTS_DIR / f"{name_or_path}.yaml"
    source = str(path)
    if not path.exists():
        raise SpecError(
            source,
            "dashboard",
            name_or_path,
            f"no such layout; known: {', '.join(layout_names()) or 'none'} (or give a path)",
        )
    docs = load_file(path, "layout")
    data = docs[0] if len(docs) == 1 else None
    try:
        return Layout.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p not in PANEL_TYPES)
        raise SpecError(source, where or "layout", err.get("input"), err["msg"]) from None


def check_study_layout(spec: StudySpec, source: str) -> None:
    """The layout a study file names exists and is valid (raises ``SpecError`` on its ``dashboard`` field)."""
    try:
        load_layout(spec.dashboard)
    except SpecError as exc:
        raise SpecError(source, "dashboard", spec.dashboard, f"{exc}") from None


def validate_study(data: Any, source: str) -> StudySpec:
    """A study document validated as the CLI validates it: the study itself, then its dashboard layout."""
    spec = validate_spec(data, source)
    check_study_layout(spec, source)
    return spec
