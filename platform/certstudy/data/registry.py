"""The dataset registry (kept apart so dataset modules and the package init can both import it)."""

from certstudy.registry import Registry

DATASETS: Registry = Registry("dataset")
