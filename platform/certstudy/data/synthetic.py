"""Two Gaussian clusters at +-mu with label noise: the setting of Wang, Zhang & Arora (ICML 2024).

x = y_c * mu + z, z ~ N(0, I_d), mu = ||mu|| e_1, y_c uniform in {-1, +1}; the observed label is
y_c flipped with probability beta, on every split (the test error floor is beta). Classes are
encoded 0 (y=-1) and 1 (y=+1). Inputs are unbounded, so attacks do not clamp.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from certstudy.data.base import DatasetParams, Splits
from certstudy.data.registry import DATASETS


class SyntheticMixtureParams(DatasetParams):
    d: int = Field(1000, ge=1)
    mu_norm: float = Field(math.sqrt(20.0), gt=0)
    beta: float = Field(0.1, ge=0, lt=0.5)
    n_train: int = Field(100, ge=2)
    n_val: int = Field(500, ge=1)
    n_test: int = Field(2000, ge=1)


def sample_mixture(
    n: int, d: int, mu_norm: float, beta: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (x, noisy labels in {0,1}, clean labels in {0,1})."""
    clean = torch.randint(0, 2, (n,), generator=gen)
    sign = clean.float() * 2 - 1
    x = torch.randn(n, d, generator=gen)
    x[:, 0] += sign * mu_norm
    flip = torch.rand(n, generator=gen) < beta
    noisy = torch.where(flip, 1 - clean, clean)
    return x, noisy, clean


@DATASETS.register("synthetic_mixture")
class SyntheticMixture:
    Params = SyntheticMixtureParams
    flip_keeps_labels = False

    @staticmethod
    def shape(options: SyntheticMixtureParams) -> tuple[tuple[int, ...], int]:
        return (options.d,), 2

    @staticmethod
    def normalization(options: SyntheticMixtureParams) -> None:
        return None

    @staticmethod
    def unavailable(options: DatasetParams, data_dir: str) -> None:
        return None  # generated: nothing to fetch

    @staticmethod
    def load(options: SyntheticMixtureParams, seed: int, data_dir: str) -> Splits:
        gen = torch.Generator().manual_seed(seed)
        parts = [
            sample_mixture(n, options.d, options.mu_norm, options.beta, gen)
            for n in (options.n_train, options.n_val, options.n_test)
        ]
        (xtr, ytr, _), (xva, yva, _), (xte, yte, _) = parts
        return Splits(xtr, ytr, xva, yva, xte, yte, num_classes=2, bounds=None)
