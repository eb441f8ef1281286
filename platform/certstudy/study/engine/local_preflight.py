"""What ``certstudy validate`` and ``launch`` check before anything starts, each refusal one line
naming the field (exit 2): the trial's resources exist on this machine (or, given ``--address``,
on some node of that cluster), the dataset's files are present or downloadable, and a tracking
store the study names answers. ``--no-preflight`` skips these, for a study written on a laptop
and meant for a cluster.
"""

from __future__ import annotations

import os

from certstudy.errors import SpecError
from certstudy.study.spec.schema import StudySpec
from certstudy.workdir import Workdir

SKIP_HINT = "(--no-preflight writes it anyway, e.g. for a cluster)"


def machine_resources() -> tuple[int, int]:
    """(CPUs this process may use, CUDA GPUs visible)."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus, torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_machine_resources(source: str, spec: StudySpec) -> None:
    """A trial's ``resources`` fit on this machine."""
    cpus, gpus = machine_resources()
    want = spec.resources
    if want.gpu > gpus:
        raise SpecError(
            source,
            "resources.gpu",
            want.gpu,
            f"a trial asks for gpu={want.gpu:g} and this machine has {gpus} GPU(s); give --address for a cluster "
            f"that has them {SKIP_HINT}",
        )
    if want.cpu > cpus:
        raise SpecError(
            source,
            "resources.cpu",
            want.cpu,
            f"a trial asks for cpu={want.cpu:g} and this machine has {cpus} CPU(s) {SKIP_HINT}",
        )


def check_cluster_resources(source: str, spec: StudySpec, address: str, verbose: bool = False) -> None:
    """A trial's ``resources`` fit on some alive node of the Ray cluster at ``address``."""

    from certstudy.study.engine.preflight import PreflightError, check_resources
    from certstudy.study.engine.ray_start import join_cluster

    connection = join_cluster(address, verbose)
    try:
        check_resources(spec.resources.cpu, spec.resources.gpu)
    except PreflightError as exc:
        raise SpecError(source, "resources", f"cpu={spec.resources.cpu:g}, gpu={spec.resources.gpu:g}", str(exc))
    finally:
        connection.close()


def check_dataset(source: str, spec: StudySpec, workdir: Workdir) -> None:
    from certstudy.data import DATASETS

    dataset = DATASETS.get(spec.dataset.name)
    reason = dataset.unavailable(dataset.Params(**spec.dataset.options), str(workdir.data_dir))
    if reason:
        raise SpecError(source, "dataset", spec.dataset.name, f"{reason} {SKIP_HINT}")


def check_tracking_store(source: str, spec: StudySpec, workdir: Workdir) -> None:
    """The study file's own tracking store, when it names one (``--tracking-uri`` is ``launch``'s)."""
    from certstudy.study.records.store_probe import check_store

    uri = spec.tracking_uri(workdir)
    if uri != workdir.tracking_uri:
        check_store(uri, f"{source}: tracking.tracking_uri")


def preflight(source: str, spec: StudySpec, workdir: Workdir, address: str | None, verbose: bool = False) -> None:
    """Every check above, cheapest first."""
    if address is None:
        check_machine_resources(source, spec)
    check_tracking_store(source, spec, workdir)
    check_dataset(source, spec, workdir)
    if address is not None:
        check_cluster_resources(source, spec, address, verbose)
