"""The test suite's hold: trials that wait at a known epoch until the test releases them.

Installed in a study's trial processes through ``$CERTSTUDY_TRIAL_HOOK`` (``study/engine/trainable.py``)
by ``hold_env``: trial FIRST and every later one, having reported epoch EPOCH, create
``DIR/held-<number>`` and wait until ``DIR/release`` exists. An interrupt or kill test then acts while
trials sit at a known point instead of racing them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from certstudy.study.engine.trainable import TRIAL_HOOK_ENV

HOLD_ENV = "CERTSTUDY_TEST_HOLD"


def hold_env(folder: Path, first: int, epoch: int) -> dict[str, str]:
    """Environment variables of a ``certstudy`` process whose trials hold (see the module docstring)."""
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    return {TRIAL_HOOK_ENV: f"{Path(__file__).stem}:hold", HOLD_ENV: f"{folder}:{first}:{epoch}", "PYTHONPATH": path}


def hold(trial_number: int, epoch: int) -> None:
    folder, first, at = os.environ[HOLD_ENV].rsplit(":", 2)
    if trial_number < int(first) or epoch != int(at):
        return
    (Path(folder) / f"held-{trial_number}").touch()
    while not (Path(folder) / "release").exists():
        time.sleep(0.05)
