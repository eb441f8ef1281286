"""The base of every typed section of a study file: unknown keys, non-finite numbers and booleans
given for numbers are errors.

Pydantic's lax mode, which a YAML file needs (``lr: 1`` for a float), also turns ``true`` into 1 and
accepts ``.inf`` and ``.nan`` in any float field; a study with ``width: true`` or ``eps: .inf`` would
then run with a value nobody wrote. Strict mode would refuse those but also lists where tuples are
expected, so the two checks are made here instead, once, for every section that inherits this base.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator


def _numeric(annotation: Any) -> bool:
    """True when the annotation takes an int or float and not a bool (``int``, ``float | None``,
    ``Annotated[float, ...]``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return bool not in args and any(_numeric(a) for a in args)
    return annotation in (int, float)


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("a boolean where a number is expected")
        return value


class DiscriminatedSchema(BaseModel):
    """``Schema`` for the members of a discriminated union (search distributions): pydantic allows
    no before-validator on the discriminator field, so booleans are checked per model instead."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), bool) and _numeric(field.annotation):
                    raise ValueError(f"{name}: got a boolean ({data[name]}) where a number is expected")
        return data
