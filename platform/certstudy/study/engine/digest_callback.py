"""Ray Tune's saved state, authenticated as it is written: the digests of the experiment state
files are recorded in the Optuna study when Ray Tune saves them (``study/records/state_digests.py``),
so a resume unpickles only files this study wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from certstudy.study.engine.disk_full_stop import request_stop
from certstudy.study.records.state_digests import record as record_digests
from certstudy.study.records.state_digests import state_files


class StateDigestsCallback(Callback):
    """Records the digests of the state files Ray Tune has just saved to its staging folder."""

    def __init__(self, searcher: Any, study: str) -> None:
        self.searcher = searcher  # knows the staging folder and the Optuna study
        self.study_name = study

    def get_state(self) -> None:
        """Ray Tune asks for this while it saves the experiment state: after writing the state files
        to its staging folder, before copying them to the experiment folder. The callback has no
        state of its own to save."""
        staging = getattr(self.searcher, "staging_dir", None)
        if self.searcher is None or not staging:
            return None
        try:
            record_digests(self.searcher.study, Path(staging))
        except Exception as exc:
            if not request_stop(self.study_name, exc, "the Optuna storage"):
                raise
            for path in state_files(Path(staging)):  # unrecorded: must not reach the experiment folder
                path.unlink(missing_ok=True)
        return None
