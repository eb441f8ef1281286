"""Resume trusts only its own state (issue: hardening, item 4; round two, item 2): every Ray Tune
state file a resume would unpickle has its HMAC under the user's state key (kept outside the work
directory) recorded in the Optuna storage, and a resume whose files do not match refuses in one
line before unpickling anything, even when the attacker rewrote the recorded digests too. A real
interrupted study, a real malicious pickle."""

from __future__ import annotations

import hashlib
import os
import pickle
import secrets
from pathlib import Path

import optuna
import pytest
import yaml

from certstudy.cli import main
from certstudy.errors import CertstudyError
from certstudy.study.records.names import RAY_STATE_DIGESTS_ATTR
from certstudy.study.records.state_digests import keyed_digest
from certstudy.study.records.state_key import state_key
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
        assert keyed_digest(path, state_key()) in recorded[name], name

    searcher_file = next(p for n, p in state.items() if n.startswith("searcher-state"))
    intact = searcher_file.read_bytes()
    marker = tmp_path / "unpickled"
    searcher_file.write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["resume", "trusted", "--workdir", str(work)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(searcher_file) in err and "refusing" in err, err
    assert not marker.exists()  # refused before anything was unpickled

    # Round two, item 2: the attacker also rewrites the digests recorded in the Optuna storage, as
    # plain SHA-256 (the old scheme) and as an HMAC under a key of their own; neither is the user's key.
    for forged in (
        hashlib.sha256(searcher_file.read_bytes()).hexdigest(),
        keyed_digest(searcher_file, secrets.token_bytes(32)),
    ):
        study._storage.set_study_user_attr(
            study._study_id, RAY_STATE_DIGESTS_ATTR, {**recorded, searcher_file.name: [forged]}
        )
        assert main(["resume", "trusted", "--workdir", str(work)]) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(searcher_file) in err and "state key" in err, err
        assert not marker.exists()
    study._storage.set_study_user_attr(study._study_id, RAY_STATE_DIGESTS_ATTR, recorded)

    searcher_file.write_bytes(intact)
    capsys.readouterr()
    assert main(["resume", "trusted", "--workdir", str(work)]) == 0
    # the end-of-study table covers every trial of the study, those ended before the resume included
    assert "top trials of trusted by val/robust_acc (max), 3 finished" in capsys.readouterr().out
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


def test_the_state_key_is_private_to_its_user_and_kept_outside_the_work_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from certstudy.study.records import state_key as key_module

    monkeypatch.delenv(key_module.ENV_VAR)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key_module._load.cache_clear()
    path = key_module.key_path()
    assert path == tmp_path / "config" / "certstudy" / "state.key"
    key = key_module.state_key()  # created on first use
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    key_module._load.cache_clear()
    assert key_module.state_key() == key  # and read back, not replaced

    path.chmod(0o640)
    key_module._load.cache_clear()
    with pytest.raises(CertstudyError, match="chmod 600"):
        key_module.state_key()
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    key_module._load.cache_clear()
    with pytest.raises(CertstudyError, match="regular file"):
        key_module.state_key()

    work = tmp_path / "work"
    monkeypatch.setenv(key_module.ENV_VAR, str(work / "keys" / "state.key"))
    key_module._load.cache_clear()
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(tiny_study("keyed")))
    assert main(["launch", str(study), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "inside the work directory" in err and key_module.ENV_VAR in err, err
    assert not (work / "keyed").exists()
