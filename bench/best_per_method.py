"""Retrain each method's best trial of a finished study over several seeds; write a results table.

    certstudy launch trials/hr_poisoning.yaml
    python bench/best_per_method.py hr_poisoning            # -> docs/results.md, section hr_poisoning

The table gives clean and robust test accuracy (mean +- std over seeds) and, where the method
reports them, its own end-of-training metrics (e.g. HR's certificate: objective vs test loss).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from certstudy.analysis.reruns import best_per_method, markdown_table, rerun_seeds, write_section
from certstudy.workdir import Workdir

DEFAULT_METRICS = ["test/clean_acc", "test/robust_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--workdir")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=DEFAULT_METRICS + ["test/hr_objective", "test/hr_robust_loss", "test/hr_bound_holds"],
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    workdir = Workdir.resolve(args.workdir)
    spec, results = best_per_method(workdir, args.study)
    rerun_seeds(results, args.seeds, workdir, args.processes)
    metrics = [m for m in args.metrics if any(m in s for r in results for s in r.per_seed)]
    note = (
        f"Study file: `trials/{spec.name}.yaml`. Regenerate: `certstudy launch trials/{spec.name}.yaml && python "
        f"bench/best_per_method.py {spec.name}`.\n\n"
    )
    table = markdown_table(spec, results, args.seeds, metrics)
    write_section(args.output, spec.name, note + table)
    Console().print(table)


if __name__ == "__main__":
    main()
