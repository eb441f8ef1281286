"""Cost of each deterministic certifier per example, relative to a plain forward pass.

    python bench/certify_cost.py                 # CPU (2 threads here): digits and MNIST-shaped models
    python bench/certify_cost.py --device cuda
    python bench/certify_cost.py --only digits   # the digits rows only (fast)

For each model and batch: (a) the plain forward pass of the batch; (b) the certifier on the same
batch at one radius, timed as the certifier runs it:
- lipschitz: one forward pass plus the margin ratios, with the margin constants of the (frozen)
  model computed once beforehand; that one-off cost (exact SVDs) is reported in its own column;
- ibp: interval propagation with the last layer folded into the margin specification;
- crown: full CROWN (every pre-activation bound by a backward pass, the certifier's path);
- CROWN-IBP: the final backward pass over IBP's intermediate bounds (the training bound).
On the MNIST-shaped CNN7 and GloRo 4C3F, full CROWN needs one backward pass per intermediate
neuron (50,176 and 25,088 in the first layer alone) and cannot be timed in full here: its column
is an estimate, the time of one chunk of rows per intermediate layer scaled by that layer's row
count (marked "est."). Targets (issue 4): lipschitz <= 1.2x, IBP <= 3x; CROWN is reported.
Medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from certstudy.certify import CERTIFIERS, CertifierContext
from certstudy.certify.bounds import (
    CROWN_CHUNK_ELEMENTS,
    Ball,
    backward,
    crown_ibp,
    ibp,
    margin_lower_bounds,
    margin_spec,
)
from certstudy.certify.network import AffineLayer, Layer, layers_of
from certstudy.models import MODELS

MODEL_ROWS = {
    # label: (model, params, input shape, batch, time full CROWN (else estimate it))
    "digits MLP 64-256-256-10": ("mlp", {"width": 256, "depth": 2}, (1, 8, 8), None, True),
    "digits CNN (16, 32 ch)": ("cnn", {"channels": [16, 32], "hidden": 100}, (1, 8, 8), None, True),
    "MNIST CNN7 (BatchNorm)": ("cnn7", {}, (1, 28, 28), 128, False),
    "MNIST GloRo 4C3F (MinMax)": ("gloro_4c3f", {}, (1, 28, 28), 128, False),
}


def estimate_full_crown(layers: list[Layer], ball: Ball, device: torch.device) -> float:
    """Seconds per example of full CROWN, from one timed chunk of identity rows per intermediate layer
    scaled by the layer's row count (the rows of a layer cost alike: the same backward pass)."""
    bounds = ibp(layers, ball)[0]
    total = 0.0
    widest = max(math.prod(layer.in_shape) for layer in layers)
    chunk = max(1, CROWN_CHUNK_ELEMENTS // widest)
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layers[i + 1], AffineLayer):
            continue
        rows = math.prod(layer.out_shape)
        take = min(rows, chunk)
        eye = torch.eye(rows, device=device)[:take].view(1, take, *layer.out_shape)
        backward(layers, i, eye, bounds, ball)  # warm-up
        seconds = _time(lambda: backward(layers, i, eye, bounds, ball), device)
        total += seconds * rows / take
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch", type=int, default=1024, help="batch of the forward pass, lipschitz and IBP (the certifiers' default)"
    )
    parser.add_argument(
        "--crown-batch",
        type=int,
        default=64,
        help="batch of CROWN and of its own forward reference (the certifier's default)",
    )
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["digits", "mnist"], default=None, help="only the rows of one dataset")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = {k: v for k, v in MODEL_ROWS.items() if args.only is None or k.lower().startswith(args.only)}
    table = Table(
        title=f"certifier cost per example vs a forward pass ({device}, {args.threads} threads, batch {args.batch} "
        f"(MNIST rows: their own); CROWN batch {args.crown_batch}; medians of {args.repeats})"
    )
    for col in [
        "model",
        "batch",
        "forward µs/ex",
        "lipschitz / fwd",
        "lipschitz constants (once) s",
        "IBP / fwd",
        "CROWN-IBP / fwd",
        "forward µs/ex (CROWN batch)",
        "CROWN µs/ex",
        "CROWN / fwd",
    ]:
        table.add_column(col, justify="right" if col != "model" else "left")
    for label, (name, params, shape, batch, time_crown) in rows.items():
        torch.manual_seed(0)
        factory = MODELS.get(name)
        model = factory.build(factory.Params(**params), shape, 10).to(device).eval()
        n_big = batch or args.batch
        x = torch.rand(n_big, *shape, device=device)
        context = CertifierContext(10, shape, (0.0, 1.0), device)
        lip = CERTIFIERS.get("lipschitz")
        lipschitz = lip(lip.Params(), context)
        with torch.no_grad():
            t0 = time.perf_counter()
            constants = lipschitz.constants(model)
            once = time.perf_counter() - t0
            top = model(x).argmax(1)
            layers = layers_of(model, shape)
            ball = Ball.of(x, 0.02, "linf", (0.0, 1.0))
            n_small = args.crown_batch
            small = Ball.of(x[:n_small], 0.02, "linf", (0.0, 1.0))
            spec_small = margin_spec(top[:n_small], 10)
            runs: dict[str, Callable[[], object]] = {
                "forward": lambda: model(x),
                "lipschitz": lambda: lipschitz.radii(model, x, constants),
                "ibp": lambda: margin_lower_bounds("ibp", layers, ball, top, 10),
                "forward_small": lambda: model(x[:n_small]),
                "crown_ibp": lambda: crown_ibp(layers, small, spec_small),
            }
            if time_crown:
                runs["crown"] = lambda: margin_lower_bounds("crown", layers, small, top[:n_small], 10)
            sizes = {
                "forward": n_big,
                "lipschitz": n_big,
                "ibp": n_big,
                "forward_small": n_small,
                "crown": n_small,
                "crown_ibp": n_small,
            }
            for fn in runs.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, fn in runs.items():
                    times[k].append(_time(fn, device))
            med = {k: statistics.median(v) / sizes[k] * 1e6 for k, v in times.items()}
            if not time_crown:
                med["crown"] = estimate_full_crown(layers, Ball.of(x[:1], 0.02, "linf", (0.0, 1.0)), device) * 1e6
        est = "" if time_crown else " est."
        table.add_row(
            label,
            str(n_big),
            f"{med['forward']:.2f}",
            f"{med['lipschitz'] / med['forward']:.2f}x",
            f"{once:.2f}",
            f"{med['ibp'] / med['forward']:.2f}x",
            f"{med['crown_ibp'] / med['forward_small']:.1f}x",
            f"{med['forward_small']:.2f}",
            f"{med['crown']:.4g}{est}",
            f"{med['crown'] / med['forward_small']:.3g}x{est}",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
