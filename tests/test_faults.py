"""Hard kills at random moments, then ``certstudy resume`` (issue: hardening, item 5): exactly the
planned Optuna trials, one MLflow run per trial, no trial proposed twice, no epoch missing or
duplicated in MLflow, no stale fail_reason. Real SIGKILLs to the driver's process group (the driver
and its Ray), over several cycles; ``bench/faults.py`` runs the same cycles 20 times."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _faults_bench():
    spec = importlib.util.spec_from_file_location("faults_bench", REPO / "bench" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [11, 12])
def test_random_hard_kills_then_resume_lose_and_duplicate_nothing(seed: int, tmp_path: Path) -> None:
    report = _faults_bench().run_cycles(tmp_path, cycles=5, seed=seed, max_delay_s=8.0)
    assert report.kills >= 3, report  # the kills landed mid-study (start-up included), not after it ended
    assert report.duplicates == [], report.duplicates
    assert report.lost == [], report.lost
    assert report.wasted == [], report.wasted
