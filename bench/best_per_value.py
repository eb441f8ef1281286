"""The best trial for each value of one hyperparameter of a finished study; writes a results table.

    certstudy launch trials/smoothing_sigma.yaml
    python bench/best_per_value.py smoothing_sigma          # -> docs/results.md, section smoothing_sigma

Defaults fit certification studies: trials grouped by ``method.params.sigma``, the best of each
group chosen by ``val/acr_<first certificate>``, and one table per certificate with test certified
accuracy on the study's radius grid, the average certified radius and the smoothed clean accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from certstudy.analysis.by_param import best_per_param, markdown_table
from certstudy.analysis.reruns import write_section
from certstudy.metric_names import certified_acc_name
from certstudy.study.records.launched import study_spec
from certstudy.study.spec.checks import certificates_of
from certstudy.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--workdir")
    parser.add_argument("--param", default="method.params.sigma", help="MLflow param to group by")
    parser.add_argument(
        "--metric", help="validation metric choosing each group's best (default val/acr_<first certificate>)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    args = parser.parse_args()
    workdir = Workdir.resolve(args.workdir)
    certificates = certificates_of(study_spec(workdir, args.study))
    metric = args.metric or f"val/acr_{certificates[0][0]}"
    spec, groups = best_per_param(workdir, args.study, args.param, metric)
    parts = [
        f"Study file: `trials/{spec.name}.yaml`. Regenerate: `certstudy launch trials/{spec.name}.yaml && python "
        f"bench/best_per_value.py {spec.name}`.\n"
    ]
    ev = spec.evaluation
    points = f"{ev.certify_subset} test points" if ev.certify_subset else "the test points"
    for name, norm in certificates:
        columns = [(f"r={r:g}", certified_acc_name("test", name, norm, r)) for r in ev.radii.get(norm, [])]
        columns += [
            ("ACR", f"test/acr_{name}"),
            ("abstain", f"test/abstain_rate_{name}"),
            ("smoothed clean acc", "test/smoothed_clean_acc"),
        ]
        parts.append(
            f"Certificate `{name}` ({norm}): test certified accuracy of the best trial per "
            f"{args.param.rsplit('.', 1)[-1]} (chosen by `{metric}`), on {points}.\n\n"
            + markdown_table(spec, groups, args.param, metric, columns)
        )
    body = "\n".join(parts)
    write_section(args.output, spec.name, body)
    Console().print(body)


if __name__ == "__main__":
    main()
