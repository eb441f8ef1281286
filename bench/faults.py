"""Hard kills at random moments: SIGKILL to the driver's process group (the driver and the Ray it
started), then ``certstudy resume``, over and over, and what the records look like at the end.

    python bench/faults.py                 # 20 kill cycles (target 0 / 0 / 0)
    python bench/faults.py --cycles 5 --seed 3

Each cycle starts ``certstudy launch`` (the first) or ``certstudy resume`` in its own session and
kills it after a random delay (anywhere from Ray's start-up to the last trial's end); a final resume
runs to the end. A kill that lands before the study had Ray Tune state to resume from is followed by
a fresh ``launch --overwrite`` (counted as a restart). Then it counts, against the study file:

- duplicates: MLflow runs beyond one per Optuna trial (a KILLED twin beside a FINISHED run), and
  epochs logged twice in a run;
- lost epochs: epochs a trial trained that its MLflow run does not have, and finished runs left with
  a stale ``fail_reason`` tag;
- wasted trials: Optuna trials beyond the planned number, trials not COMPLETE, and trials proposed
  twice with the same parameters.

Target: 0 / 0 / 0. The last line reads ``faults duplicates <d> lost <l> wasted <w>``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STUDY = "faults"
EPOCHS = 6
TRIALS = 6


def study_file(folder: Path, epochs: int = EPOCHS) -> Path:
    spec = {
        "name": STUDY,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "params": {"width": 32, "depth": 1}},
        "method": {"name": "erm"},
        "training": {
            "epochs": epochs,
            "batch_size": 32,
            "search": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        },
        "evaluation": {"attack": {"eps": 0.05, "steps": 2}, "val_subset": 128, "test_subset": 128},
        "search": {"num_trials": TRIALS, "max_concurrent": 2, "seed": 0},
    }
    path = folder / f"{STUDY}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "certstudy.cli", *argv],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class Report:
    cycles: int = 0
    kills: int = 0
    restarts: int = 0
    duplicates: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    wasted: list[str] = field(default_factory=list)


def run_cycles(root: Path, cycles: int, seed: int, max_delay_s: float = 40.0, epochs: int = EPOCHS) -> Report:
    """``cycles`` kill cycles on a fresh work directory under ``root``, a last resume to the end, and the count."""
    rng = random.Random(seed)
    path, work, log = study_file(root, epochs), root / "work", root / "faults.log"
    report = Report(cycles=cycles)
    argv = ["launch", str(path), "--workdir", str(work)]
    for _ in range(cycles):
        proc = _start(argv, log)
        try:
            proc.wait(timeout=rng.uniform(1.0, max_delay_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            report.kills += 1
        if _finished(work):
            break
        argv = _next_command(path, work, report)
    for _ in range(3):  # the last one runs to the end (a set-up killed above may need a relaunch first)
        if _finished(work):
            break
        proc = _start(argv, log)
        if proc.wait(timeout=1800) != 0 and argv[0] == "resume":  # not resumable after all: start afresh
            argv = ["launch", str(path), "--workdir", str(work), "--overwrite"]
            report.restarts += 1
            continue
        argv = _next_command(path, work, report)
    return _count(work, report, epochs)


def _resumable(work: Path) -> bool:
    """Ray Tune state and the Optuna study both exist (a kill during set-up can leave one without the other)."""
    import optuna
    from ray.tune import Tuner

    db = work / STUDY / "optuna.db"
    if not (Tuner.can_restore(str(work / STUDY / "ray")) and db.exists()):
        return False
    try:
        optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    except KeyError:
        return False
    return True


def _next_command(path: Path, work: Path, report: Report) -> list[str]:
    if _resumable(work):
        return ["resume", STUDY, "--workdir", str(work)]
    report.restarts += 1
    return ["launch", str(path), "--workdir", str(work), "--overwrite"]


def _finished(work: Path) -> bool:
    import optuna

    db = work / STUDY / "optuna.db"
    if not db.exists():
        return False
    try:
        study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}")
    except KeyError:
        return False
    ended = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    return len(ended) >= TRIALS


def _count(work: Path, report: Report, epochs: int = EPOCHS) -> Report:
    import optuna
    from mlflow.tracking import MlflowClient

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{work / STUDY / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    if len(trials) != TRIALS:
        report.wasted.append(f"{len(trials)} Optuna trials for {TRIALS} planned")
    report.wasted += [f"trial {t.number} ended {t.state.name}" for t in trials if t.state.name != "COMPLETE"]
    params = Counter(tuple(sorted(t.params.items())) for t in trials)
    report.wasted += [f"parameters proposed {n} times: {p}" for p, n in params.items() if n > 1]

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDY)
    runs = client.search_runs([exp.experiment_id], max_results=10000)
    parents = [r for r in runs if r.data.tags.get("certstudy.role") == "study" and r.info.status != "FINISHED"]
    report.lost += [f"parent run {r.info.run_id} left {r.info.status}" for r in parents if r.info.status == "RUNNING"]
    latest = max((r for r in runs if r.data.tags.get("certstudy.role") == "study"), key=lambda r: r.info.start_time)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == latest.info.run_id]
    by_trial = Counter(r.data.tags.get("optuna.trial_number") for r in children)
    report.duplicates += [f"trial {n}: {k} MLflow runs" for n, k in by_trial.items() if k > 1]
    for t in trials:
        if by_trial.get(str(t.number), 0) == 0:
            report.lost.append(f"trial {t.number}: no MLflow run")
    for run in children:
        number = run.data.tags.get("optuna.trial_number")
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        report.duplicates += [f"trial {number} epoch {s} logged {k} times" for s, k in steps.items() if k > 1]
        report.lost += [f"trial {number} epoch {e} missing" for e in range(epochs) if e not in steps]
        if run.info.status != "FINISHED":
            report.lost.append(f"trial {number}: run {run.info.status}")
        elif "certstudy.fail_reason" in run.data.tags:
            report.lost.append(f"trial {number}: finished with a stale fail_reason tag")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=150, help="epochs per trial (default 150: trials of about 20 s on 2 cores)"
    )
    parser.add_argument(
        "--max-delay", type=float, default=25.0, help="longest wait before a kill, in seconds (default 25)"
    )
    parser.add_argument("--keep", type=Path, help="keep the work directory here (default: a temporary folder)")
    args = parser.parse_args()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="certstudy-faults-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        report = run_cycles(root, args.cycles, args.seed, args.max_delay, args.epochs)
    print(
        f"{report.cycles} cycles, {report.kills} hard kills, {report.restarts} relaunches (killed during set-up), "
        f"{time.perf_counter() - t:.0f} s"
    )
    for kind in ("duplicates", "lost", "wasted"):
        for line in getattr(report, kind):
            print(f"  {kind}: {line}")
    print(f"faults duplicates {len(report.duplicates)} lost {len(report.lost)} wasted {len(report.wasted)}")


if __name__ == "__main__":
    main()
