"""The soundness audit: every method's trained model, every deterministic certificate, zero violations;
and the audit does catch a certificate that claims too much."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from certstudy.certify.audit import audit
from certstudy.certify.base import Certificate
from certstudy.methods import METHODS
from certstudy.trial import TrialConfig, run_trial

METHOD_PARAMS = {
    "erm": {},
    "adversarial": {"eps": 0.1, "steps": 3},
    "hr": {"alpha": 0.05, "r": 0.05, "eps": 0.3, "steps": 3},
    "smoothing": {"sigma": 0.25},
    "gloro": {"eps": 0.3, "loss": "trades"},
    "crown_ibp": {"eps": 0.05},
}


def test_every_registered_method_is_audited() -> None:
    assert set(METHOD_PARAMS) == set(METHODS.names())


@pytest.mark.parametrize("method", sorted(METHOD_PARAMS))
def test_trained_models_have_no_audit_violations(method: str, tmp_path: Path) -> None:
    cfg = TrialConfig.model_validate(
        {
            "model": {"name": "mlp", "params": {"width": 48, "depth": 2}},
            "method": {"name": method, "params": METHOD_PARAMS[method]},
            "training": {"epochs": 3, "batch_size": 128, "lr": 0.005},
            "evaluation": {
                "attack": {"norm": "linf", "eps": 0.05, "steps": 2},
                "certifiers": [
                    {"name": "lipschitz"},
                    {"name": "ibp", "params": {"norm": "linf"}},
                    {"name": "crown", "params": {"norm": "l2"}},
                ],
                "radii": {"l2": [0.0, 0.1, 0.2, 0.4], "linf": [0.0, 0.01, 0.02, 0.05]},
                "val_subset": 64,
                "test_subset": 120,
            },
        }
    )
    final = run_trial(cfg, lambda m, d: None, data_dir=str(tmp_path))
    assert final["audit/violations"] == 0
    for cert in ("lipschitz", "ibp", "crown"):
        assert final[f"audit/violations_{cert}"] == 0
    assert final["audit/points"] == sum(final[f"audit/points_{c}"] for c in ("lipschitz", "ibp", "crown"))
    assert final["audit/points_lipschitz"] > 0  # something was certified and attacked


def test_audit_catches_an_overclaiming_certificate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(50, 1, 4, 4)
    with torch.no_grad():
        preds = model(x).argmax(1)
    honest = Certificate("fake", "l2", preds, torch.full((50,), 1e-4, dtype=torch.float64))
    assert audit(model, x, honest, steps=50, restarts=5, bounds=None, seed=0).violations == 0
    inflated = Certificate(
        "fake", "l2", preds, torch.full((50,), 10.0, dtype=torch.float64)
    )  # a linear model flips well within 10
    found = audit(model, x, inflated, steps=50, restarts=5, bounds=None, seed=0)
    assert found.points == 50 and found.violations == 50
    abstaining = Certificate("fake", "linf", torch.full((50,), -1), torch.full((50,), torch.nan, dtype=torch.float64))
    assert audit(model, x, abstaining, steps=50, restarts=5, bounds=(0.0, 1.0), seed=0).points == 0
