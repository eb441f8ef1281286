"""Where a study's state lives (README: Work directory): one work directory per user or project.

<workdir>/mlflow.db            MLflow tracking store (sqlite)
<workdir>/mlartifacts/         MLflow artifacts
<workdir>/data/                downloaded datasets ($CERTSTUDY_DATA replaces it)
<workdir>/dashboards/          the user's own dashboard layouts (beside the shipped ones)
<workdir>/<study>/study.yaml   the study as launched
<workdir>/<study>/optuna.db    Optuna storage (unless launch --optuna-storage named a database)
<workdir>/<study>/stores.json  where its records went: the tracking URI and Optuna storage it was launched with
<workdir>/<study>/ray/         Ray Tune experiment (trial dirs, checkpoints)
<workdir>/<study>/best.yaml    default export
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from certstudy.errors import CertstudyError

DEFAULT_WORKDIR = "certstudy-runs"
ENV_VAR = "CERTSTUDY_HOME"
DATA_ENV_VAR = "CERTSTUDY_DATA"
RAY_EXPERIMENT = "ray"
STUDY_FILE = "study.yaml"  # the study as launched, in its folder (and, by the same name, in its MLflow runs)
PROGRESS_FILE = "progress.json"  # a running study's trials: epoch and phase, rewritten every second
STORES_FILE = "stores.json"  # the stores a study was launched with, in its folder
TRACKING_STORE = "tracking_uri"  # keys of STORES_FILE
OPTUNA_STORE = "optuna_storage"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
"""Study and experiment names: they become folder names under the work directory, so no separator
and no leading dot (``..``, ``/tmp/x`` and ``a/b`` are refused)."""
MOVED_ASIDE = ".prev-"  # <study>.prev-<time>: a study's folder moved aside by a later launch of that study


@dataclass(frozen=True)
class Workdir:
    root: Path

    @classmethod
    def resolve(cls, arg: str | os.PathLike[str] | None = None) -> Workdir:
        """``--workdir`` if given, else ``$CERTSTUDY_HOME``, else ``./certstudy-runs``; absolute."""
        chosen = arg or os.environ.get(ENV_VAR) or DEFAULT_WORKDIR
        return cls(Path(chosen).expanduser().resolve())

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def own_data_dir(self) -> Path:
        """``<workdir>/data``: where datasets are downloaded when ``$CERTSTUDY_DATA`` is not set."""
        return self.root / "data"

    @property
    def data_dir(self) -> Path:
        """The default data root: ``$CERTSTUDY_DATA`` when set (resolved here, in the driver, so every
        Ray worker reads the same folder), else ``own_data_dir``."""
        env = os.environ.get(DATA_ENV_VAR)
        return Path(env).expanduser().resolve() if env else self.own_data_dir

    @property
    def layouts_dir(self) -> Path:
        return self.root / "dashboards"

    def study_dir(self, study: str) -> Path:
        return self.root / study

    def optuna_url(self, study: str) -> str:
        """The study's Optuna storage: the one it was launched with (``stores.json``), else the
        default sqlite file in its folder."""
        return self.recorded_store(study, OPTUNA_STORE) or self.own_optuna_url(study)

    def own_optuna_url(self, study: str) -> str:
        """The default Optuna storage: sqlite in the study's folder."""
        return f"sqlite:///{self.study_dir(study) / 'optuna.db'}"

    def recorded_store(self, study: str, key: str) -> str | None:
        """``key`` (``TRACKING_STORE`` or ``OPTUNA_STORE``) of the stores ``study`` was launched with,
        or None for a study launched before they were recorded. The URIs carry no password (launch
        refuses one), so the record holds no secret."""
        path = self.study_dir(study) / STORES_FILE
        try:
            value = json.loads(path.read_text()).get(key)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as exc:
            raise CertstudyError(f"{path}: unreadable ({type(exc).__name__}); it names the study's stores") from None
        return value if isinstance(value, str) else None

    def record_stores(self, study: str, tracking_uri: str, optuna_storage: str) -> None:
        """Writes ``stores.json`` whole (a temporary file renamed over it: never half-written)."""
        path = self.study_dir(study) / STORES_FILE
        tmp = path.with_name(f".{STORES_FILE}.tmp")
        tmp.write_text(json.dumps({TRACKING_STORE: tracking_uri, OPTUNA_STORE: optuna_storage}, indent=1) + "\n")
        os.replace(tmp, path)

    def ray_experiment_dir(self, study: str) -> Path:
        return self.study_dir(study) / RAY_EXPERIMENT

    def study_file(self, study: str) -> Path:
        """The study as launched (what export, reruns and the UI read back)."""
        return self.study_dir(study) / STUDY_FILE

    def check_current(self, study: str, launched_name: str | None = None) -> None:
        """Refuses a folder that is not a study's current one: a moved-aside earlier launch
        (``<study>.prev-<time>``), or one whose ``study.yaml`` names another study
        (``launched_name``). Its study.yaml names the live study, so reading or resuming it would
        reach the live study's records and folders under another lock."""
        from certstudy.errors import SpecError

        if MOVED_ASIDE in study:
            live = study.split(MOVED_ASIDE, 1)[0]
            raise SpecError(
                str(self.root),
                "study",
                study,
                f"holds the earlier results of study {live!r}, moved aside by a later launch; certstudy reads and "
                f"resumes a study's current folder only (its MLflow runs stay in the UI)",
            )
        if launched_name is not None and launched_name != study:
            raise SpecError(
                str(self.study_file(study)),
                "name",
                launched_name,
                f"the study in folder {study!r} must be named {study!r}; refusing to reach another study's records",
            )

    def progress_file(self, study: str) -> Path:
        """Where a running study's driver keeps each running trial's epoch and phase (``status`` reads it)."""
        return self.study_dir(study) / PROGRESS_FILE

    def export_path(self, study: str) -> Path:
        return self.study_dir(study) / "best.yaml"

    def ensure(self, study: str | None = None) -> None:
        for d in (self.root, self.artifact_root, self.own_data_dir) + ((self.study_dir(study),) if study else ()):
            d.mkdir(parents=True, exist_ok=True)
