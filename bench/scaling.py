"""Trials per minute on 1 worker node vs 2 worker nodes (logical nodes on one machine).

    python bench/scaling.py [--trials 6] [--epochs 100]

A head with no CPU (the driver's node) and 1 or 2 worker nodes of 1 CPU each, built with
``ray.cluster_utils.Cluster``; the same study (fixed trials of about 20 s of compute each on this
machine) runs on each, with Ray Tune storage on a shared path. Reports completed trials per minute,
the ratio (target >= 1.8x) and where the rest goes: start-up before the first trial, the time the
trials spent computing (Ray's time_total_s, summed), and the driver's tracking time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from rich.console import Console
from rich.table import Table

from certstudy.analysis.reruns import write_section
from certstudy.study.engine.runner import StudyOutcome, launch
from certstudy.study.spec.loading import validate_spec
from certstudy.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]


def study(trials: int, epochs: int) -> dict:
    return {
        "name": "scaling",
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "params": {"width": 256, "depth": 2}},
        "method": {"name": "adversarial", "params": {"eps": 0.05, "steps": 5}},
        "training": {"epochs": epochs, "batch_size": 64},
        "evaluation": {"attack": {"eps": 0.05, "steps": 5}, "val_subset": 200},
        "search": {"sampler": "random", "num_trials": trials, "max_concurrent": 4, "seed": 0},
        "resources": {"cpu": 1},
    }


def run(workers: int, trials: int, epochs: int, root: Path) -> StudyOutcome:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        spec = validate_spec(study(trials, epochs), "bench")
        return launch(
            spec,
            Workdir(root / f"w{workers}"),
            address=cluster.address,
            storage=str(root / f"shared{workers}"),
            console=Console(quiet=True),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="certstudy-scaling-") as tmp:
        outcomes = {w: run(w, args.trials, args.epochs, Path(tmp)) for w in (1, 2)}
    table = Table(title=f"{args.trials} trials of {args.epochs} epochs, 1 CPU per worker node")
    for col in (
        "workers",
        "completed",
        "wall (s)",
        "trials / min",
        "first trial starts (s)",
        "trial compute (s, summed)",
        "per trial (s)",
        "driver tracking (s)",
    ):
        table.add_column(col, justify="right")
    rate = {}
    for w, o in outcomes.items():
        t = o.timings
        done = o.counts.get("completed", 0)
        rate[w] = done / t["total"] * 60
        table.add_row(
            str(w),
            str(done),
            f"{t['total']:.0f}",
            f"{rate[w]:.2f}",
            f"{t.get('setup', 0) + t.get('first_trial_start', 0):.0f}",
            f"{t.get('trial_compute', 0):.0f}",
            f"{t.get('trial_compute', 0) / max(done, 1):.1f}",
            f"{t.get('tracking', 0):.1f}",
        )
    console = Console()
    console.print(table)
    ratio = rate[2] / rate[1]
    per = {w: o.timings.get("trial_compute", 0) / max(o.counts.get("completed", 1), 1) for w, o in outcomes.items()}
    slowdown = per[1] / per[2] if per[2] else float("nan")
    rest = ratio / (2 * slowdown) if slowdown == slowdown else float("nan")
    verdict = (
        f"2 workers / 1 worker: {ratio:.2f}x trials per minute (target >= 1.8x) = 2 nodes x {slowdown:.3f} (per-trial "
        f"compute, {per[1]:.1f} s alone vs {per[2]:.1f} s "
        f"side by side on this machine's {os.cpu_count()} cores) x {rest:.3f} (start-up, scheduling and the last "
        f"round's idle node)"
    )
    console.print(verdict)
    body = (
        f"Regenerate: `python bench/scaling.py --trials {args.trials} --epochs {args.epochs}` (logical nodes on one "
        f"machine with {os.cpu_count()} cores; head with 0 CPUs runs the driver).\n\n"
        "| workers | completed | wall (s) | trials / min | per-trial compute (s) |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {w} | {o.counts.get('completed', 0)} | {o.timings['total']:.0f} | {rate[w]:.2f} | {per[w]:.1f} |"
            for w, o in outcomes.items()
        )
        + f"\n\n{verdict}\n"
    )
    write_section(REPO / "docs" / "results.md", "scaling", body)


if __name__ == "__main__":
    main()
