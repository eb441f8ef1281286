"""Search spaces are conditional on the method; resolution and the Pareto front are exact."""

from __future__ import annotations

import optuna
from mlflow.entities import Run, RunData, RunInfo, RunTag

from certstudy.study.records.export import Candidate, pareto_front, rank
from certstudy.study.records.names import OPTUNA_TAG
from certstudy.study.spec.loading import dump_study, validate_spec
from certstudy.study.spec.schema import Objective
from certstudy.study.spec.space import SearchSpace, resolve
from conftest import tiny_study


def test_method_parameters_are_sampled_only_for_the_chosen_method() -> None:
    spec = validate_spec(tiny_study(search={"sampler": "random", "num_trials": 20, "seed": 0}), "t")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    methods = set()
    for _ in range(20):
        trial = study.ask()
        SearchSpace(spec)(trial)
        methods.add(trial.params["method"])
        assert ("adversarial.eps" in trial.params) == (trial.params["method"] == "adversarial")
        assert 1e-3 <= trial.params["training.lr"] <= 1e-2
    assert methods == {"erm", "adversarial"}


def test_resolve_fixes_every_hyperparameter_and_keeps_the_rest() -> None:
    spec = validate_spec(tiny_study(), "t")
    fixed = resolve(spec, {"method": "adversarial", "adversarial.eps": 0.07, "training.lr": 0.004, "_optuna_trial": 3})
    assert fixed.is_fixed()
    cfg = fixed.trial_config()
    assert cfg.method.name == "adversarial" and cfg.method.params == {"steps": 2, "eps": 0.07}
    assert cfg.training.lr == 0.004 and cfg.training.epochs == 3 and cfg.model.params == {"width": 32, "depth": 1}
    again = validate_spec(dump_study(fixed), "t")
    assert again.trial_config() == cfg


def test_resolved_trial_of_a_study_with_start_points_is_a_valid_fixed_study() -> None:
    spec = validate_spec(
        tiny_study(search={"num_trials": 3, "start_points": [{"method": "erm", "training.lr": 0.005}]}), "t"
    )
    fixed = resolve(spec, spec.search.start_points[0])
    again = validate_spec(dump_study(fixed), "t")
    assert again.is_fixed() and again.search.start_points == [] and again.trial_config().training.lr == 0.005


def _cand(name: str, a: float, b: float) -> Candidate:
    run = Run(RunInfo(name, "0", "u", "FINISHED", 0, 0, "active", run_name=name), RunData())
    return Candidate(run, {"val/a": a, "val/b": b})


def test_pareto_front_keeps_exactly_the_non_dominated_trials() -> None:
    cands = [
        _cand("p", 0.9, 0.1),
        _cand("q", 0.5, 0.5),
        _cand("r", 0.4, 0.4),
        _cand("s", 0.1, 0.9),
        _cand("t", 0.5, 0.5),
    ]
    objectives = [Objective(metric="val/a", mode="max"), Objective(metric="val/b", mode="max")]
    front = [c.run.info.run_id for c in pareto_front(cands, objectives)]
    assert front[0] == "p" and sorted(front) == ["p", "q", "s", "t"]
    minimise_b = [Objective(metric="val/a", mode="max"), Objective(metric="val/b", mode="min")]
    assert [c.run.info.run_id for c in pareto_front(cands, minimise_b)] == ["p"]


def test_rank_orders_by_mode_and_drops_missing_values() -> None:
    cands = [_cand("x", 0.2, 0), _cand("y", 0.7, 0), Candidate(_cand("z", 0, 0).run, {})]
    assert [c.run.info.run_id for c in rank(cands, "val/a", "max")] == ["y", "x"]
    assert [c.run.info.run_id for c in rank(cands, "val/a", "min")] == ["x", "y"]


def test_rank_puts_the_earlier_trial_first_among_equal_values() -> None:
    def numbered(name: str, number: int, a: float) -> Candidate:
        tags = [RunTag(OPTUNA_TAG, str(number))]
        run = Run(RunInfo(name, "0", "u", "FINISHED", 0, 0, "active", run_name=name), RunData(tags=tags))
        return Candidate(run, {"val/a": a})

    cands = [numbered("late", 7, 0.5), numbered("best", 9, 0.9), numbered("early", 2, 0.5)]
    for order in (cands, cands[::-1]):  # whatever order the store returned
        assert [c.run.info.run_id for c in rank(list(order), "val/a", "max")] == ["best", "early", "late"]
        assert [c.run.info.run_id for c in rank(list(order), "val/a", "min")] == ["early", "late", "best"]


def test_launching_a_study_again_keeps_the_earlier_results_aside(tmp_path) -> None:
    import io

    from rich.console import Console

    from certstudy.study.engine.session import prepare_study_dir
    from certstudy.workdir import Workdir

    work = Workdir.resolve(tmp_path / "w")
    spec = validate_spec(tiny_study("again"), "t")
    out = io.StringIO()
    first = prepare_study_dir(spec, work, overwrite=False, console=Console(file=out))
    (first / "optuna.db").write_text("earlier")
    second = prepare_study_dir(spec, work, overwrite=False, console=Console(file=out))
    kept = [p for p in work.root.iterdir() if p.name.startswith("again.prev-")]
    assert second == first and len(kept) == 1 and (kept[0] / "optuna.db").read_text() == "earlier"
    assert not (second / "optuna.db").exists() and (second / "study.yaml").exists()
    assert "moved to" in out.getvalue()
    (second / "optuna.db").write_text("later")
    prepare_study_dir(spec, work, overwrite=True, console=Console(file=out))
    assert (
        not (second / "optuna.db").exists()
        and len([p for p in work.root.iterdir() if p.name.startswith("again.prev-")]) == 1
    )
