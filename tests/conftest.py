"""Shared fixtures. Integration tests start real Ray and MLflow; nothing here mocks them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


def tiny_study(name: str = "tiny", **overrides: object) -> dict:
    """A small, fast study on digits used by several tests."""
    study: dict = {
        "name": name,
        "dataset": {"name": "digits", "poisoning": {"rate": 0.1}},
        "model": {"name": "mlp", "params": {"width": 32, "depth": 1}},
        "methods": [
            {"name": "erm"},
            {"name": "adversarial", "params": {"steps": 2}, "search": {"eps": {"type": "float", "low": 0.02, "high": 0.1}}},
        ],
        "training": {"epochs": 3, "batch_size": 128, "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}},
        "evaluation": {"attack": {"eps": 0.05, "steps": 3}, "val_subset": 128, "test_subset": 200},
        "objectives": [{"metric": "val/robust_acc", "mode": "max"}],
        "search": {"num_trials": 3, "max_concurrent": 2, "seed": 3},
        "resources": {"cpu": 1},
    }
    study.update(overrides)
    return study
