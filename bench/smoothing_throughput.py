"""Randomized-smoothing certification throughput: Cohen et al.'s published loop vs certstudy's certifier.

(a) ``cohen_loop``: the structure of ``locuslab/smoothing`` ``core.py``: per test point, rounds of
    ``batch`` copies of that one input (``x.repeat``), noise, forward, ``argmax``, a host copy and a
    Python loop that counts the labels (``_count_arr``); first the n0 selection sample, then n.
(b) ``certstudy.certify.smoothing.certify``: points packed into large batches, noise from a device
    generator, counts by ``bincount`` on the device, one host copy per group of points.

Both certify the same points with the same model at n0 = 100, n = 10,000. Also printed: the time
of the forward passes alone for the same number of samples in (b)'s batches ("forward floor"),
which bounds any implementation on this device, and (b)'s share of it.

Run: ``python bench/smoothing_throughput.py [--device cuda] [--points 20]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from certstudy.certify.smoothing import auto_batch_size, certify
from certstudy.models import MODELS

N0, N, ALPHA, SIGMA = 100, 10_000, 0.001, 0.25


def cohen_loop(model: nn.Module, x: torch.Tensor, batch: int) -> list[tuple[int, int]]:
    """Per point: (selected class, its estimation count), counted as the reference code does."""

    def sample_noise(xi: torch.Tensor, num: int) -> np.ndarray:
        counts = np.zeros(10, dtype=int)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                this_batch = min(batch, remaining)
                remaining -= this_batch
                inputs = xi.repeat((this_batch, 1, 1, 1))
                noise = torch.randn_like(inputs) * SIGMA
                predictions = model(inputs + noise).argmax(1)
                for idx in predictions.cpu().numpy():
                    counts[idx] += 1
        return counts

    out = []
    for xi in x:
        c_a = int(sample_noise(xi, N0).argmax())
        out.append((c_a, int(sample_noise(xi, N)[c_a])))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_floor(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> float:
    """Seconds for the forward passes alone: every sample of (b), in (b)'s batch size, noise pre-made."""
    total = len(x) * (N0 + N)
    inputs = (
        x[:1].repeat((min(batch, total), 1, 1, 1))
        + torch.randn((min(batch, total), *x.shape[1:]), device=device) * SIGMA
    )
    with torch.inference_mode():
        model(inputs)
        sync(device)
        start = time.perf_counter()
        done = 0
        while done < total:
            take = min(batch, total - done)
            model(inputs[:take]).argmax(1)
            done += take
        sync(device)
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median seconds of each fn, run in turns so that drifts in machine speed hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(fn())
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--cohen-batch", type=int, default=1000, help="(a)'s batch, as in certify.py")
    parser.add_argument(
        "--batch", type=int, help="(b)'s noisy inputs per forward pass (default: the certifier's auto_batch_size)"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or auto_batch_size(device)
    torch.manual_seed(0)
    x = torch.rand(args.points, 1, 8, 8, device=device)
    models = {
        "digits MLP 64-256-256-10": MODELS.get("mlp").build(
            MODELS.get("mlp").Params(width=256, depth=2), (1, 8, 8), 10
        ),
        "digits CNN (16, 32 ch)": MODELS.get("cnn").build(MODELS.get("cnn").Params(), (1, 8, 8), 10),
    }
    table = Table(
        title=f"smoothing certification, n0={N0}, n={N}, {args.points} points, {device.type}, "
        f"{torch.get_num_threads()} threads, batch (a) {args.cohen_batch} (b) {args.batch}, median of "
        f"{args.repeats}"
    )
    for col in (
        "model",
        "(a) Cohen loop samples/s",
        "(b) certstudy samples/s",
        "(b)/(a)",
        "forward floor samples/s",
        "forward share of (b)",
    ):
        table.add_column(col, justify="right")
    samples = args.points * (N0 + N)
    for name, model in models.items():
        model = model.to(device).eval()
        cohen_loop(model, x[:1], args.cohen_batch)  # warm-up
        certify(model, x[:1], sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, num_classes=10, batch_size=args.batch, seed=0)
        t_a, t_b, t_f = interleaved_medians(
            [
                lambda: timed(lambda: (cohen_loop(model, x, args.cohen_batch), sync(device))),
                lambda: timed(
                    lambda: (
                        certify(
                            model,
                            x,
                            sigma=SIGMA,
                            n0=N0,
                            n=N,
                            alpha=ALPHA,
                            num_classes=10,
                            batch_size=args.batch,
                            seed=0,
                        ),
                        sync(device),
                    )
                ),
                lambda: forward_floor(model, x, args.batch, device),
            ],
            args.repeats,
        )
        table.add_row(
            name,
            f"{samples / t_a:,.0f}",
            f"{samples / t_b:,.0f}",
            f"{t_a / t_b:.2f}x",
            f"{samples / t_f:,.0f}",
            f"{t_f / t_b:.0%}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
