"""The dataset registry (kept apart so dataset modules and the package init can both import it)."""

from certstudy.data.base import Dataset
from certstudy.registry import Registry

DATASETS: Registry[type[Dataset]] = Registry("dataset")
