"""Overrides of a study file: ``--set KEY=VALUE`` and ``--overrides FILE``, dotted keys into the
study's mapping."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from certstudy.errors import SpecError
from certstudy.safe_yaml import load_all, load_file


def apply_overrides(data: Any, overrides: dict[str, Any]) -> Any:
    """``data`` with each dotted key of ``overrides`` (e.g. ``search.num_trials``) set, so a command
    line override is validated like the file (grid size, start points, bounds)."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break  # a malformed section: validation names it
        else:
            node[leaf] = value
    return data


_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _check_dotted(source: str, key: object) -> str:
    if not isinstance(key, str) or not _DOTTED_KEY.match(key):
        raise SpecError(source, "key", key, "keys are dotted field names, e.g. training.epochs")
    return key


def read_overrides(path: str | Path) -> dict[str, Any]:
    """An override file: one YAML mapping of dotted keys to the values that replace what the study
    file holds there (``training.epochs: 10``, or ``methods: [...]`` for a whole section). This is
    how a study ships a reduced budget beside its published one (``trials/mnist/*.cpu.yaml``)."""
    source = str(path)
    docs = load_file(path, "override file")
    if len(docs) != 1 or not isinstance(docs[0], dict) or not docs[0]:
        shown = type(docs[0]).__name__ if len(docs) == 1 else f"{len(docs)} documents"
        raise SpecError(source, "", shown, "an override file is a non-empty mapping of dotted keys")
    return {_check_dotted(source, k): v for k, v in docs[0].items()}


def parse_set(item: str) -> dict[str, Any]:
    """One ``--set KEY=VALUE``: the value is read as YAML (``10``, ``true``, ``[0.1, 0.3]``)."""
    key, sep, text = item.partition("=")
    if not sep:
        raise SpecError("--set", "", item, "expected KEY=VALUE, e.g. training.epochs=10")
    try:
        values = load_all(text, "--set") if text else [""]
    except SpecError:
        raise SpecError("--set", key, text, "the value is not valid YAML") from None
    value = values[0] if values else None
    return {_check_dotted("--set", key.strip()): value}
