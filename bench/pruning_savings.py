"""What pruning saves: one study run twice, pruning off and on, same sampler seed and trial budget.

    python bench/pruning_savings.py                          # trials/robust_overfitting.yaml
    python bench/pruning_savings.py trials/other.yaml --num-trials 12
    python bench/pruning_savings.py trials/mnist/robust_overfitting.yaml --overrides <its .cpu.yaml>

Both runs end every trial on its best epoch (``evaluation.final_model: best``), so the comparison
is pruning alone, not best-epoch selection. Reports the trial-epochs each run trained (the sum over
trials of the epochs run, from each MLflow run's epoch steps), the study's wall time, and the best
objective found (its best-epoch value) with that trial's test metrics. Target: at least 40 % fewer
trial-epochs with the best objective within 1 point. Writes a section into docs/results.md.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from certstudy.analysis.by_param import searched_values
from certstudy.analysis.reruns import write_section
from certstudy.metric_names import LAST_EPOCH_TEST
from certstudy.study.engine.runner import launch
from certstudy.study.records.export import finished_trials
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.loading import load_study
from certstudy.study.spec.overrides import read_overrides
from certstudy.study.spec.pruning import PruningConfig
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    label: str
    trials: int
    pruned: int
    epochs: int
    wall_s: float
    best: float
    best_test_robust: float
    best_test_clean: float
    best_epoch: int
    best_last_test_robust: float  # the best trial's test robust accuracy at its last trained epoch
    per_trial: list[str]


def _finished_earlier(tracker: Tracker, spec: StudySpec) -> tuple[float, dict[str, int]] | None:
    """(wall seconds, counts) of a study of this name that already ran to its end in this work
    directory without interruption (its parent run FINISHED), else None."""
    exp = tracker.client.get_experiment_by_name(spec.experiment_name)
    parent = tracker.latest_study_run(exp.experiment_id, spec.name) if exp else None
    if parent is None or parent.info.status != "FINISHED" or parent.info.end_time is None:
        return None
    pruned = sum(c.run.data.tags.get("certstudy.status") == "pruned" for c in finished_trials(tracker, spec)[1])
    return (parent.info.end_time - parent.info.start_time) / 1000, {"pruned": pruned}


def run(spec: StudySpec, label: str, root: Path, console: Console, reuse: bool = False) -> Outcome:
    workdir = Workdir(root / label)
    tracker = Tracker(workdir.tracking_uri)
    earlier = _finished_earlier(tracker, spec) if reuse and (workdir.root / "mlflow.db").exists() else None
    if earlier is None:
        outcome = launch(spec, workdir, console=console)
        wall, counts = outcome.timings.get("total", math.nan), outcome.counts
    else:
        wall, counts = earlier
        console.print(f"{label}: reusing the finished study in {workdir.root} ({wall:.0f} s)", highlight=False)
    _, candidates = finished_trials(tracker, spec)
    objective = spec.objectives[0]
    epochs = 0
    per_trial = []
    for c in sorted(candidates, key=lambda c: int(c.run.data.tags.get("optuna.trial_number", 0))):
        steps = [m.step for m in tracker.client.get_metric_history(c.run.info.run_id, objective.metric)]
        epochs += max(steps) + 1 if steps else 0
        tags = c.run.data.tags
        searched = searched_values(spec, c, skip="")
        reason = (
            f"pruned at {tags['pruned_at_epoch']} ({tags['prune_reason']})" if "prune_reason" in tags else "completed"
        )
        per_trial.append(
            f"| {label} | {tags.get('optuna.trial_number')} | {searched} | {max(steps) + 1 if steps else 0} | "
            f"{reason} | {int(c.value('best/epoch'))} | {c.value(objective.metric):.4f} | "
            f"{c.value('test/robust_acc'):.4f} | {c.value(LAST_EPOCH_TEST[1]):.4f} |"
        )
    best = max(
        candidates, key=lambda c: c.value(objective.metric) if objective.mode == "max" else -c.value(objective.metric)
    )
    return Outcome(
        label,
        len(candidates),
        counts.get("pruned", 0),
        epochs,
        wall,
        best.value(objective.metric),
        best.value("test/robust_acc"),
        best.value("test/clean_acc"),
        int(best.value("best/epoch")),
        best.value(LAST_EPOCH_TEST[1]),
        per_trial,
    )


def _shown(path: Path) -> str:
    """A path as the command line in the docs should show it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if REPO in path.parents else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", type=Path, default=REPO / "trials" / "robust_overfitting.yaml")
    parser.add_argument("--num-trials", type=int)
    parser.add_argument("--overrides", type=Path, help="a dotted-key override file, e.g. a study's CPU budget")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--keep", type=Path, help="keep both work directories here (default: a temporary folder)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: read a run (off/on) that already finished uninterrupted there instead of launching it again",
    )
    args = parser.parse_args()
    console = Console()
    spec = load_study(args.study, read_overrides(args.overrides) if args.overrides else None)
    if not spec.pruning.enabled:
        raise SystemExit(f"{args.study}: the study has no pruning section to compare against")
    search = spec.search if args.num_trials is None else spec.search.model_copy(update={"num_trials": args.num_trials})
    evaluation = spec.evaluation.model_copy(update={"final_model": "best"})
    on = spec.model_copy(update={"search": search, "evaluation": evaluation})
    off = on.model_copy(update={"pruning": PruningConfig()})
    with tempfile.TemporaryDirectory(prefix="certstudy-pruning-bench-") as tmp:
        root = args.keep or Path(tmp)
        results = [run(off, "off", root, console, args.reuse), run(on, "on", root, console, args.reuse)]
    metric = spec.objectives[0].metric
    a, b = results
    table = Table(title=f"pruning savings: {spec.name}")
    header = [
        "pruning",
        "trials",
        "pruned",
        "trial-epochs",
        "wall (s)",
        f"best {metric}",
        "its best epoch",
        "its test/robust_acc",
        "its test/clean_acc",
    ]
    for h in header:
        table.add_column(h, justify="right")
    rows = [
        [
            r.label,
            str(r.trials),
            str(r.pruned),
            str(r.epochs),
            f"{r.wall_s:.0f}",
            f"{r.best:.4f}",
            str(r.best_epoch),
            f"{r.best_test_robust:.4f}",
            f"{r.best_test_clean:.4f}",
        ]
        for r in results
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    saved = 1 - b.epochs / a.epochs
    verdict = (
        f"on/off trial-epochs: {b.epochs}/{a.epochs} = {b.epochs / a.epochs:.3f} ({100 * saved:.1f} % fewer; target "
        f">= 40 %); "
        f"best {metric}: {b.best:.4f} vs {a.best:.4f} ({100 * (b.best - a.best):+.1f} points; target within 1 point); "
        f"wall {b.wall_s / a.wall_s:.2f}x; robust overfitting in the off run's best trial: test/robust_acc "
        f"{a.best_test_robust:.4f} at its best epoch vs {a.best_last_test_robust:.4f} at its last "
        f"({100 * (a.best_test_robust - a.best_last_test_robust):+.1f} points; target >= 2)"
    )
    console.print(verdict)
    pruning = ", ".join(f"{k}: {v}" for k, v in spec.pruning.model_dump(exclude_none=True).items())
    body = (
        f"Regenerate: `python bench/pruning_savings.py {_shown(args.study)}"
        + (f" --overrides {_shown(args.overrides)}" if args.overrides else "")
        + f"` ({search.num_trials} trials, "
        f"sampler {search.sampler} seed {search.seed}, both runs ending each trial on its "
        f"best epoch; pruning {pruning}).\n\n"
        "| "
        + " | ".join(header)
        + " |\n|"
        + "---|" * len(header)
        + "\n"
        + "\n".join("| " + " | ".join(r) + " |" for r in rows)
        + f"\n\n{verdict}\n\n"
        "Per trial (epochs run; the best epoch and its objective, what each trial reports; test robust accuracy "
        "of the best epoch's model and of the last trained epoch's):\n\n"
        f"| pruning | trial | searched | epochs | ended | best epoch | best {metric} | test/robust_acc (best) | "
        "test/robust_acc (last epoch) |\n|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(a.per_trial + b.per_trial)
        + "\n"
    )
    write_section(args.output, f"{spec.name}_pruning", body)


if __name__ == "__main__":
    main()
