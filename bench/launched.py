"""``certstudy launch`` of a study as a user runs it (a subprocess), timed, with the driver's own
timings (``CERTSTUDY_TIMINGS``): shared by the benches that compare a study with its trials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Launched:
    wall: float  # process start to exit
    stdout: str
    timings: dict[str, float] = field(default_factory=dict)  # the session's, from CERTSTUDY_TIMINGS


def launch_timed(study: dict[str, Any], folder: Path, workdir: Path, env: dict[str, str] | None = None) -> Launched:
    """Writes ``study`` into ``folder`` and launches it into ``workdir``; exits the bench with the
    command's output if it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    path, timings_file = folder / f"{study['name']}.yaml", folder / f"{study['name']}.timings.json"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    timings_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {}), "CERTSTUDY_TIMINGS": str(timings_file)},
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"certstudy launch failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return Launched(wall, done.stdout, json.loads(timings_file.read_text()))
