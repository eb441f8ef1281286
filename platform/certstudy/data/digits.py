"""scikit-learn's bundled 8x8 digits: the embedded default (ships with sklearn, no download).

The data file is read straight from the installed scikit-learn package: importing
``sklearn.datasets`` costs seconds (it pulls in most of scikit-learn and SciPy), paid again by
every fresh Ray worker; ``load_digits`` is the fallback when the file is not where it should be.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from certstudy.data.base import DatasetParams, Splits, split_indices
from certstudy.data.registry import DATASETS


class DigitsParams(DatasetParams):
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_training_images(self) -> DigitsParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (got {self.val_fraction + self.test_fraction:g}): "
                "nothing would be left to train on"
            )
        return self


@DATASETS.register("digits")
class Digits:
    """1,797 grey-scale 8x8 digits, 10 classes, pixels 0..16 stored as uint8 and scaled to [0, 1] per batch."""

    Params = DigitsParams
    flip_keeps_labels = False  # a mirrored digit is another symbol, or none

    @staticmethod
    def shape(options: DigitsParams) -> tuple[tuple[int, ...], int]:
        return (1, 8, 8), 10

    @staticmethod
    def normalization(options: DigitsParams) -> None:
        return None  # no published constants: the train split's own statistics

    @staticmethod
    def unavailable(options: DatasetParams, data_dir: str) -> None:
        return None  # bundled with scikit-learn: nothing to fetch

    @staticmethod
    def load(options: DigitsParams, seed: int, data_dir: str) -> Splits:
        pixels, labels = _read_digits()
        x = torch.tensor(pixels, dtype=torch.uint8).view(-1, 1, 8, 8)  # 0..16
        y = torch.tensor(labels, dtype=torch.long)
        train, val, test = split_indices(len(y), options.val_fraction, options.test_fraction, seed)
        return Splits(x[train], y[train], x[val], y[val], x[test], y[test], num_classes=10, divisor=16.0)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for root in locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.exists():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target
