"""What every dataset returns: fixed train/val/test tensors and what the trial needs to know."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from certstudy.schema import Schema


class DatasetParams(Schema):
    """Base for a dataset's typed options (a study file's ``dataset.options``)."""


@dataclass
class Splits:
    """Train/val/test tensors, inputs (N, *input_shape) in their files' dtype, labels int64 (N,).

    Image inputs stay compact (uint8 for MNIST, CIFAR and the digits) on the trial's device, a
    quarter of float32's memory, and become float in the input box per batch (``floats``):
    x / ``divisor``, the same division the files' pixel range implies. Float inputs (synthetic
    data) have no divisor and pass through unchanged.
    """

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
    # Stored inputs divided by this are the floats the model sees (None: stored as floats already).
    divisor: float | None = None

    def floats(self, x: Tensor) -> Tensor:
        """Stored inputs (any slice of the splits) as float32 in the input box; floats pass through."""
        return x if self.divisor is None or x.is_floating_point() else x.to(torch.float32) / self.divisor

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Splits:
        return dataclasses.replace(
            self,
            **{k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")},
        )


class Dataset(Protocol):
    """A registered dataset: typed options, its shape (known without loading, for validation), the
    per-channel normalisation its papers use (None: the train split's own), and a loader that is
    deterministic in ``seed``."""

    Params: type[DatasetParams]
    flip_keeps_labels: bool
    """Whether a horizontal flip keeps every label (``dataset.augment.flip`` is refused otherwise)."""

    @staticmethod
    def shape(options: DatasetParams) -> tuple[tuple[int, ...], int]: ...

    @staticmethod
    def normalization(options: DatasetParams) -> tuple[tuple[float, ...], tuple[float, ...]] | None: ...

    @staticmethod
    def load(options: DatasetParams, seed: int, data_dir: str) -> Splits: ...

    @staticmethod
    def unavailable(options: DatasetParams, data_dir: str) -> str | None:
        """Why ``load`` could not get the files (absent, and not downloadable from here), in one
        line; None when it can. Asked by ``certstudy validate`` and ``launch`` before anything starts."""
        ...


def channel_stats(splits: Splits, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (dim 1) mean and std of the train inputs as floats (std floored at 1e-6), summed in
    float64 over chunks so no float copy of the whole split is made."""
    x = splits.x_train
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros(x.shape[1], dtype=torch.float64)
    dims = [0] + list(range(2, x.dim()))
    for i in range(0, len(x), chunk):
        part = splits.floats(x[i : i + chunk]).double()
        total += part.sum(dims).cpu()
        squares += part.square().sum(dims).cpu()
    count = x.numel() / x.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A seeded permutation cut into disjoint train/val/test index sets."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return train.sort().values, val.sort().values, test.sort().values
