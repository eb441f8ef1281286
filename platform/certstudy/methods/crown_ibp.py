"""CROWN-IBP certified training (Zhang et al., ICLR 2020) with relaxation-tightness regularizers (Zhu et al. 2020).

The robust loss is the cross-entropy of the worst-case logits -lb, lb the lower bounds of the
margins y_label - y_i over the eps-ball (``certify/bounds.py``), mixed as in CROWN-IBP:
lb = beta·lb_CROWN-IBP + (1 - beta)·lb_IBP, loss = kappa·CE(clean) + (1 - kappa)·CE(-lb). After
``warmup_epochs`` of clean training, eps ramps linearly to its target over ``ramp_fraction`` of the
remaining epochs while beta and kappa move from their start to their end values (per epoch).

Tightness regularizers, **our reconstruction of Zhu et al. from the paper's abstract and a
reviewer's summary only (UNVERIFIED against its §4: Zhu et al., "Improving the Tightness of Convex
Relaxation Bounds for Training Certifiably Robust Classifiers", arXiv:2002.09766)**:
- ``gap_weight`` (r1): mean over margins of d = c·f(x*) - lb_CROWN-IBP >= 0, x* the point where
  the linear bound is attained. d = 0 when the relaxed optimum is feasible for the real network.
- ``feasibility_weight`` (r2): at the relaxed optimum, the summed distance between each unstable
  ReLU's relaxed activation and ReLU of its relaxed pre-activation (zero when every unstable
  neuron sits on the ReLU graph), averaged over margins.
Both are computed on the CROWN-IBP bound, whatever beta is.

``loss_fusion`` (Xu et al., NeurIPS 2020): the CROWN-IBP part of the robust loss becomes an upper
bound of the cross-entropy itself (``fused_cross_entropy_bound``), one backward row per example
instead of one per class margin: beta·fused + (1 - beta)·CE(-lb_IBP). IBP alone gains nothing from it
(its last layer is already folded into the margins).

BatchNorm (CNN7): the clean forward pass runs first, and the bounds use the statistics it normalised
the clean batch with (``certify/network.py``, ``BatchNormLayer``), as Shi et al. (2021) do; the
relaxation gap replays that same network at x*.

Written here because no maintained library fits (auto_LiRPA's registry release does not run on
torch 2; see ``certify/bounds.py``). The ``ibp`` and ``crown`` certifiers take this method's norm.
"""

from __future__ import annotations

from typing import Any, Literal

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from certstudy.certify.bounds import Ball, crown_ibp, fused_cross_entropy_bound, ibp, margin_spec, relaxed_forward
from certstudy.certify.network import INTERVAL, RELAXATION, REPLAY, Layer, forward, layers_of
from certstudy.methods.base import Method, MethodContext, MethodParams
from certstudy.methods.registry import METHODS


class CrownIbpParams(MethodParams):
    eps: float = Field(0.1, ge=0, le=10, description="training radius at the end of the ramp")
    norm: Literal["linf", "l2"] = "linf"
    warmup_epochs: int = Field(0, ge=0, description="clean-training epochs before the ramp")
    ramp_fraction: float = Field(0.5, gt=0, le=1, description="fraction of the remaining epochs the eps ramp takes")
    beta_start: float = Field(1.0, ge=0, le=1, description="weight of the CROWN-IBP bound at the ramp's start")
    beta_end: float = Field(0.0, ge=0, le=1, description="... and at its end (0: pure IBP)")
    kappa_start: float = Field(1.0, ge=0, le=1, description="weight of the clean loss at the ramp's start")
    kappa_end: float = Field(0.5, ge=0, le=1, description="... and at its end")
    gap_weight: float = Field(0.0, ge=0, description="Zhu et al. r1: weight of the relaxation gap (unverified reading)")
    feasibility_weight: float = Field(
        0.0, ge=0, description="Zhu et al. r2: weight of the unstable-ReLU infeasibility (unverified reading)"
    )
    loss_fusion: bool = Field(
        False,
        description="bound the cross-entropy itself with one CROWN-IBP backward row per example (Xu et al. 2020) "
        "instead of one row per class margin; not with the tightness regularizers",
    )

    @model_validator(mode="after")
    def _fusion_without_regularizers(self) -> CrownIbpParams:
        if self.loss_fusion and (self.gap_weight > 0 or self.feasibility_weight > 0):
            raise ValueError("loss_fusion bounds the loss, not the margins the tightness regularizers replay")
        return self


@METHODS.register("crown_ibp")
class CrownIbpTraining(Method):
    Params = CrownIbpParams
    params: CrownIbpParams
    needs = frozenset({INTERVAL, RELAXATION})

    @classmethod
    def needs_of(cls, params: MethodParams) -> frozenset[str]:
        """The regularizers replay the chosen relaxation lines, which only ReLU layers record."""
        assert isinstance(params, CrownIbpParams)
        regularised = params.gap_weight > 0 or params.feasibility_weight > 0
        return cls.needs | {REPLAY} if regularised else cls.needs

    def __init__(self, params: MethodParams, context: MethodContext) -> None:
        super().__init__(params, context)
        self.progress = 0.0
        self._layers: list[Layer] | None = None
        self._stats: dict[str, Tensor] = {}

    @classmethod
    def certifier_defaults(cls, params: MethodParams) -> dict[str, dict[str, Any]]:
        assert isinstance(params, CrownIbpParams)
        return {"ibp": {"norm": params.norm}, "crown": {"norm": params.norm}}

    @classmethod
    def threat_model(cls, params: MethodParams) -> tuple[str, float] | None:
        assert isinstance(params, CrownIbpParams)
        return params.norm, params.eps

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        p = self.params
        ramp = max(1.0, p.ramp_fraction * (self.context.epochs - p.warmup_epochs))
        self.progress = min(1.0, max(0.0, (epoch - p.warmup_epochs + 1) / ramp))

    def _mix(self, start: float, end: float) -> float:
        return start + self.progress * (end - start)

    @property
    def eps(self) -> float:
        return self.params.eps * self.progress

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        p = self.params
        if self._layers is None:
            # Built before the first forward pass: building registers BatchNorm's statistics hook, so the
            # very first bound already uses the statistics the clean forward below normalises with.
            self._layers = layers_of(model, self.context.input_shape, self.needs_of(p))
        layers = self._layers
        logits = model(x)
        clean = F.cross_entropy(logits, y)
        if self.eps <= 0:
            return clean
        ball = Ball.of(x, self.eps, p.norm, self.context.bounds)
        spec = margin_spec(y, self.context.num_classes).to(x.dtype)
        beta = self._mix(p.beta_start, p.beta_end)
        regularised = p.gap_weight > 0 or p.feasibility_weight > 0
        kappa = self._mix(p.kappa_start, p.kappa_end)
        if p.loss_fusion and beta > 0:
            # beta·(fused CROWN-IBP loss) + (1 - beta)·CE(-lb_IBP): a mixture of two upper bounds of the
            # worst-case loss (mixing outside the CE, which by convexity is >= mixing the bounds inside it)
            ibp_bounds, margins = ibp(layers, ball, spec)
            fused = fused_cross_entropy_bound(layers, ball, ibp_bounds, margins, y, logits)
            ibp_ce = F.cross_entropy(-margins[0], y)
            robust = beta * fused.mean() + (1 - beta) * ibp_ce
            self._stats = {"robust_ce": robust.detach()}
            return kappa * clean + (1 - kappa) * robust
        if beta > 0 or regularised:
            ibp_lower, bound = crown_ibp(layers, ball, spec, record=regularised)
            lower = beta * bound.lower + (1 - beta) * ibp_lower
        else:
            lower = ibp(layers, ball, spec)[1][0]
        loss = kappa * clean + (1 - kappa) * F.cross_entropy(-lower, y)
        self._stats = {"robust_ce": F.cross_entropy(-lower.detach(), y)}
        if regularised:
            _, infeasibility = relaxed_forward(layers, bound)
            n, s = spec.shape[:2]
            real = forward(layers, bound.x_star.reshape(n * s, *x.shape[1:])).view(
                n, s, -1
            )  # the network the bounds describe
            gap = (spec * real).sum(-1) - bound.lower
            per_margin = s - 1  # the label's own row is zero
            gap_mean = gap.sum(1).mean() / per_margin
            infeasibility_mean = infeasibility.sum(1).mean() / per_margin
            loss = loss + p.gap_weight * gap_mean + p.feasibility_weight * infeasibility_mean
            self._stats.update(gap=gap_mean.detach(), infeasibility=infeasibility_mean.detach())
        return loss

    epoch_metric_names = frozenset(
        f"train/crown_ibp_{k}" for k in ("eps", "beta", "kappa", "robust_ce", "gap", "infeasibility")
    )

    def epoch_metrics(self) -> dict[str, float]:
        p = self.params
        out = {
            "train/crown_ibp_eps": self.eps,
            "train/crown_ibp_beta": self._mix(p.beta_start, p.beta_end),
            "train/crown_ibp_kappa": self._mix(p.kappa_start, p.kappa_end),
        }
        out.update({f"train/crown_ibp_{k}": float(v) for k, v in self._stats.items()})
        return out
