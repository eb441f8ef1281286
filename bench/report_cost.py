"""What one epoch's report costs a trial inside a study, with and without a checkpoint.

A 1-trial study of a tiny trial (an MLP on digits, about 13 ms of compute per epoch) is run by hand
(``run_trial`` with a reporter that does nothing: the compute alone) and by ``certstudy launch``,
saving every epoch (``checkpoint: {every_epochs: 1}``), saving only at its end (``checkpoint:
{every_s: 3600}``), and saving only at its end in a study that prunes (a median pruner that never
fires: its reports block), each at two lengths (``--epochs`` and four times that). The
per-epoch wall is the difference of the two walls over the difference of epochs, so start-up and
teardown cancel; what the study adds per epoch over the compute is the report's round trip
(``tune.report`` blocks until the driver has taken the result and asked for the next; Ray's own
``time_this_iter_s`` leaves that wait out) and, with a checkpoint, its write and Ray's copy. It also
times two pieces of the driver's side of that wait: Optuna's ``trial.report`` on the study's sqlite
storage, and a Ray actor call (the stop board read). Why the wait stays: README, Benchmarks.

    python bench/report_cost.py                # 150 and 600 epochs: about 4 minutes on 2 cores
    python bench/report_cost.py --epochs 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from certstudy.study.spec.loading import validate_spec
from launched import launch_timed

NEVER_PRUNES = {"pruner": {"name": "median", "n_startup_trials": 100000}}  # prunes nothing, but reports block


def study_dict(
    name: str, epochs: int, checkpoint: dict[str, Any], pruning: dict[str, Any] | None = None
) -> dict[str, Any]:
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
        **({"pruning": pruning} if pruning else {}),
    }


def by_hand(study: dict[str, Any], data_dir: str) -> float:
    """Wall seconds of the trial run directly (compute only)."""
    from certstudy.trial import run_trial

    cfg = validate_spec(study, "bench").trial_config()
    t = time.perf_counter()
    run_trial(cfg, lambda m, d: None, data_dir=data_dir)
    return time.perf_counter() - t


def as_study(study: dict[str, Any], tmp: Path) -> float:
    """Wall seconds of ``certstudy launch`` of the 1-trial study."""
    return launch_timed(study, tmp, tmp / "work", env={"CERTSTUDY_DATA": str(tmp.parent / "data")}).wall


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
    parser.add_argument("--epochs", type=int, default=150, help="the shorter length; the longer is 4x")
    args = parser.parse_args()
    short, long = args.epochs, 4 * args.epochs
    console = Console(width=140)
    per_epoch: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="certstudy-report-cost-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir = str(tmp / "data")
        walls = [by_hand(study_dict("hand", n, {"every_epochs": 1}), data_dir) for n in (short, long)]
        per_epoch["hand"] = (walls[1] - walls[0]) / (long - short)
        for key, policy, pruning in (
            ("every", {"every_epochs": 1}, None),
            ("end", {"every_s": 3600}, None),
            ("prunes", {"every_s": 3600}, NEVER_PRUNES),
        ):
            walls = [as_study(study_dict(f"{key}{n}", n, policy, pruning), tmp / f"{key}{n}") for n in (short, long)]
            per_epoch[key] = (walls[1] - walls[0]) / (long - short)
        optuna_ms = optuna_report_ms(tmp)
        actor_ms = actor_call_ms()

    compute = per_epoch["hand"]
    table = Table(title=f"one epoch in a 1-trial study ({short} vs {long} epochs, wall difference per epoch, 2 cores)")
    for col in ("run", "ms per epoch", "over the compute (ms)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    table.add_row("by hand (compute only)", f"{compute * 1e3:.1f}", "-")
    rows = (
        ("every", "study, checkpoint every epoch"),
        ("end", "study, checkpoint at the end only"),
        ("prunes", "study that prunes, checkpoint at the end only"),
    )
    over = {key: (per_epoch[key] - compute) * 1e3 for key, _ in rows}
    for key, label in rows:
        table.add_row(label, f"{per_epoch[key] * 1e3:.1f}", f"{over[key]:.1f}")
    console.print(table)
    console.print(
        f"a checkpoint adds {over['every'] - over['end']:.1f} ms to its report. A report without one costs the trial "
        f"{over['end']:.1f} ms in a study that does not prune (handed to the trial's reporting thread) and "
        f"{over['prunes']:.1f} ms in one that prunes (blocked until the driver has taken it, so that a decision is on "
        f"the board before the next epoch). Pieces of the driver's side: Optuna trial.report on sqlite "
        f"{optuna_ms:.2f} ms, a Ray actor call (the stop board read) {actor_ms:.2f} ms.",
        highlight=False,
    )
    console.print(
        f"report_ms checkpoint {over['every']:.1f} plain {over['end']:.1f} pruning {over['prunes']:.1f}",
        highlight=False,
    )


if __name__ == "__main__":
    main()
