"""Cost of each deterministic certifier per example, relative to a plain forward pass.

    python bench/certify_cost.py                 # CPU (2 threads here), digits-shaped models
    python bench/certify_cost.py --device cuda

For each model and batch: (a) the plain forward pass of the batch; (b) the certifier on the same
batch at one radius, timed as the certifier runs it:
- lipschitz: one forward pass plus the margin ratios, with the margin constants of the (frozen)
  model computed once beforehand; that one-off cost (exact SVDs) is reported in its own column;
- ibp: interval propagation with the last layer folded into the margin specification;
- crown: full CROWN (every pre-activation bound by a backward pass, the certifier's path).
Targets (issue 4): lipschitz <= 1.2x, IBP <= 3x; CROWN is reported. Medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

from certstudy.certify import CERTIFIERS, CertifierContext
from certstudy.certify.bounds import Ball, margin_lower_bounds
from certstudy.certify.network import layers_of
from certstudy.models import MODELS


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
    parser.add_argument("--batch", type=int, default=1024, help="batch of the forward pass, lipschitz and IBP (the certifiers' default)")
    parser.add_argument("--crown-batch", type=int, default=64, help="batch of CROWN and of its own forward reference (the certifier's default)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = (1, 8, 8)
    models = {
        "digits MLP 64-256-256-10": ("mlp", {"width": 256, "depth": 2}),
        "digits CNN (16, 32 ch)": ("cnn", {"channels": [16, 32], "hidden": 100}),
    }
    table = Table(title=f"certifier cost per example vs a forward pass ({device}, {args.threads} threads, batch {args.batch}; CROWN batch {args.crown_batch}; medians of {args.repeats})")
    for col in ["model", "forward µs/ex", "lipschitz µs/ex", "lipschitz / fwd", "lipschitz constants (once) ms", "IBP µs/ex", "IBP / fwd", "forward µs/ex (CROWN batch)", "CROWN µs/ex", "CROWN / fwd"]:
        table.add_column(col, justify="right" if col != "model" else "left")
    for label, (name, params) in models.items():
        torch.manual_seed(0)
        factory = MODELS.get(name)
        model = factory.build(factory.Params(**params), shape, 10).to(device).eval()
        x = torch.rand(args.batch, *shape, device=device)
        context = CertifierContext(10, shape, (0.0, 1.0), device)
        lip = CERTIFIERS.get("lipschitz")
        lipschitz = lip(lip.Params(), context)
        with torch.no_grad():
            t0 = time.perf_counter()
            constants, _ = lipschitz.constants(model)
            constants = constants.to(device)
            once = time.perf_counter() - t0
            top = model(x).argmax(1)
            layers = layers_of(model, shape)
            ball = Ball.of(x, 0.02, "linf", (0.0, 1.0))
            n_small = args.crown_batch
            small = Ball.of(x[:n_small], 0.02, "linf", (0.0, 1.0))
            runs: dict[str, Callable[[], object]] = {
                "forward": lambda: model(x),
                "lipschitz": lambda: lipschitz.radii(model, x, constants),
                "ibp": lambda: margin_lower_bounds("ibp", layers, ball, top, 10),
                "forward_small": lambda: model(x[:n_small]),
                "crown": lambda: margin_lower_bounds("crown", layers, small, top[:n_small], 10),
            }
            sizes = {"forward": args.batch, "lipschitz": args.batch, "ibp": args.batch, "forward_small": n_small, "crown": n_small}
            for fn in runs.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, fn in runs.items():
                    times[k].append(_time(fn, device))
        med = {name: statistics.median(v) / sizes[name] * 1e6 for name, v in times.items()}
        table.add_row(
            label,
            f"{med['forward']:.2f}",
            f"{med['lipschitz']:.2f}",
            f"{med['lipschitz'] / med['forward']:.2f}x",
            f"{once * 1e3:.1f}",
            f"{med['ibp']:.2f}",
            f"{med['ibp'] / med['forward']:.2f}x",
            f"{med['forward_small']:.2f}",
            f"{med['crown']:.1f}",
            f"{med['crown'] / med['forward_small']:.0f}x",
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
