"""What one epoch's report costs a trial inside a study, with and without a checkpoint.

A 1-trial study of a tiny trial (an MLP on digits, about 20 ms of compute per epoch) is run three
ways: by hand (``run_trial`` with a reporter that does nothing: the compute alone), as a study that
saves every epoch (``checkpoint: {every_epochs: 1}``) and as a study that saves only at its end
(``checkpoint: {every_s: 3600}``). Per epoch it prints the median time between two reports as the
trial sees it (Ray's ``time_this_iter_s``, which includes the time blocked in ``tune.report``), and
the cost the study adds over the compute: the report round trip alone (no checkpoint) and what a
checkpoint adds to it. It also times the pieces of the round trip that the driver runs while the
trial waits: Optuna's ``trial.report`` on the study's sqlite storage, and a Ray actor call (the
stop board read). Why the wait stays: README, Benchmarks.

    python bench/report_cost.py            # 300 epochs per run: about 2 minutes on 2 cores
    python bench/report_cost.py --epochs 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from certstudy.study.spec import validate_spec


def study_dict(name: str, epochs: int, checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "params": {"width": 32, "depth": 1}},
        "method": {"name": "erm"},
        "training": {"epochs": epochs, "batch_size": 512},
        "evaluation": {"attack": {"eps": 0.05, "steps": 1}, "val_subset": 64, "test_subset": 64},
        "search": {"num_trials": 1, "max_concurrent": 1, "seed": 0},
        "resources": {"cpu": 1},
        "checkpoint": checkpoint,
    }


def by_hand(study: dict[str, Any], data_dir: str) -> list[float]:
    """Seconds between two reports of the trial run directly (compute only)."""
    from certstudy.trial import run_trial

    stamps: list[float] = []
    cfg = validate_spec(study, "bench").trial_config()
    run_trial(cfg, lambda m, d: None if "best/epoch" in m else stamps.append(time.perf_counter()), data_dir=data_dir)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def as_study(study: dict[str, Any], tmp: Path) -> list[float]:
    """``time_this_iter_s`` of every per-epoch result of the study's one trial."""
    path, work = tmp / f"{study['name']}.yaml", tmp / "work"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "CERTSTUDY_DATA": str(tmp / "data")}
    run = subprocess.run(
        [sys.executable, "-m", "certstudy.cli", "launch", str(path), "--workdir", str(work)],
        capture_output=True,
        text=True,
        env=env,
    )
    if run.returncode != 0:
        raise SystemExit(run.stdout[-2000:] + run.stderr[-2000:])
    (result,) = (work / study["name"] / "ray").glob("*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    return [r["time_this_iter_s"] for r in rows if "best/epoch" not in r][1:]  # the first includes start-up


def optuna_report_ms(tmp: Path, n: int = 100) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{tmp / 'optuna-bench.db'}", study_name="bench")
    trial = study.ask()
    t = time.perf_counter()
    for step in range(n):
        trial.report(0.5, step)
    return (time.perf_counter() - t) / n * 1e3


def actor_call_ms(n: int = 200) -> float:
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        def read(self, key: str) -> None:
            return None

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        board = Board.remote()  # type: ignore[attr-defined]
        ray.get(board.read.remote("warm-up"))
        t = time.perf_counter()
        for _ in range(n):
            ray.get(board.read.remote("t"))
        return (time.perf_counter() - t) / n * 1e3
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args()
    console = Console(width=140)
    with tempfile.TemporaryDirectory(prefix="certstudy-report-cost-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = str(tmp / "data")
        compute = statistics.median(by_hand(study_dict("hand", args.epochs, {"every_epochs": 1}), data_dir))
        every = statistics.median(as_study(study_dict("every", args.epochs, {"every_epochs": 1}), tmp / "a"))
        end_only = statistics.median(as_study(study_dict("end", args.epochs, {"every_s": 3600}), tmp / "b"))
        optuna_ms = optuna_report_ms(tmp)
        actor_ms = actor_call_ms()

    table = Table(title=f"one epoch's report in a 1-trial study ({args.epochs} epochs, medians, 2 cores)")
    for col in ("run", "s between reports", "over the compute (ms)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    table.add_row("by hand (compute only)", f"{compute:.4f}", "-")
    table.add_row("study, checkpoint every epoch", f"{every:.4f}", f"{(every - compute) * 1e3:.1f}")
    table.add_row("study, checkpoint at the end only", f"{end_only:.4f}", f"{(end_only - compute) * 1e3:.1f}")
    console.print(table)
    console.print(
        f"a checkpoint adds {(every - end_only) * 1e3:.1f} ms to its report; a report without one costs the trial "
        f"{(end_only - compute) * 1e3:.1f} ms (blocked in tune.report until the driver has taken the result). "
        f"Pieces of that wait: Optuna trial.report on sqlite {optuna_ms:.2f} ms, a Ray actor call (stop board read) "
        f"{actor_ms:.2f} ms.",
        highlight=False,
    )
    console.print(
        f"report_ms checkpoint {(every - compute) * 1e3:.1f} plain {(end_only - compute) * 1e3:.1f}", highlight=False
    )


if __name__ == "__main__":
    main()
