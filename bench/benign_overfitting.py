"""Robust train error, robust test error and clean test error against alpha/||mu||, per d.

    certstudy launch trials/benign_overfitting.yaml && python bench/benign_overfitting.py

Reads the study's finished trials from MLflow (one per (d, alpha) grid point, one seed), and writes
a table and a plot (docs/benign_overfitting.png) into docs/results.md. Errors are 1 - accuracy:
robust train error over all training points (flipped labels included) at the end of training,
robust and clean test error on 2,000 test points whose labels carry the same noise (floor beta).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402

from certstudy.analysis.reruns import write_section  # noqa: E402
from certstudy.study.records.export import finished_trials
from certstudy.study.records.launched import study_spec
from certstudy.study.records.tracking import Tracker
from certstudy.workdir import Workdir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("robust train error", "train/robust_acc"),
    ("robust test error", "test/robust_acc"),
    ("clean test error", "test/clean_acc"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default="benign_overfitting")
    parser.add_argument("--workdir")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results.md")
    args = parser.parse_args()
    workdir = Workdir.resolve(args.workdir)
    spec = study_spec(workdir, args.study)
    _, candidates = finished_trials(Tracker(spec.tracking_uri(workdir)), spec)
    mu = float(spec.dataset.options["mu_norm"])
    beta = float(spec.dataset.options.get("beta", 0.1))
    points: dict[int, dict[float, dict[str, float]]] = {}
    for c in candidates:
        params = c.run.data.params
        d, ratio = int(params["dataset.options.d"]), round(float(params["method.params.eps"]) / mu, 3)
        points.setdefault(d, {})[ratio] = {name: 1 - c.value(metric) for name, metric in COLUMNS}
    dims = sorted(points)
    ratios = sorted({r for by_ratio in points.values() for r in by_ratio})
    header = ["alpha/‖mu‖"] + [f"d={d}: {name}" for d in dims for name, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in ratios:
        cells = [f"{r:g}"] + [
            f"{points[d][r][name]:.3f}" if r in points[d] else "-" for d in dims for name, _ in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")

    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.2), sharey=True)
    for ax, (name, _) in zip(axes, COLUMNS):
        for d in dims:
            xs = [r for r in ratios if r in points[d]]
            ax.plot(xs, [points[d][r][name] for r in xs], marker="o", label=f"d={d}")
        ax.axhline(beta, color="grey", ls=":", lw=1, label=f"beta={beta:g}")
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        ax.set_title(name)
        ax.set_xlabel("alpha / ||mu||")
    axes[0].set_ylabel("error")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    png = args.output.parent / f"{args.study}.png"
    fig.savefig(png, dpi=110)

    ev, tr = spec.evaluation, spec.training
    body = (
        f"Study file: `trials/{spec.name}.yaml` ({len(candidates)} trials, one seed). Regenerate: `certstudy launch "
        f"trials/{spec.name}.yaml && python bench/benign_overfitting.py`. "
        f"n = {spec.dataset.options['n_train']}, beta = {beta:g}, ||mu||^2 = {mu * mu:.0f}; "
        f"{tr.epochs * tr.steps_per_epoch} full-batch GD steps at l2 "
        f"PGD-{spec.method_entries[0].params.get('steps')} points; "
        f"evaluation: l2 PGD-{ev.attack.steps} at the trial's own alpha. Test labels are noisy, so the clean test "
        f"error floor is beta.\n\n"
        + "\n".join(lines)
        + f"\n\n![robust and clean errors against alpha/||mu||]({png.name})\n"
    )
    write_section(args.output, spec.name, body)
    Console().print(body)


if __name__ == "__main__":
    main()
