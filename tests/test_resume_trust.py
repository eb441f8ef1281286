"""Resume trusts only its own state (issue: hardening, item 4): every Ray Tune state file a resume
would unpickle has its SHA-256 recorded in the Optuna storage, and a resume whose files do not
match refuses in one line before unpickling anything. A real interrupted study, a real malicious
pickle."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import optuna
import pytest

from certstudy.cli import main
from certstudy.study.records import RAY_STATE_DIGESTS_ATTR
from conftest import launch_and_interrupt, tiny_study

pytestmark = pytest.mark.integration


class _Payload:
    """Unpickling this creates a file: proof that a tampered state file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_tampered_state_file_is_refused_before_it_is_unpickled_and_the_intact_one_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tiny_study("trusted", training={"epochs": 3, "batch_size": 128}, search={"num_trials": 3, "seed": 0})
    code, out, work = launch_and_interrupt(tmp_path, spec, hold_from=1, hold_epoch=0, held=2)
    assert code == 130, out
    folder = work / "trusted" / "ray"
    study = optuna.load_study(study_name="trusted", storage=f"sqlite:///{work / 'trusted' / 'optuna.db'}")
    recorded = study.user_attrs[RAY_STATE_DIGESTS_ATTR]
    state = {p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert {n.split("-")[0] for n in state} >= {"tuner.pkl", "experiment_state", "searcher", "search_gen_state"}
    for name, path in state.items():  # what the interrupted driver left is what it recorded
        assert hashlib.sha256(path.read_bytes()).hexdigest() in recorded[name], name

    searcher_file = next(p for n, p in state.items() if n.startswith("searcher-state"))
    intact = searcher_file.read_bytes()
    marker = tmp_path / "unpickled"
    searcher_file.write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["resume", "trusted", "--workdir", str(work)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(searcher_file) in err and "refusing" in err, err
    assert not marker.exists()  # refused before anything was unpickled

    searcher_file.write_bytes(intact)
    assert main(["resume", "trusted", "--workdir", str(work)]) == 0
    states = [t.state for t in optuna.load_study(study_name="trusted", storage=study._storage).get_trials()]
    assert len(states) == 3 and all(s == optuna.trial.TrialState.COMPLETE for s in states), states


def test_a_study_without_recorded_digests_is_not_resumed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tiny_study("unrecorded", training={"epochs": 3, "batch_size": 128}, search={"num_trials": 3, "seed": 0})
    code, out, work = launch_and_interrupt(tmp_path, spec, hold_from=1, hold_epoch=0, held=2)
    assert code == 130, out
    study = optuna.load_study(study_name="unrecorded", storage=f"sqlite:///{work / 'unrecorded' / 'optuna.db'}")
    study._storage.set_study_user_attr(study._study_id, RAY_STATE_DIGESTS_ATTR, {})  # as if none were recorded
    assert main(["resume", "unrecorded", "--workdir", str(work)]) == 1
    err = capsys.readouterr().err
    assert "does not match any version certstudy wrote" in err, err
