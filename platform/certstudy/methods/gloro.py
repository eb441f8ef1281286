"""GloRo nets (Leino, Wang & Fredrikson, ICML 2021): training through a Lipschitz-margin ⊥ logit.

For the predicted class j the extra logit y_⊥ = max_{i != j} (y_i + eps·K_ji), K_ji = K_sub·||w_j - w_i||
(``certify/lipschitz.py``), so classifying a point correctly over [y, y_⊥] certifies it at eps in l2.
K_sub is the product of the spectral norms of the layers below the last, estimated by GloRo's
power method: one persistent, gradient-free iterate per layer, ``power_iterations`` steps per
batch, gradients reaching the weights through ||W u|| / ||u|| only; the iterates are re-converged
at every epoch start (relative change < 1e-2, at most 100 rounds). Certification does not use them:
the ``lipschitz`` certifier computes exact norms of the final weights; ``final_metrics`` reports
the converged-and-frozen power estimate next to the exact product as a convergence check.

Written here because the reference GloRo (github.com/klasleino/gloro) is TensorFlow-only. Losses:
``crossentropy`` over the m+1 logits, or ``trades``: CE(y, label) + lambda·KL(softmax(y) || softmax([y, y_⊥])[:m]),
which equals lambda·softplus(y_⊥ - logsumexp(y)). The training eps follows a schedule from
``eps_start_fraction``·train_eps to train_eps over the first ``ramp_fraction`` of the epochs
(linear or logarithmic, as the GloRo library's '[0.01]-log-[50%:1.1]'), interpolated per epoch, and the
TRADES weight may ramp linearly from ``lambda_start`` to ``lambda`` over the same epochs;
train_eps = ``train_eps_factor``·eps may exceed the evaluation eps, as in the paper's recipes (e.g. 1.5).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from certstudy.certify.lipschitz import PowerIterates, bottom_logit, last_layer_weight, margin_constants, sub_lipschitz
from certstudy.certify.network import LIPSCHITZ, Layer, layers_of
from certstudy.data.base import Splits
from certstudy.methods.base import Method, MethodContext, MethodParams
from certstudy.methods.registry import METHODS


class GloroParams(MethodParams):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    eps: float = Field(0.3, gt=0, le=10, description="evaluation l2 radius")
    train_eps_factor: float = Field(
        1.0, ge=0.5, le=4, description="training radius at the end of the ramp, as a multiple of eps"
    )
    loss: Literal["crossentropy", "trades"] = "crossentropy"
    lambda_: float = Field(1.5, alias="lambda", ge=0, description="trades: weight of the KL term")
    lambda_start: float | None = Field(
        None,
        ge=0,
        description="trades: the weight at the first epoch, ramped linearly to lambda with eps (None: fixed)",
    )
    schedule: Literal["constant", "linear", "log"] = "log"
    eps_start_fraction: float = Field(0.01, gt=0, le=1, description="the ramp starts at this fraction of train_eps")
    ramp_fraction: float = Field(0.5, ge=0, le=1, description="fraction of the epochs the ramp takes")
    power_iterations: int = Field(5, ge=1, le=100, description="power-method steps per batch")

    @property
    def target_eps(self) -> float:
        return self.train_eps_factor * self.eps


def _ramp_progress(p: GloroParams, epoch: int, epochs: int) -> float:
    """How far along the ramp an epoch (0-based) is: 1 once the first ``ramp_fraction`` of the epochs have passed."""
    ramp = p.ramp_fraction * epochs
    return 1.0 if ramp <= 0 else min(1.0, (epoch + 1) / ramp)


def scheduled_lambda(p: GloroParams, epoch: int, epochs: int) -> float:
    """The TRADES weight of an epoch: linear from ``lambda_start`` to ``lambda`` over the eps ramp, as
    the GloRo paper's MNIST recipes ramp it (0 -> 2 at eps 0.3, 0 -> 3 at eps 1.58)."""
    if p.lambda_start is None:
        return p.lambda_
    return p.lambda_start + _ramp_progress(p, epoch, epochs) * (p.lambda_ - p.lambda_start)


def scheduled_eps(p: GloroParams, epoch: int, epochs: int) -> float:
    """The training eps of an epoch (0-based): ramp from start to target, then constant."""
    target = p.target_eps
    if p.schedule == "constant" or p.ramp_fraction * epochs <= 0:
        return target
    t = _ramp_progress(p, epoch, epochs)
    start = p.eps_start_fraction * target
    if p.schedule == "linear":
        return start + t * (target - start)
    return math.exp(math.log(start) + t * (math.log(target) - math.log(start)))


@METHODS.register("gloro")
class GloroTraining(Method):
    Params = GloroParams
    params: GloroParams
    needs = frozenset({LIPSCHITZ})

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.eps = scheduled_eps(self.params, 0, context.epochs)
        self.lam = scheduled_lambda(self.params, 0, context.epochs)
        self._layers: list[Layer] | None = None
        self._iterates: PowerIterates | None = None
        self._pending: list[Tensor] | None = None
        self._k_sub: Tensor | None = None

    @classmethod
    def certifier_defaults(cls, params: MethodParams) -> dict[str, dict[str, Any]]:
        """GloRo certifies l2 balls; bound-propagation certifiers of its nets default to l2 too."""
        return {"ibp": {"norm": "l2"}, "crown": {"norm": "l2"}}

    @classmethod
    def threat_model(cls, params: MethodParams) -> tuple[str, float] | None:
        assert isinstance(params, GloroParams)
        return "l2", params.eps

    def iterates(self, model: nn.Module) -> tuple[list[Layer], PowerIterates]:
        if self._iterates is None:
            self._layers = layers_of(model, self.context.input_shape, self.needs)
            gen = torch.Generator().manual_seed(0)
            self._iterates = PowerIterates(self._layers[:-1], gen)
            if self._pending is not None:
                self._iterates.load(self._pending)
            else:
                self._iterates.converge(1e-2, 100)
        assert self._layers is not None
        return self._layers, self._iterates

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        self.eps = scheduled_eps(self.params, epoch, self.context.epochs)
        self.lam = scheduled_lambda(self.params, epoch, self.context.epochs)
        self.iterates(model)[1].converge(1e-2, 100)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        layers, iterates = self.iterates(model)
        iterates.step(self.params.power_iterations)
        k_sub = iterates.product()
        constants = margin_constants(k_sub, last_layer_weight(layers))
        logits = model(x)
        y_bot = bottom_logit(logits, constants, self.eps)
        self._k_sub = k_sub.detach()
        if self.params.loss == "crossentropy":
            return F.cross_entropy(torch.cat([logits, y_bot[:, None]], dim=1), y)
        return F.cross_entropy(logits, y) + self.lam * F.softplus(y_bot - torch.logsumexp(logits, dim=1)).mean()

    epoch_metric_names = frozenset({"train/gloro_eps", "train/gloro_lambda", "train/gloro_k_sub"})

    def epoch_metrics(self) -> dict[str, float]:
        out = {"train/gloro_eps": self.eps, "train/gloro_lambda": self.lam}
        if self._k_sub is not None:
            out["train/gloro_k_sub"] = float(self._k_sub)
        return out

    def final_metrics(self, model: nn.Module, splits: Splits, *, batch_size: int, seed: int) -> dict[str, float | str]:
        """The converged-and-frozen power estimate of K_sub against the certifier's guaranteed product
        (``test/gloro_k_sub_exact``: exact norms where materialised, circulant bounds above; ratio <= 1)."""
        layers, iterates = self.iterates(model)
        frozen = iterates.converge(1e-4, 200)
        exact = sub_lipschitz(layers)[0]
        return {
            "test/gloro_k_sub_power": frozen,
            "test/gloro_k_sub_exact": exact,
            "test/gloro_k_sub_ratio": frozen / exact if exact > 0 else 1.0,
        }

    def state_dict(self) -> dict[str, Tensor | float | int]:
        if self._iterates is None:
            return {}
        return {f"u{i}": u for i, u in enumerate(self._iterates.state())}

    def load_state_dict(self, state: dict[str, Tensor | float | int]) -> None:
        vectors = [state[f"u{i}"] for i in range(len(state))]
        self._pending = [v for v in vectors if isinstance(v, Tensor)] or None
        if self._iterates is not None and self._pending:
            self._iterates.load(self._pending)
