"""Reading study files: one or more YAML documents, overrides applied, validated into ``StudySpec``;
and writing one back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from certstudy.errors import SpecError
from certstudy.safe_yaml import load_all, read_text
from certstudy.study.spec.checks import check_study
from certstudy.study.spec.field_errors import first_error
from certstudy.study.spec.overrides import apply_overrides
from certstudy.study.spec.schema import StudySpec


def validate_spec(data: Any, source: str) -> StudySpec:
    """Parses one study document; raises ``SpecError`` with the first problem, path included."""
    if not isinstance(data, dict):
        raise SpecError(source, "", type(data).__name__, "a study file must be a YAML mapping")
    if ("method" in data) == ("methods" in data):
        both = "method" in data
        raise SpecError(
            source,
            "methods" if both else "method",
            "<both given>" if both else "<missing>",
            "give exactly one of 'method' (one method) or 'methods' (a list)",
        )
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise first_error(source, exc, data, model=StudySpec) from None
    check_study(source, spec)
    if spec.is_fixed():
        try:
            spec.trial_config()
        except ValidationError as exc:
            raise first_error(source, exc, data) from None
    return spec


def load_documents(path: str | Path, overrides: dict[str, Any] | None = None) -> list[StudySpec]:
    """All study documents in a YAML file (an export may hold several), with command-line
    ``overrides`` applied before validation. The file is read by ``safe_yaml``: duplicate keys,
    alias bombs, deep nesting, non-UTF-8 bytes, huge files and non-regular files are refused."""
    path = Path(path)
    source = str(path) + (f" (with {', '.join(overrides)} overridden)" if overrides else "")
    docs = load_all(read_text(path, "study file"), source)
    if not docs:
        raise SpecError(source, "", "<empty>", "the file holds no study")
    docs = [apply_overrides(d, overrides) for d in docs] if overrides else docs
    return [validate_spec(d, source if len(docs) == 1 else f"{source} (document {i + 1})") for i, d in enumerate(docs)]


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """The single study in a file (the first, for a multi-document export)."""
    return load_documents(path, overrides)[0]


def dump_study(spec: StudySpec) -> dict[str, Any]:
    """A study as plain data for YAML: defaults included, so the file is complete on its own."""
    data = spec.model_dump(mode="json", exclude_none=False)
    for key in spec.training.search:  # a searched field has no fixed value to write
        data["training"].pop(key, None)
    if data.get("provenance") is None:
        data.pop("provenance", None)
    for key in ("method", "methods"):
        if data.get(key) is None:
            data.pop(key, None)
    sections = [data["dataset"], data["model"], data["training"]] + (
        [data["method"]] if "method" in data else data["methods"]
    )
    for section in sections:
        if not section.get("search"):
            section.pop("search", None)
        if section.get("label", "") is None:
            section.pop("label")
    return data
