"""``certstudy export --register``: the exported trials' models in the MLflow Model Registry.

Each exported trial's weights (the ``model/model.pt`` its run logged: the model that was tested,
the best epoch's where the trial ended on one) are loaded into the network its resolved study
builds, and logged with ``mlflow.pytorch.log_model`` into the trial's own run, with an input
example from the test split, the signature inferred from it, and as metadata the exported study
document and the trial's certificate and test metrics. Each becomes a version of one registered
model, tagged with its rank, the metric it was ranked by and its Optuna trial; rank 1 carries the
alias ``best``, so ``mlflow.pytorch.load_model("models:/<name>@best")`` is the certified model.

The logged model is MLflow's pickle of the ``nn.Module`` (its classes are certstudy's): load it
where certstudy is installed, from a registry as trusted as the code.

A registered name belongs to the study whose models it holds (each version's ``STUDY_TAG``):
registering another study's models under it, which would move its ``best`` alias, needs
``--take-name``. The name is checked before anything is written.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import Any

import yaml

from certstudy.errors import CertstudyError, SpecError
from certstudy.metric_names import CERTIFICATION_METRIC
from certstudy.study.records.export import study_tracker
from certstudy.study.records.launched import study_spec
from certstudy.study.records.names import (
    MODEL_ARTIFACT_DIR,
    PROV_BY,
    PROV_METRICS,
    PROV_OPTUNA_TRIAL,
    PROV_RANK,
    PROV_RUN_ID,
    PROV_STUDY,
    PROVENANCE,
    RANK_TAG,
    RANKED_BY_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)
from certstudy.study.records.tracking import Tracker
from certstudy.study.spec.schema import StudySpec
from certstudy.trial.checkpoint import MODEL_FILE
from certstudy.workdir import Workdir

BEST_ALIAS = "best"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"
"""A registered model's name: room for any study name plus ``-best``."""


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    rank: int
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def model_metadata(doc: dict[str, Any]) -> dict[str, Any]:
    """The study document and the metrics a user of the model asks about (certificates, test)."""
    metrics = doc[PROVENANCE][PROV_METRICS]
    kept = {k: v for k, v in metrics.items() if CERTIFICATION_METRIC.match(k) or k.startswith("test/")}
    return {"study": yaml.safe_dump(doc, sort_keys=False), "metrics": kept}


def _trained_model(tracker: Tracker, doc: dict[str, Any], data_dir: str) -> tuple[Any, Any]:
    """The trial's network with its logged weights (on the CPU, eval mode) and two test inputs, as
    float32 in the dataset's input box (e.g. pixels / 255): what the model takes."""
    import torch

    from certstudy.trial.build import build_parts

    run_id = doc[PROVENANCE][PROV_RUN_ID]
    spec = StudySpec.model_validate(doc)
    parts = build_parts(spec.trial_config(), data_dir, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(run_id, f"{MODEL_ARTIFACT_DIR}/{MODEL_FILE}", tmp)
        except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
            raise CertstudyError(f"trial run {run_id} has no logged model ({MODEL_ARTIFACT_DIR}/{MODEL_FILE})") from exc
        try:
            state = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError: not our weights file
            raise CertstudyError(
                f"trial run {run_id}: its logged {MODEL_FILE} is not a plain weights file ({type(exc).__name__}); "
                f"it was changed outside certstudy, and is not loaded"
            ) from None
    try:
        parts.model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CertstudyError(
            f"trial run {run_id}: its logged {MODEL_FILE} does not fit the study's network ({type(exc).__name__})"
        ) from None
    return parts.model.eval(), parts.splits.floats(parts.splits.x_test[:2])  # inputs as the model takes them


def register(
    workdir: Workdir, docs: list[dict[str, Any]], name: str, tracking_uri: str | None = None
) -> list[RegisteredVersion]:
    """One registered-model version per exported document (in rank order); alias ``best`` on rank 1."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    if not docs:
        return []
    tracker = study_tracker(workdir, study_spec(workdir, docs[0][PROVENANCE][PROV_STUDY]), tracking_uri)
    data_dir = str(workdir.data_dir)
    mlflow.set_tracking_uri(tracker.tracking_uri)
    versions = []
    for doc in docs:
        prov = doc[PROVENANCE]
        model, example = _trained_model(tracker, doc, data_dir)
        # The logged model belongs to the trial's experiment, whose artifacts live in the work
        # directory (MLflow's default experiment would put them under ./mlruns of the caller).
        mlflow.set_experiment(experiment_id=tracker.client.get_run(prov[PROV_RUN_ID]).info.experiment_id)
        with torch.no_grad():
            output = model(example)
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT_DIR + "-registered",
            run_id=prov[PROV_RUN_ID],
            registered_model_name=name,
            signature=infer_signature(example.numpy(), output.numpy()),
            input_example=example.numpy(),
            metadata=model_metadata(doc),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            serialization_format="pickle",  # loads as the nn.Module it is (pt2 loads an ExportedProgram)
        )
        version = str(info.registered_model_version)
        for key, value in (
            (RANK_TAG, prov[PROV_RANK]),
            (RANKED_BY_TAG, prov[PROV_BY]),
            (TRIAL_TAG, prov.get(PROV_OPTUNA_TRIAL)),
            (STUDY_TAG, prov[PROV_STUDY]),
        ):
            tracker.client.set_model_version_tag(name, version, key, str(value))
        if prov[PROV_RANK] == 1:
            tracker.client.set_registered_model_alias(name, BEST_ALIAS, version)
        versions.append(RegisteredVersion(name, version, int(prov[PROV_RANK]), prov[PROV_RUN_ID]))
    return versions


def default_name(study: str) -> str:
    return f"{study}-best"


def check_name(name: str, given: bool) -> None:
    """``name`` is a registered model name (``given``: it came from ``--name``, else it is the default)."""
    if not re.fullmatch(MODEL_NAME_PATTERN, name):
        source = "--name" if given else "export --register"
        raise SpecError(
            source,
            "",
            name,
            "a registered model name: a letter or digit, then letters, digits, '.', '_', '-' (at most 200)",
        )


def check_owner(workdir: Workdir, study: str, name: str, tracking_uri: str | None, take: bool) -> None:
    """Refuses ``name`` when versions of another study (or of no certstudy study) hold it, unless
    ``take``; a name not registered yet, or registered by ``study`` itself, is fine."""
    from mlflow.exceptions import MlflowException

    tracker = study_tracker(workdir, study_spec(workdir, study), tracking_uri)
    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return  # no such registered model
    owners = sorted({v.tags.get(STUDY_TAG, "(not a certstudy study)") for v in versions} - {study})
    if owners and not take:
        raise SpecError(
            "--name",
            "",
            name,
            f"registered model {name!r} holds models of study {', '.join(owners)}; registering these would move its "
            f"{BEST_ALIAS!r} alias: choose another name, or give --take-name",
        )


__all__ = [
    "BEST_ALIAS",
    "RANK_TAG",
    "TRIAL_TAG",
    "RegisteredVersion",
    "check_name",
    "check_owner",
    "default_name",
    "register",
]
