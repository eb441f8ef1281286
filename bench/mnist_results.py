"""The MNIST reproductions side by side with the published numbers: a CSV per study and a section of docs/results.md.

    certstudy launch trials/mnist/gloro.yaml --overrides trials/mnist/gloro.cpu.yaml
    python bench/mnist_results.py gloro                      # reads study mnist_gloro_cpu (else mnist_gloro)
    python bench/mnist_results.py gloro_4c3f                 # document 2 (--index 2): mnist_gloro_4c3f_cpu
    python bench/mnist_results.py robust_overfitting --workdir <the --keep folder of bench/pruning_savings.py>

Writes ``docs/results/mnist_<study>.csv`` with the columns ``setting,metric,ours,published,source,
budget,seeds,wall_s``: one row per trial and metric, only clean, certified (verified) and AutoAttack
numbers, each named with its radius (``certified_acc_l2_r0.5``). ``published`` is the number the paper
or its authors' repository reports for that setting, with ``source`` naming the table or file; it
stays empty where none was found (never guessed). The docs section adds the empirical columns the
CSV leaves out (PGD, Gaussian noise). The hand-written reading sits after the section's end marker,
so regenerating keeps it.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from scipy import stats

from certstudy.analysis.reruns import write_section
from certstudy.errors import CertstudyError
from certstudy.metric_names import (
    LAST_EPOCH_TEST,
    POISONED_FIT,
    autoattack_acc_name,
    cert_gap_name,
    certified_acc_name,
    noise_acc_name,
)
from certstudy.study.records.export import Candidate, finished_trials
from certstudy.study.records.launched import study_spec
from certstudy.study.records.names import METHOD_LABEL_TAG
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.checks import certificates_of
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]
CSV_COLUMNS = ("setting", "metric", "ours", "published", "source", "budget", "seeds", "wall_s")


@dataclass(frozen=True)
class Published:
    value: float
    source: str


# Smoothing: the authors' released CERTIFY outputs of their LeNet (n = 100,000, alpha = 0.001),
# approximate certified accuracy at r = 0 and 0.5 over rows 0-499 (the first 500 test images, the points
# the CPU budget certifies), counted from the files: Cohen et al.'s Gaussian training, and Jeong & Shin's
# consistency training (m = 2, lambda 20, eta 0.5; the first of the three released runs per sigma).
_CONSISTENCY_REPO = "jh-jeong/smoothing-consistency"


def _released(setting: str, path: str, at_r0: float, at_r05: float) -> dict[tuple[str, str], Published]:
    source = f"{_CONSISTENCY_REPO} data/certify/mnist/{path}, rows 0-499"
    return {
        (setting, "certified_acc_l2_r0"): Published(at_r0, source),
        (setting, "certified_acc_l2_r0.5"): Published(at_r05, source),
    }


_SMOOTHING = {
    **_released("gaussian sigma=0.25", "cohen/noise_0.25_4067", 0.988, 0.976),
    **_released("gaussian sigma=0.5", "cohen/noise_0.50_4490", 0.986, 0.966),
    **_released("consistency sigma=0.25", "consistency/cohen/num_2/lbd_20.0/noise_0.25_3981", 0.996, 0.978),
    **_released("consistency sigma=0.5", "consistency/cohen/num_2/lbd_20.0/noise_0.50_1172", 0.990, 0.968),
}
_GLORO = {
    ("gloro_2c2f l2 eps=0.3", "certified_acc_l2_r0.3"): Published(
        0.957, "klasleino/gloro README (MNIST, eps 0.3, 2C2F: VRA 0.957)"
    ),
    ("gloro_4c3f l2 eps=1.58", "certified_acc_l2_r1.58"): Published(
        0.628, "klasleino/gloro README (MNIST, eps 1.58, 4C3F: VRA 0.628)"
    ),
}
# Gowal et al. 2018, Table 3 (IBP, DM-large, trained at eps 0.2): test error 1.06 %, verified error
# 2.23 % at eps 0.1, as quoted in google-deepmind/interval-bound-propagation issue #1.
_IBP_SOURCE = "Gowal et al. 2018 Table 3 (DM-large), quoted in google-deepmind/interval-bound-propagation#1"
# The released CROWN-IBP models (DM-large; verified accuracy by IBP, as our certified_acc_ibp), from the
# README of google-deepmind/interval-bound-propagation, "CROWN-IBP models": mnist_0.2_large at eps 0.1,
# mnist_0.4_large at eps 0.3; and its IBP model mnist_0.4_large_200 at eps 0.3.
_DM_README = "google-deepmind/interval-bound-propagation README, pretrained"
_RELAXATION = {
    ("ibp linf eps=0.1", "clean_acc"): Published(0.9894, _IBP_SOURCE),
    ("ibp linf eps=0.1", "certified_acc_ibp_linf_r0.1"): Published(0.9777, _IBP_SOURCE),
    ("crown_ibp linf eps=0.1", "clean_acc"): Published(0.9903, f"{_DM_README} crown-ibp/mnist_0.2_large"),
    ("crown_ibp linf eps=0.1", "certified_acc_ibp_linf_r0.1"): Published(
        0.9775, f"{_DM_README} crown-ibp/mnist_0.2_large"
    ),
    ("crown_ibp linf eps=0.3", "clean_acc"): Published(0.9838, f"{_DM_README} crown-ibp/mnist_0.4_large"),
    ("crown_ibp linf eps=0.3", "certified_acc_ibp_linf_r0.3"): Published(
        0.9332, f"{_DM_README} crown-ibp/mnist_0.4_large"
    ),
    ("ibp linf eps=0.3", "clean_acc"): Published(0.9834, f"{_DM_README} ibp/mnist_0.4_large_200"),
    ("ibp linf eps=0.3", "certified_acc_ibp_linf_r0.3"): Published(0.9179, f"{_DM_README} ibp/mnist_0.4_large_200"),
}


@dataclass
class StudyTable:
    """How one MNIST study's trials become rows."""

    names: tuple[str, ...]  # studies to look for in the work directory: first found wins; a glob takes all
    setting: Callable[[Candidate], str]
    csv_metrics: Callable[[StudySpec], list[tuple[str, str]]]  # (CSV metric, MLflow metric)
    extra_metrics: Callable[[StudySpec], list[tuple[str, str]]] = lambda spec: []
    published: dict[tuple[str, str], Published] = field(default_factory=dict)
    pool_seeds: bool = False  # its studies are seeds of one study: one row per setting and metric, the mean
    # over seeds with a 95 % t-interval (metric ``<metric>_ci95``: the interval's half-width)


def _label(c: Candidate) -> str:
    return c.run.data.tags.get(METHOD_LABEL_TAG, c.run.data.params.get("method.name", "?"))


def _param(c: Candidate, key: str) -> str:
    return c.run.data.params.get(key, "?")


def _certified(spec: StudySpec, certificate: str, norm: str, prefix: str) -> list[tuple[str, str]]:
    """(``<prefix><norm>_r<r>``, the test metric) at every radius of the norm's grid."""
    return [
        (f"{prefix}{norm}_r{r:g}", certified_acc_name("test", certificate, norm, r))
        for r in spec.evaluation.radii.get(norm, [])
    ]


def _autoattack(spec: StudySpec) -> list[tuple[str, str]]:
    """AutoAttack accuracy at every positive radius of the attack norm's grid (the evaluation radius without one)."""
    if spec.evaluation.autoattack is None:
        return []
    norm = spec.evaluation.attack.norm
    radii = [r for r in spec.evaluation.radii.get(norm, []) if r > 0] or [spec.evaluation.attack.eps]
    return [(f"autoattack_acc_{norm}_r{r:g}", autoattack_acc_name(norm, r)) for r in radii]


def _pgd(spec: StudySpec) -> list[tuple[str, str]]:
    a = spec.evaluation.attack
    return [(f"pgd{a.steps}_acc_{a.norm}_r{a.eps:g}", "test/robust_acc")]


def _gaps_and_audit(spec: StudySpec) -> list[tuple[str, str]]:
    """PGD, the certification gap (AutoAttack minus certified accuracy on AutoAttack's points) per
    deterministic certificate, and the soundness audit's counts."""
    norm = spec.evaluation.attack.norm
    radii = [r for r in spec.evaluation.radii.get(norm, []) if r > 0]
    gaps = [
        (f"gap_{cert}_{norm}_r{r:g}", cert_gap_name("autoattack", cert, norm, r))
        for cert, cert_norm in certificates_of(spec)
        if cert_norm == norm and spec.evaluation.autoattack is not None
        for r in radii
    ]
    return _pgd(spec) + gaps + [("audit violations", "audit/violations"), ("audited points", "audit/points")]


def _gloro_table(*names: str) -> StudyTable:
    """One document of trials/mnist/gloro.yaml (each net and radius is its own study)."""
    return StudyTable(
        names=names,
        setting=lambda c: f"{_param(c, 'model.name')} l2 eps={_param(c, 'method.params.eps')}",
        csv_metrics=lambda spec: (
            [("clean_acc", "test/clean_acc")]
            + [m for m in _certified(spec, "lipschitz", "l2", "certified_acc_") if not m[0].endswith("_r0")]
            + _autoattack(spec)
        ),
        extra_metrics=_gaps_and_audit,
        published=_GLORO,
    )


TABLES: dict[str, StudyTable] = {
    "gloro": _gloro_table("mnist_gloro_cpu", "mnist_gloro"),
    "gloro_4c3f": _gloro_table("mnist_gloro_4c3f_cpu", "mnist_gloro_4c3f"),  # document 2 of trials/mnist/gloro.yaml
    "smoothing": StudyTable(
        names=("mnist_smoothing*_cpu", "mnist_smoothing"),  # the CPU budget runs in parts
        setting=lambda c: f"{_label(c)} sigma={_param(c, 'method.params.sigma')}",
        csv_metrics=lambda spec: (
            _certified(spec, "smoothing", "l2", "certified_acc_")
            + [("acr", "test/acr_smoothing")]
            + _certified(spec, "smoothing_two_sided", "l2", "certified_acc_two_sided_")
            + [("acr_two_sided", "test/acr_smoothing_two_sided"), ("smoothed_clean_acc", "test/smoothed_clean_acc")]
        ),
        published=_SMOOTHING,
    ),
    "ibp_crown_ibp": StudyTable(
        names=("mnist_ibp_crown_ibp_eps*_cpu", "mnist_ibp_crown_ibp_eps*"),
        setting=lambda c: f"{_label(c)} linf eps={_test_eps(c)}",
        csv_metrics=lambda spec: (
            [("clean_acc", "test/clean_acc")]
            + [
                m
                for cert in ("ibp", "crown")
                for m in _certified(spec, cert, "linf", f"certified_acc_{cert}_")
                if not m[0].endswith("_r0")
            ]
            + _autoattack(spec)
        ),
        extra_metrics=_gaps_and_audit,
        published=_RELAXATION,
    ),
    "hr": StudyTable(
        names=("mnist_hr_s[0-9]*_cpu", "mnist_hr"),  # one study per seed: --set seed=N --set name=mnist_hr_sN_cpu
        setting=lambda c: _label(c),
        csv_metrics=lambda spec: (
            [("clean_acc", "test/clean_acc")]
            + _pgd(spec)
            + [(f"noise_acc_s{s:g}", noise_acc_name(s)) for s in spec.evaluation.noise_sigmas]
            + [("hr_bound", "test/hr_objective"), ("adv_test_loss", "test/hr_robust_loss")]
        ),
        extra_metrics=lambda spec: [("train acc (poisoned labels)", "train/acc"), ("flips fitted", POISONED_FIT)],
        pool_seeds=True,
    ),
    "hr_grid": StudyTable(
        names=("mnist_hr_grid_f*_cpu",),
        setting=lambda c: (
            f"hr alpha={_param(c, 'method.params.alpha')} r={_param(c, 'method.params.r')} "
            f"flips={_param(c, 'dataset.poisoning.rate')}"
        ),
        csv_metrics=lambda spec: [
            ("clean_acc", "test/clean_acc"),
            ("hr_bound", "test/hr_objective"),
            ("adv_test_loss", "test/hr_robust_loss"),
            ("bound_held", "test/hr_bound_holds"),
        ],
        extra_metrics=lambda spec: _pgd(spec) + [("train acc (poisoned labels)", "train/acc")],
    ),
    "robust_overfitting": StudyTable(
        names=("mnist_robust_overfitting_cpu", "mnist_robust_overfitting"),
        setting=lambda c: f"lr={float(_param(c, 'training.lr')):.2e}",
        csv_metrics=lambda spec: [("clean_acc", "test/clean_acc")] + _autoattack(spec),
        extra_metrics=lambda spec: (
            _pgd(spec)
            + [("pgd at the last epoch", LAST_EPOCH_TEST[1])]
            + [("best val/robust_acc", "val/robust_acc"), ("best epoch", "best/epoch")]
        ),
    ),
}


def _test_eps(c: Candidate) -> str:
    return _param(c, "evaluation.attack.eps")


def _cell(name: str, v: float) -> str:
    """A docs cell: counts as integers, everything else to 4 decimals, missing as empty."""
    if v != v:
        return ""
    return f"{v:.0f}" if name.startswith(("audit", "best epoch")) else f"{v:.4f}"


def _fmt(v: float) -> str:
    return f"{v:.4f}" if v == v else ""


def studies_of(workdir: Workdir, table: StudyTable) -> list[str]:
    """The studies of ``table`` in ``workdir``: every match of a glob, else the first name found."""
    for name in table.names:
        if any(ch in name for ch in "*?["):
            found = sorted(p.parent.name for p in workdir.root.glob(f"{name}/{workdir.study_file('x').name}"))
            if found:
                return found
        elif workdir.study_file(name).exists():
            return [name]
    raise CertstudyError(f"none of the studies {', '.join(table.names)} is in {workdir.root}")


def study_rows(
    workdir: Workdir, table: StudyTable, name: str
) -> tuple[StudySpec, list[dict[str, str]], list[str], float]:
    """The CSV rows of study ``name`` in ``workdir``, the extra docs columns per trial, and the
    study's wall time."""
    spec = study_spec(workdir, name)
    parent, candidates = finished_trials(Tracker(spec.tracking_uri(workdir)), spec)
    end = parent.info.end_time or max((c.run.info.end_time or 0 for c in candidates), default=0)
    wall = (end - parent.info.start_time) / 1000 if end else float("nan")
    budget = "cpu" if spec.name.endswith("_cpu") else "published"
    rows, extra = [], []
    for c in sorted(candidates, key=lambda c: int(c.run.data.tags.get("optuna.trial_number", 0))):
        setting = table.setting(c)
        for metric, source_metric in table.csv_metrics(spec):
            if c.value(source_metric) != c.value(source_metric):
                continue  # not reported by this trial (e.g. the HR certificate of an ERM trial)
            pub = table.published.get((setting, metric))
            rows.append(
                {
                    "setting": setting,
                    "metric": metric,
                    "ours": _fmt(c.value(source_metric)),
                    "published": f"{pub.value:g}" if pub else "",
                    "source": pub.source if pub else "",
                    "budget": f"{budget}: {spec.model.name}, {spec.training.epochs} epochs",
                    "seeds": "1",
                    "wall_s": f"{wall:.0f}",
                }
            )
        cells = [_cell(name, c.value(m)) for name, m in table.extra_metrics(spec)]
        extra.append(f"| {setting} | " + " | ".join(cells) + " |")
    return spec, rows, extra, wall


def pooled(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """One row per (setting, metric) of seed studies: the mean over seeds, then ``<metric>_ci95``, the
    half-width of the 95 % Student-t interval of that mean (empty with one seed); ``seeds`` counts
    them and ``wall_s`` is the longest seed's wall."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["metric"]), []).append(r)
    out = []
    for (setting, metric), group in groups.items():
        values = np.array([float(r["ours"]) for r in group])
        n = len(values)
        half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        first = group[0]
        common = {
            "budget": first["budget"],
            "seeds": str(n),
            "wall_s": f"{max(float(r['wall_s']) for r in group):.0f}",
        }
        out.append({**first, "ours": _fmt(float(values.mean())), **common})
        interval = {"setting": setting, "metric": f"{metric}_ci95", "ours": _fmt(half), "published": "", "source": ""}
        out.append({**interval, **common})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=sorted(TABLES))
    parser.add_argument(
        "--workdir",
        nargs="+",
        default=[None],
        help="work directories (several: e.g. the off/ and on/ folders of bench/pruning_savings.py --keep; each "
        "setting is then prefixed with its folder's name)",
    )
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "results.md")
    parser.add_argument("--csv-dir", type=Path, default=REPO / "docs" / "results")
    args = parser.parse_args()
    table = TABLES[args.study]
    found = []  # (folder name, spec, rows, extra lines, wall) per study
    for folder in args.workdir:
        workdir = Workdir.resolve(folder)
        for name in studies_of(workdir, table):
            study = (workdir.root.name, *study_rows(workdir, table, name))
            if study[2]:
                found.append(study)
            else:
                print(f"{name}: no finished trial yet, left out")
    if not found:
        raise CertstudyError("no finished trial in any of these studies")
    # several folders holding the same settings (the off/ and on/ runs of one study): each setting is
    # prefixed with its folder's name; folders holding different parts of a study keep the plain names
    settings = [(folder, r["setting"]) for folder, _, these, _, _ in found for r in these]
    prefix = len({s for _, s in settings}) < len(set(settings))
    rows, extra = [], {}  # the empirical lines per column list: studies at different radii get a table each
    for folder, study, these, more, _ in found:
        if table.pool_seeds:
            more = [line.replace("| ", f"| seed {study.seed}: ", 1) for line in more]
        if prefix:
            for r in these:
                r["setting"] = f"{folder}: {r['setting']}"
            more = [line.replace("| ", f"| {folder}: ", 1) for line in more]
        rows = rows + these
        extra.setdefault(tuple(n for n, _ in table.extra_metrics(study)), []).extend(more)
    if table.pool_seeds:
        rows = pooled(rows)
    studies = "; ".join(
        f"`{folder + '/' if prefix else ''}{s.name}` ({s.model.name}, {s.training.epochs} epochs, {w:.0f} s)"
        for folder, s, _, _, w in found
    )

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    args.csv_dir.mkdir(parents=True, exist_ok=True)
    out = args.csv_dir / f"mnist_{args.study}.csv"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(out)

    compared = [r for r in rows if r["published"]]
    lines = [
        f"{'Studies' if len(found) > 1 else 'Study'} {studies}: wall on 2 CPU cores. "
        f"Regenerate: `python bench/mnist_results.py {args.study}`; machine-readable: "
        f"`docs/results/mnist_{args.study}.csv`.\n",
        "| setting | metric | ours | published | ours - published | source |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = f"{100 * (float(r['ours']) - float(r['published'])):+.2f} pts" if r["published"] and r["ours"] else ""
        lines.append(f"| {r['setting']} | {r['metric']} | {r['ours']} | {r['published']} | {diff} | {r['source']} |")
    tables = [(names, more) for names, more in extra.items() if names and more]
    if tables:
        lines += ["", "Empirical metrics (not in the CSV):"]
    for names, more in tables:
        lines += ["", "| setting | " + " | ".join(names) + " |", "|---|" + "---|" * len(names), *more]
    if not compared:
        lines += ["", "No published number was found for these settings (see the reading)."]
    body = "\n".join(lines) + "\n"
    write_section(args.output, f"mnist_{args.study}", body)
    Console(width=200).print(body)


if __name__ == "__main__":
    main()
