"""Platform overhead: the same trial configurations by hand and as a certstudy study, at two epoch lengths.

(a) ``concurrent.futures.ProcessPoolExecutor(2)`` calling the trial function directly, one thread
    per trial: no Ray, MLflow or Optuna (the pool's wall includes starting its worker processes);
(b) ``certstudy launch`` (the command, in a subprocess, as a user runs it) of a study whose start
    points are exactly those configurations, 2 trials at a time with one thread each.

Both run PGD training of an MLP on digits; the attack's step count sets the epoch length, calibrated
on this machine to about 0.2 s ("short") and about 2 s ("long") per epoch, with about 20 s of compute
per trial. For each length it prints both walls, the ratio (b)/(a) (targets: <= 1.15 short, <= 1.05
long) and where (b)'s extra time goes: start-up (process start to first trial), the trials (first
start to last end, against (a)'s wall), the overhead per epoch that implies, and what happens after
the last trial (teardown, dashboard, exit). The last line reads ``ratio short <x> long <y>``.

    python bench/platform_overhead.py            # 8 configurations, ~20 s each: about 8 minutes on 2 cores
    python bench/platform_overhead.py --quick    # 4 configurations, ~5 s each: under 5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from certstudy.study.spec.loading import validate_spec
from certstudy.study.spec.space import resolve
from launched import launch_timed

CONCURRENT = 2
SHORT_S, LONG_S = 0.2, 2.0  # target epoch lengths
# Eight PGD-training configurations of equal cost (the cost is in the attack steps): lr, eps, width.
CONFIGS = [
    (1e-3, 0.10, 128),
    (3e-3, 0.05, 128),
    (2e-3, 0.15, 128),
    (5e-4, 0.08, 128),
    (1e-3, 0.12, 128),
    (3e-3, 0.03, 128),
    (2e-3, 0.06, 128),
    (5e-4, 0.18, 128),
]


def study_dict(name: str, steps: int, epochs: int, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    points = [{"training.lr": lr, "adversarial.eps": eps, "model.width": w} for lr, eps, w in CONFIGS[:n]]
    study = {
        "name": name,
        "dataset": {"name": "digits", "poisoning": {"rate": 0.1}},
        "model": {"name": "mlp", "params": {"depth": 2}, "search": {"width": {"type": "int", "low": 32, "high": 256}}},
        "method": {
            "name": "adversarial",
            "params": {"steps": steps},
            "search": {"eps": {"type": "float", "low": 0.0, "high": 0.2}},
        },
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        },
        "evaluation": {"attack": {"eps": 0.1, "steps": 5}, "val_subset": 128, "test_subset": 200},
        "search": {
            "sampler": "random",
            "num_trials": n,
            "max_concurrent": CONCURRENT,
            "seed": 0,
            "start_points": points,
        },
        "resources": {"cpu": 1},
    }
    return study, points


def _run_one(study: dict[str, Any], point: dict[str, Any], data_dir: str) -> tuple[float, list[float]]:
    """In a pool worker: the trial function, one thread; its wall and the time of each report."""
    from certstudy.trial import run_trial

    cfg = resolve(validate_spec(study, "bench"), point).trial_config()
    stamps: list[float] = []
    t0 = time.perf_counter()
    run_trial(cfg, lambda metrics, checkpoint_dir: stamps.append(time.perf_counter() - t0), data_dir=data_dir)
    return time.perf_counter() - t0, stamps


def calibrate(data_dir: str) -> tuple[float, float]:
    """Seconds per epoch ~ a + b * steps on this machine (one thread), from two short trials of 10
    and 80 PGD steps: the median of their epochs after the first (the first includes the trial's
    set-up; one 3-epoch sample per length made the slope twice the real one)."""
    measured = []
    low, high = 10, 80
    for steps in (low, high):
        study, points = study_dict("calibrate", steps, 6, 1)
        with ProcessPoolExecutor(1) as pool:
            _, stamps = pool.submit(_run_one, study, points[0], data_dir).result()
        per_epoch = sorted(b - a for a, b in zip(stamps[:-2], stamps[1:-1]))  # epochs 1.. (not the first or the end)
        measured.append(per_epoch[len(per_epoch) // 2])
    b = (measured[1] - measured[0]) / (high - low)
    return measured[0] - low * b, b


@dataclass
class Side:
    wall: float
    trials_span: float = 0.0
    startup: float = 0.0
    after: float = 0.0
    epoch_s: float = 0.0  # median seconds per epoch (b: between reports, the report's wait included)
    completed: int = 0
    parts: dict[str, float] = field(default_factory=dict)


def by_hand(study: dict[str, Any], points: list[dict[str, Any]], data_dir: str) -> Side:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(_run_one, [study] * len(points), points, [data_dir] * len(points)))
    wall = time.perf_counter() - t0
    epochs = [b - a for _, stamps in results for a, b in zip(stamps[:-2], stamps[1:-1])]
    return Side(wall, epoch_s=sorted(epochs)[len(epochs) // 2] if epochs else 0.0, completed=len(results))


def as_study(study: dict[str, Any], tmp: Path) -> Side:
    run = launch_timed(study, tmp, tmp / "work")
    wall, tm = run.wall, run.timings
    iterations = []  # seconds between a trial's reports, as the trial saw them (its epoch plus the report's wait)
    for result in (tmp / "work" / study["name"] / "ray").glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        iterations += [r["time_this_iter_s"] for r in rows[1:-1] if "time_this_iter_s" in r]
    pre_session = wall - tm["session_to_exit"]
    trials_start, trials_end = tm["fit_start"] + tm["first_trial_start"], tm["fit_start"] + tm["last_trial_end"]
    return Side(
        wall,
        trials_span=trials_end - trials_start,
        startup=pre_session + trials_start,
        after=tm["session_to_exit"] - trials_end,
        epoch_s=sorted(iterations)[len(iterations) // 2] if iterations else 0.0,
        completed=sum(1 for line in run.stdout.splitlines() if " completed: " in line),
        parts={
            "CLI imports and validation, local Ray's start (alongside the imports)": pre_session,
            "session set-up (MLflow parent run, Optuna study)": tm["setup"],
            "preflight and Tuner": tm["fit_start"] - tm["setup"],
            "Tuner.fit to first trial started (worker start, imports, data)": tm["first_trial_start"],
            "teardown (close runs, Ray shutdown)": tm.get("teardown", 0.0),
            "dashboard": tm.get("dashboard", 0.0),
        },
    )


def main() -> None:
    # One thread per trial in (a) as in (b), where Ray sets this for its workers: without it the pool's
    # workers start OpenMP/BLAS thread pools of their own and two trials oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 configurations of about 5 s each")
    args = parser.parse_args()
    n, compute_s = (4, 5.0) if args.quick else (len(CONFIGS), 20.0)
    console = Console(width=130)
    ratios: dict[str, float] = {}
    sides: list[Side] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = str(tmp / "data")
        a, b = calibrate(data_dir)
        console.print(f"calibrated: seconds per epoch ~ {a:.3f} + {b:.4f} x PGD steps (one thread)", highlight=False)
        table = Table(title=f"platform overhead: {n} PGD-training trials, {CONCURRENT} at a time, 1 thread each")
        for col in ("epochs", "(a) pool wall", "(b) launch wall", "ratio (b)/(a)", "target", "(b) start-up"):
            table.add_column(col, justify="right")
        for col in ("epoch (a)", "epoch (b)", "per epoch (b)-(a)", "(b) after last trial"):
            table.add_column(col, justify="right")
        breakdown = Table(title="where (b)'s fixed time goes (seconds)")
        breakdown.add_column("")
        for label, epoch_s, target in (("short", SHORT_S, 1.15), ("long", LONG_S, 1.05)):
            steps = max(1, round((epoch_s - a) / b))
            epochs = max(3, round(compute_s / epoch_s))
            study, points = study_dict(f"overhead-{label}", steps, epochs, n)
            hand = by_hand(study, points, data_dir)
            launched = as_study(study, tmp)
            ratio = launched.wall / hand.wall
            ratios[label] = ratio
            table.add_row(
                f"{label}: {epochs} x {steps} steps",
                f"{hand.wall:.1f} s",
                f"{launched.wall:.1f} s",
                f"{ratio:.3f}",
                f"<= {target}",
                f"{launched.startup:.1f} s",
                f"{hand.epoch_s * 1000:.0f} ms",
                f"{launched.epoch_s * 1000:.0f} ms",
                f"{(launched.epoch_s - hand.epoch_s) * 1000:+.0f} ms",
                f"{launched.after:.1f} s",
            )
            breakdown.add_column(label, justify="right")
            sides.append(launched)
            if launched.completed != n:
                console.print(f"warning: {label}: {launched.completed} of {n} trials completed", highlight=False)
        console.print(table)
        console.print(
            "start-up: process start to the first trial started; epoch: median seconds between a trial's reports "
            "((a): its epoch; (b): its epoch plus the wait in tune.report); after: the last trial's end to the "
            "process's exit (summary, teardown, dashboard)",
            highlight=False,
        )
        for part in sides[0].parts:
            breakdown.add_row(part, *(f"{s.parts[part]:.1f}" for s in sides))
        console.print(breakdown)
    print(f"ratio short {ratios['short']:.3f} long {ratios['long']:.3f}")


if __name__ == "__main__":
    main()
