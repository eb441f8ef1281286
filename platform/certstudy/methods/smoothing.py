"""Gaussian-noise training for randomized smoothing (Cohen et al. 2019) with optional regularizers.

The base classifier is trained on k noisy copies x + e, e ~ N(0, sigma^2 I), of every example,
noise added in the [0, 1] input space before anything the model does (so certified radii are in
input units). Regularizers, by name:

- ``none``: cross-entropy averaged over the k copies (Cohen et al.'s Gaussian augmentation).
- ``adre`` (Feng et al., AAAI 2020, as reimplemented in the third-party ``benchmark-ctrs``: only
  the paper's abstract is verified): CE + lambda * log G_c*(x), G the mean softmax over the k copies
  and c* the strongest wrong class, which pushes the runner-up's smoothed probability down (what
  the two-sided certificate rewards), with the log taken of G + 1e-10 as there: bounded below by
  log 1e-10, so that the push on the runner-up fades once it is beaten by ten orders of magnitude.
- ``consistency`` (Jeong & Shin, NeurIPS 2020): CE + lambda * mean_i KL(p_bar || p_i) + eta * H(p_bar).

``lambda`` and ``k`` default to the regularizer's published values (adre: 0.1 and 8; consistency:
10 and 2; none: k = 1). The certifier ``smoothing`` takes this method's sigma unless the study sets one.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from certstudy.methods.base import Method, MethodParams
from certstudy.methods.registry import METHODS

DEFAULT_K = {"none": 1, "adre": 8, "consistency": 2}
DEFAULT_LAMBDA = {"none": 0.0, "adre": 0.1, "consistency": 10.0}
ADRE_LOG_FLOOR = math.log(1e-10)
"""ADRE's log G_c* is taken of G + 1e-10 (benchmark-ctrs), which bounds the term below by this."""


class SmoothingTrainingParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    sigma: float = Field(0.25, gt=0, le=4, description="training noise level in [0, 1] input units")
    regularizer: Literal["none", "adre", "consistency"] = "none"
    k: int | None = Field(None, ge=1, le=64, description="noisy copies per example; None: the regularizer's default")
    lambda_: float | None = Field(
        None, alias="lambda", ge=0, description="regularizer weight; None: the regularizer's default"
    )
    eta: float = Field(0.5, ge=0, description="consistency: weight of the entropy term")

    @property
    def copies(self) -> int:
        return self.k if self.k is not None else DEFAULT_K[self.regularizer]

    @property
    def weight(self) -> float:
        return self.lambda_ if self.lambda_ is not None else DEFAULT_LAMBDA[self.regularizer]


@METHODS.register("smoothing")
class SmoothingTraining(Method):
    Params = SmoothingTrainingParams
    params: SmoothingTrainingParams
    model_is_classifier = False  # the smoothed classifier g, not the trained f, is certified

    @classmethod
    def certifier_defaults(cls, params: MethodParams) -> dict[str, dict[str, Any]]:
        assert isinstance(params, SmoothingTrainingParams)
        return {"smoothing": {"sigma": params.sigma}}

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        p = self.params
        k = p.copies
        noisy = (
            x.unsqueeze(0).expand(k, *x.shape) + torch.randn((k, *x.shape), device=x.device, dtype=x.dtype) * p.sigma
        )
        logits = model(noisy.reshape(k * len(x), *x.shape[1:])).view(k, len(x), -1)
        ce = F.cross_entropy(logits.reshape(k * len(x), -1), y.repeat(k))
        if p.regularizer == "none":
            return ce
        log_p = logits.log_softmax(dim=-1)  # (k, B, K)
        log_mean = torch.logsumexp(log_p, dim=0) - math.log(k)  # log of the smoothed probabilities G
        if p.regularizer == "adre":
            # log(G + 1e-10), as benchmark-ctrs computes it: bounded below, and its gradient fades once the
            # runner-up's smoothed probability is far under 1e-10 (the bare log G pushes the logits apart
            # with a force that never fades, and LeNet collapses to chance within two epochs on MNIST)
            floored = torch.logaddexp(log_mean, torch.full_like(log_mean, ADRE_LOG_FLOOR))
            wrong = floored.scatter(1, y[:, None], -torch.inf)
            return ce + p.weight * wrong.max(dim=1).values.mean()
        mean_p = log_mean.exp()
        kl = (mean_p.unsqueeze(0) * (log_mean.unsqueeze(0) - log_p)).sum(-1).mean()
        entropy = -(mean_p * log_mean).sum(-1).mean()
        return ce + p.weight * kl + p.eta * entropy
