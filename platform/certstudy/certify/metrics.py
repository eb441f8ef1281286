"""Certified accuracy, average certified radius and the certification curve of a certificate.

Conventions (Cohen et al.'s ``analyze.py``): a point is certified at radius r when it is
predicted correctly and its radius is >= r (inclusive); abstentions and uncertified points stay
in the denominator. The average certified radius (ACR, Zhai et al. 2020) averages the radius of
correctly certified points with 0 for every other point.
"""

from __future__ import annotations

import io

import torch
from torch import Tensor

from certstudy.certify.base import ABSTAIN, Certificate, CertifyResult
from certstudy.metric_names import certified_acc_name


def certified_radii(cert: Certificate, y: Tensor) -> Tensor:
    """Radius of each correctly certified point; -inf elsewhere (never >= any r >= 0)."""
    r = cert.radii.detach().to("cpu", torch.float64)
    ok = (cert.predictions.detach().cpu() == y.detach().cpu()) & ~torch.isnan(r)
    return torch.where(ok, r, torch.full_like(r, -torch.inf))


def _mean(values: Tensor) -> float:
    return float(values.double().mean()) if len(values) else 0.0


def certification_metrics(
    prefix: str, result: CertifyResult, y: Tensor, grid: dict[str, list[float]]
) -> dict[str, float]:
    """``<prefix>/certified_acc_<cert>_<norm>_r<r>`` on the grid of the certificate's norm,
    ``<prefix>/acr_<cert>``, ``<prefix>/abstain_rate_<cert>`` and the certifier's extras."""
    out: dict[str, float] = {}
    for cert in result.certificates:
        radii = certified_radii(cert, y)
        for r in grid.get(cert.norm, []):
            out[certified_acc_name(prefix, cert.name, cert.norm, r)] = _mean(radii >= r)
        out[f"{prefix}/acr_{cert.name}"] = _mean(torch.where(torch.isfinite(radii), radii, torch.zeros_like(radii)))
        out[f"{prefix}/abstain_rate_{cert.name}"] = _mean(cert.predictions.cpu() == ABSTAIN)
    out.update({f"{prefix}/{k}": v for k, v in result.extras.items()})
    return out


def curve(cert: Certificate, y: Tensor) -> tuple[list[float], list[float]]:
    """The exact step curve: certified accuracy at 0 and at every distinct certified radius."""
    r = certified_radii(cert, y)
    steps = sorted({0.0, *r[torch.isfinite(r) & (r > 0)].tolist()})
    return steps, [_mean(r >= s) for s in steps]


def curve_csv(result: CertifyResult, y: Tensor) -> str:
    lines = ["certificate,norm,radius,certified_acc"]
    for cert in result.certificates:
        for s, acc in zip(*curve(cert, y)):
            lines.append(f"{cert.name},{cert.norm},{s!r},{acc!r}")
    return "\n".join(lines) + "\n"


def radii_csv(result: CertifyResult, y: Tensor) -> str:
    """Per-example outcomes at full precision (radii rounded to a few digits can land on a grid value)."""
    lines = ["index,label,certificate,prediction,radius"]
    labels = y.cpu().tolist()
    for cert in result.certificates:
        for i, (p, r) in enumerate(zip(cert.predictions.cpu().tolist(), cert.radii.cpu().tolist())):
            lines.append(f"{i},{labels[i]},{cert.name},{p},{r!r}")
    return "\n".join(lines) + "\n"


def curve_png(result: CertifyResult, y: Tensor, title: str) -> bytes:
    """Certified accuracy vs radius, one step line per certificate (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), dpi=110)
    ax = fig.subplots()
    for cert in result.certificates:
        xs, ys = curve(cert, y)
        xs, ys = xs + [xs[-1] * 1.02 + 1e-3], ys + [0.0]  # nothing is certified beyond the largest radius
        ax.step(
            xs, ys, where="pre", label=f"{cert.name} ({cert.norm})"
        )  # acc(r) = acc at the next step for r in (s_i, s_i+1]
    ax.set_xlabel("radius")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
