"""What every dataset returns: fixed train/val/test tensors and what the trial needs to know."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor


class DatasetOptions(BaseModel):
    """Base for a dataset's typed options (a study file's ``dataset.options``)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Splits:
    """Train/val/test tensors; inputs are float (N, *input_shape), labels int64 (N,)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    # The box inputs live in ([0, 1] for images); attacks clamp to it. None: unbounded (synthetic).
    bounds: tuple[float, float] | None = (0.0, 1.0)
    # Indices of train labels changed by poisoning (empty when there is none).
    poisoned: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Splits":
        return dataclasses.replace(self, **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")})


class Dataset(Protocol):
    """A registered dataset: typed options, its shape (known without loading, for validation), the
    per-channel normalisation its papers use (None: the train split's own), and a loader that is
    deterministic in ``seed``."""

    Options: type[DatasetOptions]

    @staticmethod
    def shape(options: DatasetOptions) -> tuple[tuple[int, ...], int]: ...

    @staticmethod
    def normalization(options: DatasetOptions) -> tuple[tuple[float, ...], tuple[float, ...]] | None: ...

    @staticmethod
    def load(options: DatasetOptions, seed: int, data_dir: str) -> Splits: ...


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dim 1) mean and std of a batch of inputs, as floats (std floored at 1e-6)."""
    per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
    var, mean = torch.var_mean(per_channel, dim=1)
    std = var.double().sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded permutation cut into disjoint train/val/test index sets."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return train.sort().values, val.sort().values, test.sort().values
