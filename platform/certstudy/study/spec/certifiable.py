"""Validation: is the study's model one its certifiers and methods can reason about?

The deterministic certifiers (ibp, crown, lipschitz) and the methods whose loss bounds the network
(gloro, crown_ibp) accept only chains of layers they reproduce (``certify/network.py``). A model
outside that set would fail at the end of a trial; here it is built on the meta device (shapes,
no weights, no data read) for every value a searched model parameter can take, walked with each
certifier's and method's needs, and refused with one line naming the model, the certifier or
method, and the layer.
"""

from __future__ import annotations

from typing import Any

import torch

from certstudy.certify import CERTIFIERS
from certstudy.certify.network import UnsupportedLayer, layers_of
from certstudy.data import DATASETS
from certstudy.errors import SpecError
from certstudy.methods import MethodContext
from certstudy.models import MODELS
from certstudy.models.base import build_model


def _first_probes(fixed: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    """The fixed values with each searched value at its first probe."""
    return {**fixed, **{k: d.probes()[0] for k, d in search.items()}}


def _model_variants(fixed: dict[str, Any], search: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixed params with each searched value at its first probe, then each other probe in turn."""
    base = _first_probes(fixed, search)
    variants = [base]
    for key, dist in search.items():
        variants += [{**base, key: probe} for probe in dist.probes()[1:]]
    return variants


def check_certifiable(spec: Any, source: str, probed: list[tuple[Any, Any]]) -> None:
    """Raises ``SpecError`` when a configured certifier or a method cannot walk the model; ``probed`` is
    each method entry's (class, params at the first probes), as validation builds them."""
    checks = [
        (f"evaluation.certifiers[{i}].name", "certifier", e.name, CERTIFIERS.get(e.name).needs)
        for i, e in enumerate(spec.evaluation.certifiers)
    ]
    key = "methods" if spec.methods is not None else "method"
    methods = [
        (f"{key}[{i}].name" if spec.methods is not None else f"{key}.name", m, cls, params)
        for i, (m, (cls, params)) in enumerate(zip(spec.method_entries, probed))
    ]
    if not any(needs for *_, needs in checks) and not any(cls.needs_of(params) for _, _, cls, params in methods):
        return
    dataset = DATASETS.get(spec.dataset.name)
    options = dataset.Params(**_first_probes(spec.dataset.options, spec.dataset.search))
    shape, num_classes = dataset.shape(options)
    factory = MODELS.get(spec.model.name)
    normalization = ((0.0,) * shape[0], (1.0,) * shape[0])  # values do not matter for the layer walk
    for path, entry, method_cls, params in methods:
        method_needs = method_cls.needs_of(params)
        wanted = checks + ([(path, "method", entry.key, method_needs)] if method_needs else [])
        wanted = [c for c in wanted if c[3]]
        if not wanted:
            continue
        for model_params in _model_variants(spec.model.params, spec.model.search):
            with torch.device("meta"):
                try:
                    model = build_model(factory, factory.Params(**model_params), shape, num_classes, normalization)
                except ValueError as exc:
                    raise SpecError(
                        source, "model.name", spec.model.name, f"cannot build for input shape {shape}: {exc}"
                    ) from None
                context = MethodContext(num_classes, shape, (0.0, 1.0), torch.device("meta"), spec.training.epochs)
                model = method_cls(params, context).wrap_model(model)
            for field, what, name, needs in wanted:
                try:
                    layers_of(model, shape, needs)
                except UnsupportedLayer as exc:
                    verb = "certified by" if what == "certifier" else "trained by"
                    raise SpecError(
                        source, field, name, f"model {spec.model.name!r} cannot be {verb} {what} {name!r}: {exc}"
                    ) from None
