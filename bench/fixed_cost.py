"""Fixed cost of a study: a 1-trial study's wall minus its trial's compute (target: <= 8 s on 2 cores).

Launches a 1-trial study of a 60-epoch digits MLP (about 2.5 s of compute on 2 cores) with
``certstudy launch`` in a new work directory, as a user runs it, ``--runs`` times, and prints for
each run the wall (process start to exit), the trial's compute (Ray's ``time_total_s``: inside the
trainable, data loading included), their difference, and where the wall goes: up to the session
(imports, validation and, on a local Ray, Ray's start), the session's set-up (MLflow and Optuna),
Tuner.fit to the trial's start (the worker and its imports), the trial, and the last trial's end to
the process's exit (summary, closing the runs, Ray's shutdown, the dashboard, interpreter exit).

    python bench/fixed_cost.py                 # 3 runs, about a minute
    python bench/fixed_cost.py --fast-start both    # with and without the fast start, interleaved
    python bench/fixed_cost.py --fast-start each    # also without each of its parts in turn

``--fast-start off`` runs the studies with ``CERTSTUDY_RAY_FAST_START=0`` (a local node as Ray starts
it: API server and monitor on the head, no preloaded workers, Tune's actor environment);
``both`` and ``each`` alternate the settings and print their medians side by side.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from certstudy.study.engine.ray_compat import FAST_START_ENV, FAST_START_PARTS
from launched import launch_timed

TARGET_S = 8.0
STUDY = {
    "name": "fixed-cost",
    "dataset": {"name": "digits", "poisoning": {"rate": 0.1}},
    "model": {"name": "mlp", "params": {"depth": 2, "width": 128}},
    "methods": [{"name": "erm"}],
    "training": {"epochs": 60, "batch_size": 64, "optimizer": "adam", "lr": 1e-3},
    "evaluation": {"attack": {"norm": "linf", "eps": 0.1, "steps": 5, "restarts": 1}},
    "objectives": [{"metric": "val/robust_acc", "mode": "max"}],
    "search": {"sampler": "tpe", "num_trials": 1, "max_concurrent": 1, "seed": 0},
    "resources": {"cpu": 1, "gpu": 0},
    "seed": 0,
}


def one_run(tmp: Path, index: int, fast: str = "1") -> dict[str, float]:
    """One launch with ``$CERTSTUDY_RAY_FAST_START`` set to ``fast``."""
    run = launch_timed(STUDY, tmp, tmp / f"work-{index}", {FAST_START_ENV: fast})
    wall, tm = run.wall, run.timings
    session_start = wall - tm["session_to_exit"]  # the timings file is written just before the last line
    return {
        "wall": wall,
        "compute": tm["trial_compute"],
        "fixed": wall - tm["trial_compute"],
        "to session": session_start,
        "set-up": tm["setup"],
        "fit to trial start": tm["fit_start"] - tm["setup"] + tm["first_trial_start"],
        "trial (wall)": tm["trial_wall"],
        "after the trial": wall - session_start - tm["fit_start"] - tm["last_trial_end"],
    }


def _table(title: str, rows: list[dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("run", justify="right")
    for key in rows[0]:
        table.add_column(key, justify="right")
    for i, row in enumerate(rows, 1):
        table.add_row(str(i), *(f"{v:.2f}" for v in row.values()))
    return table


def _median(rows: list[dict[str, float]], key: str) -> float:
    return sorted(r[key] for r in rows)[len(rows) // 2]


def _settings(choice: str) -> dict[str, str]:
    """Setting label -> ``$CERTSTUDY_RAY_FAST_START``."""
    settings = {"on": {"on": "1"}, "off": {"off": "0"}, "both": {"on": "1", "off": "0"}}.get(choice)
    if settings is not None:
        return settings
    each = {f"without {part}": ",".join(p for p in FAST_START_PARTS if p != part) for part in FAST_START_PARTS}
    return {"on": "1", **each, "off": "0"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fast-start", choices=("on", "off", "both", "each"), default="on")
    args = parser.parse_args()
    settings = _settings(args.fast_start)
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in settings}
    with tempfile.TemporaryDirectory() as tmp_name:
        index = 0
        for _ in range(args.runs):
            for label, value in settings.items():  # interleaved: a change in the machine's load touches all alike
                rows[label].append(one_run(Path(tmp_name), index, value))
                index += 1
    console = Console(width=150)
    for label, runs in rows.items():
        console.print(_table(f"1-trial study, fast start {label}: wall minus the trial's compute, seconds", runs))
        fixed = _median(runs, "fixed")
        console.print(f"fixed cost median {fixed:.2f} s (target <= {TARGET_S:.0f} s)", highlight=False)
    if len(rows) > 1:
        side = Table(title="medians by fast-start setting (seconds; the last column: minus fast start on)")
        side.add_column("part")
        for label in rows:
            side.add_column(label, justify="right")
        for key in rows["on"][0]:
            on = _median(rows["on"], key)
            cells = [
                f"{_median(runs, key):.2f}" + ("" if label == "on" else f" ({_median(runs, key) - on:+.2f})")
                for label, runs in rows.items()
            ]
            side.add_row(key, *cells)
        console.print(side)


if __name__ == "__main__":
    main()
