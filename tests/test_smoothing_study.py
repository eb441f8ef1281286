"""A real smoothing study (local Ray, MLflow and Optuna on sqlite): two objectives measured only at
the end (certified val accuracy), the certification curves logged with every trial's run, and a
Pareto export."""

from __future__ import annotations

import math

import pytest
import yaml

from certstudy.cli import main
from certstudy.study.engine.single import run_fixed
from certstudy.study.spec.loading import load_study
from certstudy.workdir import Workdir
from conftest import launch_study

pytestmark = pytest.mark.integration

OBJECTIVES = ["val/certified_acc_smoothing_l2_r0.25", "val/certified_acc_smoothing_l2_r0.5"]
SPEC = {
    "name": "stest",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "params": {"width": 64, "depth": 1}},
    "method": {"name": "smoothing", "search": {"sigma": {"type": "categorical", "choices": [0.25, 0.5]}}},
    "training": {"epochs": 2, "batch_size": 64, "lr": 3e-3},
    "evaluation": {
        "attack": {"norm": "l2", "eps": 0.25, "steps": 2},
        "val_subset": 64,
        "test_subset": 100,
        "certify_subset": 40,
        "certify_val_subset": 30,
        "certifiers": [{"name": "smoothing", "params": {"n0": 32, "n": 300, "alpha": 0.01, "predict_n": 100}}],
    },
    "objectives": [{"metric": m, "mode": "max"} for m in OBJECTIVES],
    "search": {
        "sampler": "random",
        "num_trials": 2,
        "max_concurrent": 2,
        "seed": 0,
        "start_points": [{"smoothing.sigma": 0.25}, {"smoothing.sigma": 0.5}],
    },
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return launch_study(tmp_path_factory.mktemp("smoothing"), SPEC)


def test_final_only_objectives_reach_optuna_and_mlflow(study: dict) -> None:
    trials = study["optuna"].trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in trials}
    assert len(study["children"]) == 2
    for child in study["children"]:
        assert child.info.status == "FINISHED"
        ot_trial = by_ray_id[child.data.tags["ray.trial_id"]]
        assert ot_trial.values == [child.data.metrics[m] for m in OBJECTIVES]
        assert not ot_trial.intermediate_values  # two objectives: Optuna keeps no intermediate values
        history = study["client"].get_metric_history(child.info.run_id, OBJECTIVES[0])
        assert [m.step for m in history] == [1] and all(
            math.isfinite(m.value) for m in history
        )  # no NaN placeholders logged
        assert float(child.data.params["method.params.sigma"]) == ot_trial.params["smoothing.sigma"]


def test_each_trial_run_holds_certified_metrics_and_its_certification_curve(study: dict) -> None:
    client = study["client"]
    for child in study["children"]:
        metrics = child.data.metrics
        for cert in ("smoothing", "smoothing_two_sided"):
            for r in ("0", "0.25", "0.5", "0.75", "1"):
                assert 0.0 <= metrics[f"test/certified_acc_{cert}_l2_r{r}"] <= 1.0
            assert f"test/acr_{cert}" in metrics and f"test/abstain_rate_{cert}" in metrics
        assert "test/smoothed_clean_acc" in metrics and "test/abstain_rate" in metrics
        files = sorted(a.path for a in client.list_artifacts(child.info.run_id, "certify"))
        assert files == ["certify/smoothing_curve.csv", "certify/smoothing_curve.png", "certify/smoothing_radii.csv"]


def test_pareto_export_reruns_to_the_same_certified_accuracy(study: dict) -> None:
    out = study["root"] / "front.yaml"
    assert main(["export", "stest", "--workdir", str(study["work"]), "--pareto", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert 1 <= len(docs) <= 2
    best = study["root"] / "best0.yaml"
    best.write_text(yaml.safe_dump(docs[0]))
    outcome = run_fixed(load_study(best), Workdir.resolve(str(study["work"])), track=False)
    for name in OBJECTIVES + ["test/certified_acc_smoothing_two_sided_l2_r0.5", "test/acr_smoothing"]:
        assert outcome.compared[name][0] == outcome.compared[name][1], name


def test_best_trial_per_sigma_table(study: dict) -> None:
    from certstudy.analysis.by_param import best_per_param, markdown_table

    spec, groups = best_per_param(
        Workdir.resolve(str(study["work"])), "stest", "method.params.sigma", "val/acr_smoothing"
    )
    assert [g.value for g in groups] == ["0.25", "0.5"] and [g.trials for g in groups] == [1, 1]
    table = markdown_table(
        spec, groups, "method.params.sigma", "val/acr_smoothing", [("r=0.5", "test/certified_acc_smoothing_l2_r0.5")]
    )
    rows = table.splitlines()
    assert rows[0].startswith("| sigma | best trial") and len(rows) == 4
    assert rows[2].startswith("| 0.25 | smoothing |")
    assert f"{groups[0].best.value('test/certified_acc_smoothing_l2_r0.5'):.3f}" in rows[2]
