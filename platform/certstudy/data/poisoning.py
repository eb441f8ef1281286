"""Label-flip poisoning of the train split (val and test are never touched).

Exactly round(rate * n_train) labels change. ``uniform`` draws each new label uniformly from the
other classes; ``targeted`` sends every flipped label to ``target`` (or to (y + 1) mod K when no
target is named), optionally drawing the flipped samples only from class ``source``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from pydantic import Field, model_validator

from certstudy.data.base import Splits
from certstudy.errors import TrialFailed
from certstudy.schema import Schema


class Poisoning(Schema):
    rate: float = Field(0.0, ge=0, le=1, description="fraction of train labels flipped")
    kind: Literal["uniform", "targeted"] = "uniform"
    source: int | None = Field(None, ge=0, description="targeted only: flip only samples of this class")
    target: int | None = Field(None, ge=0, description="targeted only: the label every flip goes to")

    @model_validator(mode="after")
    def _targeted_fields(self) -> Poisoning:
        if self.kind == "uniform" and (self.source is not None or self.target is not None):
            raise ValueError("source/target apply only to kind 'targeted'")
        if self.source is not None and self.source == self.target:
            raise ValueError("source and target must differ")
        return self


def poison(splits: Splits, spec: Poisoning, seed: int) -> Splits:
    """Returns splits whose train labels are flipped per ``spec``; ``poisoned`` lists the indices."""
    if spec.rate == 0:
        return splits
    y = splits.y_train.clone()
    k = splits.num_classes
    for cls in (spec.source, spec.target):
        if cls is not None and cls >= k:
            raise TrialFailed(f"poisoning: class {cls} does not exist (dataset has {k} classes)")
    gen = torch.Generator().manual_seed(seed + 7919)
    n_flip = int(round(spec.rate * len(y)))
    candidates = torch.arange(len(y))
    if spec.source is not None:
        candidates = candidates[y == spec.source]
    elif spec.target is not None:
        candidates = candidates[y != spec.target]
    if n_flip > len(candidates):
        raise TrialFailed(
            f"poisoning: rate {spec.rate} needs {n_flip} flips but only {len(candidates)} train samples are eligible"
        )
    chosen = candidates[torch.randperm(len(candidates), generator=gen)[:n_flip]].sort().values
    if spec.kind == "uniform":
        shift = torch.randint(1, k, (n_flip,), generator=gen)  # never maps a label to itself
        y[chosen] = (y[chosen] + shift) % k
    elif spec.target is not None:
        y[chosen] = spec.target
    else:
        y[chosen] = (y[chosen] + 1) % k
    return dataclasses.replace(splits, y_train=y, poisoned=chosen)
