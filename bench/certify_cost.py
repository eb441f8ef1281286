"""Cost of each deterministic certifier per example, relative to a plain forward pass, and the
certification engine before/after tables.

    python bench/certify_cost.py                 # CPU (2 threads here): digits and MNIST-shaped models
    python bench/certify_cost.py --device cuda
    python bench/certify_cost.py --only digits   # the digits rows only (fast)
    python bench/certify_cost.py --engine --mnist-root ../shared/data/MNIST/raw   # before/after tables

``--engine`` prints three before/after tables on one CPU thread (the reference library's setting),
on networks briefly CROWN-IBP-trained on MNIST at eps 0.1 (cached under ``--cache``), because the
cost of full CROWN follows the number of unstable neurons, which random weights inflate:
- full CROWN per example: before = every neuron of every pre-activation layer by a float64 backward
  pass (the previous implementation, timed or, where that takes minutes, estimated from one chunk
  per layer); after = ``certify.bounds.crown`` (unstable inputs only, float32 convolution products
  with a rounding allowance);
- CROWN-IBP training per example (loss, backward, train mode): one backward row per class margin
  vs ``loss_fusion`` (one row per example), with the mean of both robust losses;
- margin Lipschitz constants per model: before = SVD of every layer materialisable up to 16,384
  inputs, else a power iterate x 1.001 (the previous, unsound fallback); after = the certifier's
  guaranteed norms (circulant bound above 4,096 inputs), with the ratio of the constants.

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
import gzip
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from certstudy.certify import CERTIFIERS, CertifierContext
from certstudy.certify.bounds import (
    CROWN_CHUNK_ELEMENTS,
    Ball,
    backward,
    crown,
    crown_bounds,
    crown_ibp,
    ibp,
    margin_lower_bounds,
    margin_spec,
)
from certstudy.certify.network import AffineLayer, Layer, layers_of
from certstudy.methods import METHODS, MethodContext
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
        eye = torch.eye(rows, device=device, dtype=ball.x.dtype)[:take].view(1, take, *layer.out_shape)
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
    parser.add_argument("--engine", action="store_true", help="the before/after tables of the certification engine")
    parser.add_argument("--mnist-root", type=Path, default=Path("../shared/data/MNIST/raw"))
    parser.add_argument("--cache", type=Path, default=Path("certstudy-runs/bench-cache"))
    parser.add_argument("--points", type=int, default=16, help="MNIST test points per full-CROWN row")
    parser.add_argument(
        "--skip-full-crown",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="models whose full-CROWN row is left out (e.g. cnn7: its briefly trained net keeps most of its 50,176 "
        "first-layer neurons unstable, over 10 minutes per point)",
    )
    args = parser.parse_args()
    if args.engine:
        engine_tables(args)
        return
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


ENGINE_MODELS = {
    # label: (model, params, training images, epochs, points for full CROWN)
    "small CNN (c16 s2, c32 s2, FC100)": ("gloro_2c2f", {"activation": "relu"}, 20000, 6, None),
    "dm_small": ("dm_small", {}, 20000, 6, None),
    "dm_medium": ("dm_medium", {}, 10000, 4, None),
    "cnn7 (BatchNorm)": ("cnn7", {}, 2000, 2, 1),
}


def _mnist(root: Path, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(root / f"{kind}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    with gzip.open(root / f"{kind}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return torch.tensor(images.copy()), torch.tensor(labels.astype(np.int64))


def _trained(name: str, params: dict, images: int, epochs: int, args: argparse.Namespace) -> torch.nn.Module:
    """The model briefly CROWN-IBP-trained at eps 0.1 (one clean epoch, then the ramp), cached."""
    factory = MODELS.get(name)
    torch.manual_seed(0)
    model = factory.build(factory.Params(**params), (1, 28, 28), 10)
    path = args.cache / f"{name}-{'-'.join(f'{k}={v}' for k, v in params.items())}-{images}-{epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    x, y = _mnist(args.mnist_root, "train", images)
    method_cls = METHODS.get("crown_ibp")
    context = MethodContext(10, (1, 28, 28), (0.0, 1.0), torch.device("cpu"), epochs)
    method = method_cls(method_cls.Params(eps=0.1, warmup_epochs=1, ramp_fraction=0.6, loss_fusion=True), context)
    opt = torch.optim.Adam(model.parameters(), 5e-4)
    for epoch in range(epochs):
        method.on_epoch_start(model, epoch)
        model.train()
        for i in range(0, images, 128):
            loss = method.loss(model, x[i : i + 128].float() / 255, y[i : i + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise SystemExit(f"{name}: training diverged (non-finite weights); nothing cached")
    args.cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def crown_all_neurons(layers: list[Layer], ball: Ball, spec: torch.Tensor) -> torch.Tensor:
    """The previous full CROWN: an identity-row backward pass for every neuron feeding a non-linearity."""
    ibp_bounds, _ = ibp(layers, ball)
    bounds = []
    n = len(ball.x)
    widest = max(math.prod(layer.in_shape) for layer in layers)
    chunk = max(1, (1 << 24) // max(1, n * widest))
    for i, layer in enumerate(layers[:-1]):
        if isinstance(layers[i + 1], AffineLayer):
            bounds.append(ibp_bounds[i])
            continue
        rows = math.prod(layer.out_shape)
        lows, highs = [], []
        for start in range(0, rows, chunk):
            eye = torch.eye(rows, dtype=ball.x.dtype)[start : start + chunk].view(1, -1, *layer.out_shape)
            b = backward(layers, i, eye, bounds, ball)
            lows.append(b.lower)
            highs.append(b.upper)
        lo, hi = (torch.cat(parts, 1).view(n, *layer.out_shape) for parts in (lows, highs))
        bounds.append((torch.maximum(lo, ibp_bounds[i][0]), torch.minimum(hi, ibp_bounds[i][1])))
    return backward(layers, len(layers) - 1, spec, bounds, ball, upper=False).lower


def _power_norm(layer: AffineLayer, iterations: int = 2000, tol: float = 1e-9) -> float:
    u = torch.randn((1, *layer.in_shape), generator=torch.Generator().manual_seed(0)).to(layer.dtype)
    last = 0.0
    for _ in range(iterations):
        u = layer.adjoint(layer.linear(u))
        u = u / u.flatten().norm().clamp_min(1e-30)
        now = float(layer.linear(u).flatten().norm())
        if abs(now - last) <= tol * max(now, 1e-30):
            return now
        last = now
    return last


def previous_k_sub(layers: list[Layer]) -> float:
    """K_sub as the certifier computed it before: SVD up to 16,384 inputs, else a power iterate x 1.001."""
    k = 1.0
    for layer in layers[:-1]:
        if isinstance(layer, AffineLayer) and layer.conv_form() is not None:
            if math.prod(layer.in_shape) <= 16384:
                k *= layer.spectral_norm(max_exact_dim=16384)[0]
            else:
                k *= _power_norm(layer) * 1.001
        else:
            k *= layer.spectral_norm()[0]
    return k


def _full_crown_row(table: Table, label: str, name: str, params: dict, model: torch.nn.Module, x: torch.Tensor) -> None:
    n = len(x)
    factory = MODELS.get(name)
    wide = factory.build(factory.Params(**params), (1, 28, 28), 10)
    wide.load_state_dict(model.state_dict())  # a copy without the recorded batch statistics
    wide = wide.double().eval()
    layers = layers_of(wide, (1, 28, 28))
    top = wide(x).argmax(1)
    spec = margin_spec(top, 10).double()
    ball = Ball.of(x, 0.1, "linf", (0.0, 1.0))
    t0 = time.perf_counter()
    after = crown(layers, ball, spec)
    after_s = (time.perf_counter() - t0) / n
    _, relax = crown_bounds(layers, ball)
    unstable = sum(int(layers[i].unstable(*r).sum()) for i, r in relax.items()) / n
    if name in ("gloro_2c2f", "dm_small"):
        t0 = time.perf_counter()
        before = crown_all_neurons(layers, ball, spec)
        before_s = (time.perf_counter() - t0) / n
        before_lb, est = f"{float(before[torch.isfinite(before)].mean()):.3f}", ""
    else:
        before_s = estimate_full_crown(layers, Ball.of(x[:1], 0.1, "linf", (0.0, 1.0)), torch.device("cpu"))
        before_lb, est = "-", " est."
    finite = torch.isfinite(after)
    cells = [
        label,
        str(n),
        f"{before_s:.4g}{est}",
        f"{after_s:.4g}",
        f"{before_s / after_s:.1f}x{est}",
        f"{unstable:.0f}",
        before_lb,
        f"{float(after[finite].mean()):.3f}",
    ]
    table.add_row(*cells)
    print("full CROWN:", " | ".join(cells), flush=True)


def _training_row(
    table: Table, label: str, name: str, model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor
) -> None:
    batch = 64 if name != "cnn7" else 16
    xb, yb = x_test[:batch].float(), y_test[:batch]
    method_cls = METHODS.get("crown_ibp")
    context = MethodContext(10, (1, 28, 28), (0.0, 1.0), torch.device("cpu"), 1)
    timings, robust = {}, {}
    for fused in (False, True):
        method = method_cls(method_cls.Params(eps=0.1, beta_start=1.0, beta_end=1.0, loss_fusion=fused), context)
        method.on_epoch_start(model, 0)
        model.train()
        runs = []
        for _ in range(4):
            t0 = time.perf_counter()
            loss = method.loss(model, xb, yb)
            loss.backward()
            runs.append(time.perf_counter() - t0)
            model.zero_grad()
        timings[fused] = statistics.median(runs[1:]) / batch * 1e3
        robust[fused] = float(method.epoch_metrics()["train/crown_ibp_robust_ce"])
    cells = [
        label,
        str(batch),
        f"{timings[False]:.2f}",
        f"{timings[True]:.2f}",
        f"{timings[False] / timings[True]:.2f}x",
        f"{robust[False]:.4f}",
        f"{robust[True]:.4f}",
        str(robust[True] >= robust[False]),
    ]
    table.add_row(*cells)
    print("CROWN-IBP training:", " | ".join(cells), flush=True)


def engine_tables(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    console = Console(width=200)
    crown_table = Table(title="full CROWN per example, l-inf eps 0.1, MNIST test points, 1 CPU thread, float64")
    for col in [
        "model",
        "points",
        "before s/ex",
        "after s/ex",
        "before / after",
        "unstable inputs",
        "mean lb before",
        "mean lb after",
    ]:
        crown_table.add_column(col, justify="left" if col == "model" else "right")
    train_table = Table(
        title="CROWN-IBP training per example (loss + backward, train mode, eps 0.1, beta 1), 1 CPU thread"
    )
    for col in [
        "model",
        "batch",
        "per-margin ms/ex",
        "fused ms/ex",
        "per-margin / fused",
        "robust CE per-margin",
        "robust CE fused",
        "fused >= per-margin",
    ]:
        train_table.add_column(col, justify="left" if col == "model" else "right")
    x_test, y_test = _mnist(args.mnist_root, "t10k", 64)
    x_test = x_test.double() / 255
    for label, (name, params, images, epochs, points) in ENGINE_MODELS.items():
        model = _trained(name, params, images, epochs, args)
        n = points or args.points
        with torch.no_grad():
            if name in args.skip_full_crown:
                crown_table.add_row(label, "-", "skipped", "skipped", "-", "-", "-", "-")
            else:
                _full_crown_row(crown_table, label, name, params, model, x_test[:n])
        _training_row(train_table, label, name, model, x_test, y_test)
    console.print(crown_table)
    console.print(train_table)
    lip_table = Table(title="margin Lipschitz constants per model (1 CPU thread)")
    for col in ["model", "before s", "after s", "before / after", "K_sub after / before", "after exact"]:
        lip_table.add_column(col, justify="left" if col == "model" else "right")
    for label, name in (("GloRo 4C3F (MinMax)", "gloro_4c3f"), ("GloRo 2C2F (MinMax)", "gloro_2c2f"), ("cnn7", "cnn7")):
        factory = MODELS.get(name)
        torch.manual_seed(0)
        model = factory.build(factory.Params(), (1, 28, 28), 10).eval()
        context = CertifierContext(10, (1, 28, 28), (0.0, 1.0), torch.device("cpu"))
        lip = CERTIFIERS.get("lipschitz")
        with torch.no_grad():
            layers = layers_of(model, (1, 28, 28))
            t0 = time.perf_counter()
            old = previous_k_sub(layers)
            before_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            constants = lip(lip.Params(), context).constants(model)
            after_s = time.perf_counter() - t0
        lip_table.add_row(
            label,
            f"{before_s:.1f}",
            f"{after_s:.2f}",
            f"{before_s / after_s:.0f}x",
            f"{constants.prefix[-1] / old:.4f}",
            str(constants.exact),
        )
    console.print(lip_table)


if __name__ == "__main__":
    main()
