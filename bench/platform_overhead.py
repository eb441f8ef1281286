"""Platform overhead: the same 8 trial configurations in a plain loop vs as a certstudy study.

(a) a sequential Python loop calling the trial function directly, torch using every core;
(b) ``certstudy launch`` of a study whose 8 start points are exactly those configurations, 2
    trials at a time with one thread each (Ray started by the study, MLflow and Optuna on sqlite).

Prints both wall times, their ratio (target: study <= 0.65 x loop on 2 cores) and where the
study's time goes. Run: ``python bench/platform_overhead.py`` (about 5 minutes on 2 cores);
``--epochs 2`` for a quick check of the script itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from certstudy.study.space import resolve
from certstudy.study.spec import validate_spec
from certstudy.trial import run_trial
from certstudy.workdir import Workdir

# Eight PGD-training configurations of equal cost (the cost is in the attack steps).
CONFIGS = [
    (1e-3, 0.10),
    (3e-3, 0.05),
    (2e-3, 0.15),
    (5e-4, 0.08),
    (1e-3, 0.12),
    (3e-3, 0.03),
    (2e-3, 0.06),
    (5e-4, 0.18),
]
WORKLOADS = {
    # model section, the searched size parameter and its eight values, default epochs (~20 s each)
    "mlp": ({"name": "mlp", "params": {"depth": 2}}, "width", [128, 256, 192, 160, 224, 128, 256, 192], 90),
    "cnn": ({"name": "cnn", "params": {"channels": [16, 32]}}, "hidden", [100, 64, 128, 100, 64, 128, 100, 64], 20),
}


def study_dict(model: str, epochs: int) -> tuple[dict, list[dict]]:
    section, size, sizes, _ = WORKLOADS[model]
    points = [{"training.lr": lr, "adversarial.eps": eps, f"model.{size}": n} for (lr, eps), n in zip(CONFIGS, sizes)]
    study = {
        "name": "bench-overhead",
        "dataset": {"name": "digits", "poisoning": {"rate": 0.1}},
        "model": {**section, "search": {size: {"type": "int", "low": 32, "high": 256}}},
        "method": {
            "name": "adversarial",
            "params": {"steps": 10},
            "search": {"eps": {"type": "float", "low": 0.0, "high": 0.2}},
        },
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "search": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        },
        "evaluation": {"attack": {"eps": 0.1, "steps": 10}},
        "search": {
            "sampler": "random",
            "num_trials": len(points),
            "max_concurrent": 2,
            "seed": 0,
            "start_points": points,
        },
        "resources": {"cpu": 1},
    }
    return study, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="mlp", help="mlp (the quickstart's model) or cnn")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: about 20 s per trial on 2 cores)")
    args = parser.parse_args()
    epochs = args.epochs or WORKLOADS[args.model][3]
    console = Console(width=120)
    study, points = study_dict(args.model, epochs)
    spec = validate_spec(study, "bench")
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        work = Workdir.resolve(Path(tmp) / "work")
        work.ensure()
        # (a) plain loop, torch on every core
        t0 = time.perf_counter()
        per_trial = []
        for point in points:
            cfg = resolve(spec, point).trial_config().model_copy(update={"threads": cores})
            t = time.perf_counter()
            run_trial(cfg, lambda m, d: None, data_dir=str(work.data_dir))
            per_trial.append(time.perf_counter() - t)
        loop_wall = time.perf_counter() - t0
        torch.set_num_threads(cores)

        # (b) the same configurations as a study
        from certstudy.study.runner import launch

        t0 = time.perf_counter()
        outcome = launch(spec, work, console=Console(file=open(os.devnull, "w")))
        study_wall = time.perf_counter() - t0

    tm = outcome.timings
    conc = spec.search.max_concurrent
    single = tm.get("trial_compute", 0) / len(points)
    table = Table(
        title=f"platform overhead: {len(points)} {args.model} PGD-training trials x {epochs} epochs, {cores} cores"
    )
    table.add_column("")
    table.add_column("seconds", justify="right")
    table.add_row(f"(a) loop, {cores} threads per trial", f"{loop_wall:.1f}")
    table.add_row(f"(b) study, {conc} concurrent x {spec.threads} thread", f"{study_wall:.1f}")
    table.add_row("ratio (b)/(a)  [target <= 0.65]", f"{study_wall / loop_wall:.3f}")
    table.add_section()
    table.add_row(f"loop: mean seconds per trial ({cores} threads)", f"{sum(per_trial) / len(per_trial):.1f}")
    table.add_row("study: mean seconds of compute per trial (1 thread, 2 running)", f"{single:.1f}")
    table.add_row(
        f"best possible ratio at this thread scaling: {single:.1f} / ({conc} x {sum(per_trial) / len(per_trial):.1f})",
        f"{single / (conc * sum(per_trial) / len(per_trial)):.3f}",
    )
    table.add_row("study: Ray start (MLflow + Optuna set-up overlapped with it)", f"{tm.get('ray_start', 0):.1f}")
    table.add_row("study: ready to fit (start-up incl. MLflow + Optuna set-up)", f"{tm.get('setup', 0):.1f}")
    table.add_row("study: Tuner.fit wall", f"{tm.get('fit', 0):.1f}")
    table.add_row(
        "study: fit start -> first trial started (worker spawn, imports)", f"{tm.get('first_trial_start', 0):.1f}"
    )
    table.add_row(f"study: trial compute in epochs (sum / {conc})", f"{tm.get('trial_compute', 0) / conc:.1f}")
    table.add_row(
        f"study: trial start-up + reporting (sum of wall - compute, / {conc})",
        f"{(tm.get('trial_wall', 0) - tm.get('trial_compute', 0)) / conc:.1f}",
    )
    table.add_row("study: driver MLflow logging (callback time)", f"{tm.get('tracking', 0):.1f}")
    table.add_row("study: teardown (close runs, Ray shutdown)", f"{tm.get('teardown', 0):.1f}")
    table.add_row("study: total measured by launch()", f"{tm.get('total', 0):.1f}")
    console.print(table)
    console.print(f"completed trials: {outcome.counts.get('completed', 0)} of {len(points)}")


if __name__ == "__main__":
    main()
