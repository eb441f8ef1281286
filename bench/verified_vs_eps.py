"""Verified-robust accuracy against eps for the best trials of a deterministic-certification study.

    certstudy launch trials/gloro.yaml && python bench/verified_vs_eps.py gloro
    certstudy launch trials/relaxation.yaml && python bench/verified_vs_eps.py relaxation

Trials are grouped by the training radius ``method.params.eps``; each group's best trial is the
one with the highest val certified accuracy *at its own eps* (first certificate of the study).
Per certificate one table: that trial's test certified accuracy at every radius of the grid, next
to its PGD-robust accuracy at the same radius (``evaluation.attack_grid``), its AutoAttack accuracy
(``evaluation.autoattack``, on a fixed subset of the certified points) and the certification gap
(AutoAttack minus certified accuracy on that subset), and its clean accuracy,
plus the soundness audit's counts (over all the study's certificates). Written into docs/results.md
under the study's name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from certstudy.analysis.by_param import best_per_param, markdown_table
from certstudy.analysis.reruns import write_section
from certstudy.metric_names import autoattack_acc_name, cert_gap_name, certified_acc_name, radius_label, robust_acc_name
from certstudy.study.records.launched import study_spec
from certstudy.study.spec.checks import certificates_of
from certstudy.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--workdir")
    parser.add_argument("--param", default="method.params.eps", help="MLflow param to group by")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results.md")
    args = parser.parse_args()
    workdir = Workdir.resolve(args.workdir)
    certificates = certificates_of(study_spec(workdir, args.study))
    first, norm = certificates[0]
    metric = certified_acc_name("val", first, norm, 0).replace(radius_label(0), "r{value}")
    spec, groups = best_per_param(workdir, args.study, args.param, metric)
    ev = spec.evaluation
    grid = [r for r in ev.radii.get(norm, []) if r > 0]
    parts = [
        f"Study file: `trials/{spec.name}.yaml`. Regenerate: `certstudy launch trials/{spec.name}.yaml && python "
        f"bench/verified_vs_eps.py {spec.name}`. "
        f"Rows: the best trial per training eps, chosen by `{metric}` (val certified accuracy at the trial's own eps). "
        f"Cells: test certified accuracy / PGD-robust accuracy ({ev.attack.steps} steps) at each {norm} radius, on "
        f"the test split"
        + (
            f"; AutoAttack ({ev.autoattack.version}) accuracy and the certification gap (AutoAttack minus certified "
            f"accuracy) on a fixed subset of at most {ev.autoattack.subset} of those points (all of them when the "
            f"split is smaller)"
            if ev.autoattack
            else ""
        )
        + ".\n"
    ]
    for name, cert_norm in certificates:
        columns = [("clean acc", "test/clean_acc")]
        columns += [(f"r={r:g} verified", certified_acc_name("test", name, cert_norm, r)) for r in grid]
        columns += [
            (f"r={r:g} PGD", robust_acc_name(ev.attack.norm, r))
            for r in grid
            if ev.attack_grid and ev.attack.norm == cert_norm
        ]
        if ev.autoattack is not None and ev.attack.norm == cert_norm:
            columns += [(f"r={r:g} AutoAttack", autoattack_acc_name(cert_norm, r)) for r in grid]
            columns += [(f"r={r:g} gap", cert_gap_name("autoattack", name, cert_norm, r)) for r in grid]
        columns += [("audit violations", "audit/violations"), ("audited points", "audit/points")]
        parts.append(
            f"Certificate `{name}` ({cert_norm}):\n\n" + markdown_table(spec, groups, args.param, metric, columns)
        )
    body = "\n".join(parts)
    write_section(args.output, spec.name, body)
    Console().print(body)


if __name__ == "__main__":
    main()
