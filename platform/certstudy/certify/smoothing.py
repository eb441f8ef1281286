"""Randomized smoothing certification: Cohen et al. (ICML 2019) and a two-sided radius (Feng et al., AAAI 2020).

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), noise added in the
[0, 1] input space the model reads. CERTIFY picks the class from a selection sample of ``n0``
draws and bounds its probability from an independent estimation sample of ``n`` draws with a
one-sided Clopper-Pearson bound at level alpha (``scipy.stats.beta``); Cohen's radius is
sigma * Phi^-1(pA_lower), abstaining when pA_lower < 1/2. PREDICT returns the top class when
``scipy.stats.binomtest`` rejects a tie with the runner-up at level alpha.

The two-sided radius R = sigma/2 (Phi^-1(pA_lower) - Phi^-1(pB_upper)) uses the same estimation
counts with the error budget split: pA_lower at level ``split * alpha`` and pB_upper, an upper bound
on *every* other class (Bonferroni: each of the K-1 classes at level (1 - split) alpha / (K-1)),
capped at 1 - pA_lower. The two levels sum to alpha, so it is sound at level alpha; with the cap it
is never below Cohen's radius computed at pA_lower's level, and it beats Cohen's radius at the full
alpha when the non-top mass is spread over several classes. (Only the abstract of Feng et al. is
verified; this is a sound reading of its two-sided bound, Feng et al. 2020, "Regularized Training and
Tight Certification for Randomized Smoothed Classifier with Provable Robustness", not their T-CERTIFY.)

Sampling is batched on the model's device: several test points share a forward pass when ``n``
is small next to the batch, noise comes from a seeded device generator, classes are counted with
one ``bincount`` per batch and counts reach the host once per group of points. No library does
this for PyTorch models with these statistics (the reference code is a per-point research script),
so it lives here. A certificate covers exactly the model that ran, dtype included.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from certstudy import phases
from certstudy.certify.base import ABSTAIN, Certificate, Certifier, CertifierParams, CertifyResult
from certstudy.certify.registry import CERTIFIERS
from certstudy.models.base import eval_mode

# --- statistics on counts --------------------------------------------------------------------


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n: Beta.ppf(alpha, k, n-k+1)."""
    return float(_lower(np.asarray([k]), n, alpha)[0])


def upper_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: Beta.ppf(1-alpha, k+1, n-k); 1 at k = n."""
    return float(_upper(np.asarray([k]), n, alpha)[0])


def cohen_radius(k: int, n: int, alpha: float, sigma: float) -> float:
    """Cohen et al.'s certified l2 radius from k of n estimation draws on the selected class; 0.0 means abstain."""
    from scipy.stats import norm  # scipy.stats takes a second to import: only where a radius is computed

    p = lower_confidence_bound(k, n, alpha)
    return float(sigma * norm.ppf(p)) if p >= 0.5 else 0.0


def two_sided_radius(counts: np.ndarray | list[int], top: int, alpha: float, sigma: float, split: float = 0.5) -> float:
    """The two-sided radius from estimation counts over all classes (``top`` chosen beforehand); 0.0 means abstain."""
    counts = np.asarray(counts, dtype=np.int64)[None, :]
    radius, ok = _two_sided(counts, np.asarray([top]), int(counts.sum()), alpha, sigma, split)
    return float(radius[0]) if ok[0] else 0.0


def _lower(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = beta.ppf(alpha, np.maximum(k, 1), n - k + 1)
    return np.where(k <= 0, 0.0, out)


def _upper(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    from scipy.stats import beta

    k = np.asarray(k, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        out = beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1))
    return np.where(k >= n, 1.0, out)


def _cohen(k: np.ndarray, n: int, alpha: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import norm

    p = _lower(k, n, alpha)
    ok = p >= 0.5
    return np.where(ok, sigma * norm.ppf(np.clip(p, 0.5, 1.0)), 0.0), ok


def _two_sided(
    counts: np.ndarray, top: np.ndarray, n: int, alpha: float, sigma: float, split: float
) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import norm

    m, k_classes = counts.shape
    rows = np.arange(m)
    p_a = _lower(counts[rows, top], n, alpha * split)
    upper = _upper(counts, n, alpha * (1 - split) / max(k_classes - 1, 1))
    upper[rows, top] = 0.0  # the max below runs over the other classes only
    p_b = np.minimum(upper.max(axis=1), 1.0 - p_a)
    ok = (p_a >= p_b) & (p_a > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b))
    return np.where(ok, np.maximum(radius, 0.0), 0.0), ok


# --- sampling ---------------------------------------------------------------------------------


@torch.inference_mode()
def sample_counts(
    model: nn.Module,
    x: Tensor,
    num: int,
    sigma: float,
    *,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
) -> Tensor:
    """Class counts of f(x_i + e) over ``num`` Gaussian draws for every row x_i: a (len(x), K) int64 CPU tensor."""
    m = len(x)
    counts = torch.zeros(m, num_classes, dtype=torch.int64, device=x.device)
    if num <= 0 or m == 0:
        return counts.cpu()
    group = max(1, min(m, batch_size // num))  # whole points per forward pass when n is small
    for i in range(0, m, group):
        xb = x[i : i + group]
        g = len(xb)
        remaining = num
        while remaining > 0:
            c = min(remaining, max(1, batch_size // g))
            noisy = torch.randn((g, c, *xb.shape[1:]), generator=generator, device=xb.device, dtype=xb.dtype)
            noisy.mul_(sigma).add_(xb.unsqueeze(1))  # in place: x_i + e broadcast over the c draws, no copies of x
            preds = model(noisy.view(g * c, *xb.shape[1:])).argmax(dim=1)
            slot = torch.arange(g, device=x.device).repeat_interleave(c) * num_classes + preds
            counts[i : i + g] += torch.bincount(slot, minlength=g * num_classes).view(g, num_classes)
            remaining -= c
        phases.advance(min(i + g, m), m)
    return counts.cpu()


@dataclass
class SmoothingOutcome:
    """Per-point CERTIFY outcomes: selected class, estimation counts, and both certificates."""

    selected: Tensor  # (m,) class chosen from the selection sample
    counts: Tensor  # (m, K) estimation counts
    cohen_prediction: Tensor
    cohen_radius: Tensor
    two_sided_prediction: Tensor
    two_sided_radius: Tensor


def certify(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    batch_size: int,
    seed: int,
    split: float = 0.5,
) -> SmoothingOutcome:
    """CERTIFY for every row of x: independent selection (n0) and estimation (n) samples."""
    with eval_mode(model):
        selection = sample_counts(
            model,
            x,
            n0,
            sigma,
            num_classes=num_classes,
            batch_size=batch_size,
            generator=torch.Generator(device=x.device).manual_seed(seed),
        )
        estimation = sample_counts(
            model,
            x,
            n,
            sigma,
            num_classes=num_classes,
            batch_size=batch_size,
            generator=torch.Generator(device=x.device).manual_seed(seed + 1),
        )
    top = selection.argmax(dim=1).numpy()
    counts = estimation.numpy()
    k_top = counts[np.arange(len(top)), top]
    r_cohen, ok_cohen = _cohen(k_top, n, alpha, sigma)
    r_two, ok_two = _two_sided(counts, top, n, alpha, sigma, split)
    top_t = torch.from_numpy(top).long()

    def pred(ok: np.ndarray) -> Tensor:
        return torch.where(torch.from_numpy(ok), top_t, torch.full_like(top_t, ABSTAIN))

    def rad(r: np.ndarray, ok: np.ndarray) -> Tensor:
        return torch.from_numpy(np.where(ok, r, np.nan)).double()

    return SmoothingOutcome(top_t, estimation, pred(ok_cohen), rad(r_cohen, ok_cohen), pred(ok_two), rad(r_two, ok_two))


def predict(
    model: nn.Module, x: Tensor, *, sigma: float, n: int, alpha: float, num_classes: int, batch_size: int, seed: int
) -> Tensor:
    """PREDICT for every row: the top class when a binomial test rejects a tie with the runner-up at alpha, else "
    "ABSTAIN."""
    with eval_mode(model):
        counts = sample_counts(
            model,
            x,
            n,
            sigma,
            num_classes=num_classes,
            batch_size=batch_size,
            generator=torch.Generator(device=x.device).manual_seed(seed),
        )
    return predict_from_counts(counts, alpha)


def predict_from_counts(counts: Tensor, alpha: float) -> Tensor:
    """PREDICT's decision per row of class counts: the top class if ``binomtest(nA, nA + nB, 1/2)`` has p <= alpha."""
    from scipy.stats import binomtest

    values, classes = counts.topk(min(2, counts.shape[1]), dim=1)
    out = torch.full((len(counts),), ABSTAIN, dtype=torch.int64)
    for i, (v, c) in enumerate(zip(values.tolist(), classes.tolist())):
        n_a, n_b = v[0], (v[1] if len(v) > 1 else 0)
        if n_a + n_b > 0 and binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
            out[i] = c[0]
    return out


# --- the registered certifier -----------------------------------------------------------------


def auto_batch_size(device: torch.device) -> int:
    """Noisy inputs per forward pass when the study sets none. On a GPU large batches amortise
    kernel launches and host syncs; on a CPU the forward pass dominates and its per-sample speed
    is flat from ~256 to ~1k samples of the shipped models, then drops by up to half once the
    activations leave the cache (measured on the 2-core CI machine)."""
    return 16384 if device.type == "cuda" else 1024


class SmoothingCertifierParams(CertifierParams):
    sigma: float | None = Field(None, gt=0, le=10, description="noise level; None: the training method's sigma")
    n0: int = Field(100, ge=1, description="selection sample per point")
    n: int = Field(10000, ge=1, description="estimation sample per point")
    alpha: float = Field(0.001, gt=0, lt=1, description="failure probability of each certificate")
    batch_size: int | None = Field(
        None, ge=1, description="noisy inputs per forward pass; None: auto_batch_size(device)"
    )
    two_sided: bool = Field(True, description="also issue the two-sided certificate (smoothing_two_sided)")
    split: float = Field(0.5, gt=0, lt=1, description="share of alpha spent on pA_lower by the two-sided certificate")
    predict_n: int = Field(1000, ge=0, description="draws for PREDICT (smoothed accuracy, abstain rate); 0: skip")


@CERTIFIERS.register("smoothing")
class SmoothingCertifier(Certifier):
    Params = SmoothingCertifierParams
    params: SmoothingCertifierParams

    @classmethod
    def certificates(cls, params: SmoothingCertifierParams) -> list[tuple[str, str]]:  # type: ignore[override]
        return [("smoothing", "l2")] + ([("smoothing_two_sided", "l2")] if params.two_sided else [])

    @classmethod
    def check(cls, params: CertifierParams) -> None:
        assert isinstance(params, SmoothingCertifierParams)
        if params.sigma is None:
            raise ValueError("params.sigma is required: the training method sets no noise level")

    def certify(self, model: nn.Module, x: Tensor, y: Tensor, *, seed: int) -> CertifyResult:
        p = self.params
        self.check(p)
        assert p.sigma is not None
        k = self.context.num_classes
        batch = p.batch_size or auto_batch_size(x.device)
        out = certify(
            model,
            x,
            sigma=p.sigma,
            n0=p.n0,
            n=p.n,
            alpha=p.alpha,
            num_classes=k,
            batch_size=batch,
            seed=seed,
            split=p.split,
        )
        certs = [Certificate("smoothing", "l2", out.cohen_prediction, out.cohen_radius)]
        if p.two_sided:
            certs.append(Certificate("smoothing_two_sided", "l2", out.two_sided_prediction, out.two_sided_radius))
        extras: dict[str, float] = {}
        if p.predict_n > 0 and len(y):
            pred = predict(
                model, x, sigma=p.sigma, n=p.predict_n, alpha=p.alpha, num_classes=k, batch_size=batch, seed=seed + 2
            )
            extras["smoothed_clean_acc"] = float((pred == y.cpu()).double().mean())
            extras["abstain_rate"] = float((pred == ABSTAIN).double().mean())
        return CertifyResult(certs, extras)
