"""Datasets by name; each returns deterministic train/val/test splits (see base.Splits)."""

from certstudy.data import digits, synthetic, torchvision_sets  # noqa: F401  (registration)
from certstudy.data.base import DatasetParams, Splits
from certstudy.data.poisoning import Poisoning, poison
from certstudy.data.registry import DATASETS

__all__ = ["DATASETS", "DatasetParams", "Poisoning", "Splits", "poison"]
