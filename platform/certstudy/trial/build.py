"""Turns a ``TrialConfig`` into data, a model and a method, through the registries."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from certstudy.certify import CERTIFIERS, Certifier, CertifierContext, CertifierParams
from certstudy.data import DATASETS, Splits, poison
from certstudy.data.base import channel_stats
from certstudy.methods import METHODS, Method, MethodContext, MethodParams
from certstudy.models import MODELS
from certstudy.models.base import build_model
from certstudy.trial.config import TrialConfig


@dataclass
class TrialParts:
    splits: Splits
    model: nn.Module
    method: Method
    certifiers: list[Certifier] = field(default_factory=list)


def load_splits(cfg: TrialConfig, data_dir: str) -> Splits:
    dataset = DATASETS.get(cfg.dataset.name)
    splits = dataset.load(dataset.Params(**cfg.dataset.options), cfg.seed, data_dir)
    return poison(splits, cfg.dataset.poisoning, cfg.seed)


def build_parts(cfg: TrialConfig, data_dir: str, device: torch.device) -> TrialParts:
    """Data on ``device``, a freshly initialised model (seeded on the CPU) and the method."""
    dataset = DATASETS.get(cfg.dataset.name)
    splits = load_splits(cfg, data_dir)
    factory = MODELS.get(cfg.model.name)
    params = factory.Params(**cfg.model.params)
    normalization = (
        (dataset.normalization(dataset.Params(**cfg.dataset.options)) or channel_stats(splits))
        if params.normalize
        else None
    )
    model = build_model(factory, params, splits.input_shape, splits.num_classes, normalization)
    splits = splits.to(device)
    method_cls = METHODS.get(cfg.method.name)
    context = MethodContext(splits.num_classes, splits.input_shape, splits.bounds, device, cfg.training.epochs)
    method = method_cls(method_cls.Params(**cfg.method.params), context)
    model = method.wrap_model(model).to(device)
    cert_context = CertifierContext(
        splits.num_classes, splits.input_shape, splits.bounds, device, dict(cfg.evaluation.radii)
    )
    certifiers = []
    for entry in cfg.evaluation.certifiers:
        certifier_cls = CERTIFIERS.get(entry.name)
        certifiers.append(
            certifier_cls(
                certifier_params(certifier_cls, entry.name, entry.params, method_cls, method.params), cert_context
            )
        )
    return TrialParts(splits, model, method, certifiers)


def attack_at_training_radius(cfg: TrialConfig, method: Method) -> TrialConfig:
    """``cfg`` with the evaluation attack's norm and radius set to the method's own threat model,
    when ``evaluation.attack.at_training_radius`` asks for it."""
    attack = cfg.evaluation.attack
    if not attack.at_training_radius:
        return cfg
    threat = type(method).threat_model(method.params)
    if threat is None:
        raise ValueError(f"evaluation.attack.at_training_radius: method {cfg.method.name!r} trains against no radius")
    norm, eps = threat
    attack = attack.model_copy(update={"norm": norm, "eps": eps})
    return cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"attack": attack})})


def certifier_params(
    certifier_cls: type[Certifier], name: str, params: dict, method_cls: type[Method], method_params: MethodParams
) -> CertifierParams:
    """The certifier's params: what the method implies (e.g. its noise level), overridden by the study's."""
    return certifier_cls.Params(**{**method_cls.certifier_defaults(method_params).get(name, {}), **params})
