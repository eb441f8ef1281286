"""The one interface every certifier implements, and what it returns.

A certifier turns ``(model, x, y)`` into per-example predictions and certified radii. One
certifier may issue several certificates from the same samples (randomized smoothing gives
Cohen's radius and the two-sided radius from one set of counts), so a result holds a list of
``Certificate``; each names its norm, and the trial turns every certificate into the same metrics
(``certify/metrics.py``) without knowing which certifier made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from certstudy.schema import Schema

ABSTAIN = -1


class CertifierParams(Schema):
    """Base for a certifier's settings (the study file's ``evaluation.certifiers[i].params``)."""


@dataclass(frozen=True)
class CertifierContext:
    num_classes: int
    input_shape: tuple[int, ...]
    bounds: tuple[float, float] | None
    device: torch.device
    radii: dict[str, list[float]] = field(default_factory=dict)  # the study's radius grid, per norm


@dataclass
class Certificate:
    """Per-example outcome of one certificate.

    ``predictions`` is the certified classifier's label (``ABSTAIN`` where it abstains);
    ``radii`` the certified radius in ``norm`` (float64, full precision; NaN where nothing is
    certified). A point counts as certified at r when it is predicted correctly and radius >= r.
    """

    name: str
    norm: str
    predictions: Tensor
    radii: Tensor


@dataclass
class CertifyResult:
    certificates: list[Certificate]
    extras: dict[str, float] = field(default_factory=dict)  # e.g. {"abstain_rate": 0.03}


class Certifier:
    """Base class; subclasses set ``Params`` and implement ``certificates`` and ``certify``."""

    Params: ClassVar[type[CertifierParams]] = CertifierParams
    deterministic: ClassVar[bool] = False
    """Certifies the model itself (not a smoothed version), so the soundness audit attacks its points."""
    needs: ClassVar[frozenset[str]] = frozenset()
    """What it needs of every layer (``certify/network.py``: interval, relaxation, lipschitz); validation
    builds the model on the meta device and refuses a layer that lacks one."""

    def __init__(self, params: CertifierParams, context: CertifierContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def certificates(cls, params: CertifierParams) -> list[tuple[str, str]]:
        """(certificate name, norm) of everything ``certify`` returns, known before running."""
        raise NotImplementedError

    @classmethod
    def check(cls, params: CertifierParams) -> None:
        """Raises ``ValueError`` naming what is missing when ``params`` cannot certify (e.g. no sigma)."""

    def certify(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> CertifyResult:
        raise NotImplementedError
