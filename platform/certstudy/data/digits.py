"""scikit-learn's bundled 8x8 digits: the embedded default (ships with sklearn, no download)."""

from __future__ import annotations

import torch
from pydantic import Field

from certstudy.data.base import DatasetOptions, Splits, split_indices
from certstudy.data.registry import DATASETS


class DigitsOptions(DatasetOptions):
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)


@DATASETS.register("digits")
class Digits:
    """1,797 grey-scale 8x8 digits, 10 classes, pixels scaled from 0..16 to [0, 1]."""

    Options = DigitsOptions

    @staticmethod
    def load(options: DigitsOptions, seed: int, data_dir: str) -> Splits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(bunch.target, dtype=torch.long)
        train, val, test = split_indices(len(y), options.val_fraction, options.test_fraction, seed)
        return Splits(x[train], y[train], x[val], y[val], x[test], y[test], num_classes=10)
