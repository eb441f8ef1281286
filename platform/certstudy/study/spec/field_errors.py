"""A pydantic ``ValidationError`` as one ``SpecError`` line that names the field's path in the file
(``methods[1].params.eps``) and the value given there."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from certstudy.errors import SpecError

# --- loading and errors ---------------------------------------------------------------------


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fields_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The field names allowed at ``loc`` inside pydantic ``model`` (best effort, for messages)."""
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _lookup(data: Any, loc: Iterable[Any]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return "<missing>"
    return data


def first_error(
    source: str, exc: ValidationError, data: Any, prefix: tuple[Any, ...] = (), model: Any = None
) -> SpecError:
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if p not in ("float", "int", "categorical"))
    full = prefix + loc
    if err["type"] == "missing":
        return SpecError(source, _path(full), "<missing>", "this field is required")
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1]) if model is not None else []
        hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
        return SpecError(source, _path(full), loc[-1], f"unknown key{hint}")
    msg = err["msg"]
    msg = msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg
    value = err.get("input", _lookup(data, loc))
    if not loc and isinstance(value, dict):
        value = "<section>"
    return SpecError(source, _path(full), value, msg[0].lower() + msg[1:] if msg else "invalid")
