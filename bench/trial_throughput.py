"""Training throughput of certstudy's epoch against the plain loop a researcher would write.

    python bench/trial_throughput.py                  # CPU, 2 threads
    python bench/trial_throughput.py --device cuda    # on a GPU
    python bench/trial_throughput.py --quick          # fewer images and repeats

Each row trains the same model with the same method, batch size, optimizer (SGD, momentum 0.9),
precision and device two ways, on random data of the dataset's shape stored as uint8 like the real
splits: (a) a minimal hand-written PyTorch loop (per batch: index, to float / 255, PGD if any, forward,
backward, step; no host sync), and (b) certstudy's ``train_epoch`` with the registered method. The
two run interleaved, ``--repeats`` times each, and the table shows training images per second
(medians), the ratio (b)/(a) (target >= 0.95), the host RSS of this process, and how long the
per-epoch evaluation (val + train subsets of 5,000 each, PGD at the training attack) takes as a
share of a full CIFAR-10 epoch (45,000 training images). Then, in a fresh process, the host memory
of a CIFAR-10 trial's data (a full-size CIFAR-format file set written to a temporary folder) above
an idle torch process, against the uint8 dataset's size (target <= 1.3x). The last line is
``min ratio <x>`` over the rows.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from certstudy.data.base import Splits
from certstudy.methods import METHODS, MethodContext
from certstudy.models import MODELS
from certstudy.trial.build import TrialParts
from certstudy.trial.config import AttackConfig, TrialConfig
from certstudy.trial.evaluation import evaluate
from certstudy.trial.loop import train_epoch
from certstudy.trial.precision import DTYPES, Precision

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
PGD = {"eps": 8 / 255, "norm": "linf", "steps": 10, "step_size": 2 / 255}
ROWS = [
    # label, model, params, shape, method, method params, images on CPU, batch
    ("ERM, cnn, MNIST shape", "cnn", {}, MNIST, "erm", {}, 4096, 128),
    ("PGD-AT linf 10 steps, cnn, MNIST shape", "cnn", {}, MNIST, "adversarial", PGD, 512, 128),
    ("ERM, cnn7, CIFAR shape", "cnn7", {}, CIFAR, "erm", {}, 256, 128),
    ("PGD-AT linf 10 steps, cnn7, CIFAR shape", "cnn7", {}, CIFAR, "adversarial", PGD, 128, 64),
    ("ERM, preact_resnet18, CIFAR shape", "preact_resnet18", {}, CIFAR, "erm", {}, 256, 128),
    ("PGD-AT linf 10 steps, preact_resnet18, CIFAR shape", "preact_resnet18", {}, CIFAR, "adversarial", PGD, 64, 32),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_pgd(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int
) -> torch.Tensor:
    """l-inf PGD written out by hand, the same algorithm as certstudy's: random start, sign steps, and
    the highest-loss point per example over the clean input and every iterate (so 12 forward and 10
    backward passes for 10 steps, where Madry et al.'s last-iterate PGD makes 10 and 10)."""
    model.eval()
    with torch.no_grad():
        best_loss = F.cross_entropy(model(x), y, reduction="none")
    best = x.clone()
    delta = (torch.rand_like(x) * 2 - 1) * eps
    delta = (x + delta).clamp(0, 1) - x
    for step in range(steps + 1):
        delta.requires_grad_(True)
        losses = F.cross_entropy(model(x + delta), y, reduction="none")
        improved = losses.detach() > best_loss
        best_loss = torch.where(improved, losses.detach(), best_loss)
        best = torch.where(improved.view(-1, 1, 1, 1), (x + delta).detach(), best)
        if step == steps:
            break
        (grad,) = torch.autograd.grad(losses.sum(), delta)
        with torch.no_grad():
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    model.train()
    return best


def plain_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    pgd: dict | None,
    dtype: torch.dtype,
    scaler: torch.amp.GradScaler | None,
) -> None:
    model.train()
    perm = torch.randperm(len(y), device=x.device)
    for i in range(0, len(y), batch):
        idx = perm[i : i + batch]
        xb, yb = x[idx].float() / 255, y[idx]
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
            if pgd:
                xb = plain_pgd(model, xb, yb, pgd["eps"], pgd["step_size"], pgd["steps"])
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; psutil is not a dependency)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    return rss_bytes() / 2**20


def run_row(row: tuple, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    label, name, params, shape, method_name, method_params, cpu_images, batch = row
    n = cpu_images if device.type == "cpu" else args.gpu_images
    n = max(batch, n // (4 if args.quick else 1))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen).to(device)
    y = torch.randint(0, 10, (n,), generator=gen).to(device)
    splits = Splits(x, y, x[:batch], y[:batch], x[:batch], y[:batch], num_classes=10, divisor=255.0)
    cfg = TrialConfig.model_validate({
        "model": {"name": name, "params": params},
        "method": {"name": method_name, "params": method_params},
        "training": {"batch_size": batch, "optimizer": "sgd", "lr": 0.01, "precision": args.precision,
                     "channels_last": args.channels_last},
    })  # fmt: skip
    factory = MODELS.get(name)
    torch.manual_seed(0)
    models = [factory.build(factory.Params(**params), shape, 10).to(device) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    precision = Precision.of(cfg.training, device)
    models = [precision.prepare(m) for m in models]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models]
    method_cls = METHODS.get(method_name)
    method = method_cls(method_cls.Params(**method_params), MethodContext(10, shape, (0.0, 1.0), device, 1))
    parts = TrialParts(splits, models[1], method)
    dtype = DTYPES[args.precision]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    runs: dict[str, Callable[[], object]] = {
        "plain": lambda: plain_epoch(models[0], opts[0], x, y, batch, method_params or None, dtype, scaler),
        "certstudy": lambda: train_epoch(parts, cfg, opts[1], 0, precision),
    }
    for fn in runs.values():
        fn()  # warm-up (cuDNN autotuning, allocator)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - t)
    plain, ours = (n / statistics.median(times[k]) for k in ("plain", "certstudy"))
    attack = (
        AttackConfig(**{k: v for k, v in method_params.items() if k in ("eps", "norm", "steps", "step_size")})
        if method_params
        else AttackConfig(eps=0.0, steps=0)
    )
    eval_n = min(n, 256)
    _sync(device)
    t = time.perf_counter()
    evaluate(models[1], x[:eval_n], y[:eval_n], attack, (0.0, 1.0), batch_size=512, seed=0, to_float=splits.floats)
    _sync(device)
    eval_per_image = (time.perf_counter() - t) / eval_n
    epoch_share = (10_000 * eval_per_image) / (
        10_000 * eval_per_image + 45_000 / ours
    )  # CIFAR-10: 5,000 val + 5,000 train points
    return {
        "plain": plain,
        "certstudy": ours,
        "ratio": ours / plain,
        "rss": rss_mb(),
        "eval_share": epoch_share,
        "images": n,
    }


CIFAR_MEMORY = textwrap.dedent(
    """
    import gc, os, torch
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import certstudy.data, certstudy.models, certstudy.methods  # the trial's imports, before measuring
    idle = rss()
    from certstudy.data import DATASETS
    ds = DATASETS.get("cifar10")
    splits = ds.load(ds.Params(root={root!r}, download=False), 0, {root!r})
    gc.collect()
    used = rss() - idle
    stored = sum(t.numel() * t.element_size() for t in (splits.x_train, splits.x_val, splits.x_test))
    print(used, stored, splits.x_train.dtype)
    """
)


def cifar_memory() -> tuple[float, float, str]:
    """(MiB of RSS a CIFAR-10 trial's splits add to an idle torch process, MiB of the uint8 dataset, dtype)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cifar-10-batches-py"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for name, count in [(f"data_batch_{i}", 10_000) for i in range(1, 6)] + [("test_batch", 10_000)]:
            with open(folder / name, "wb") as fh:
                pickle.dump(
                    {
                        "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                        "labels": rng.integers(0, 10, count).tolist(),
                    },
                    fh,
                    protocol=2,
                )
        out = subprocess.run(
            [sys.executable, "-c", CIFAR_MEMORY.format(root=tmp)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    used, stored, dtype = out.stdout.split()
    return int(used) / 2**20, int(stored) / 2**20, dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=list(DTYPES), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-images", type=int, default=8192, help="training images per timed epoch on a GPU")
    parser.add_argument("--quick", action="store_true", help="a quarter of the images, 3 repeats")
    parser.add_argument("--rows", default="", help="comma-separated row numbers (1-based) to run; default all")
    args = parser.parse_args()
    if args.quick:
        args.repeats = min(args.repeats, 3)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chosen = [ROWS[int(i) - 1] for i in args.rows.split(",") if i] or ROWS
    table = Table(
        title=f"training images/s: certstudy's train_epoch vs a plain loop ({device}, {args.threads} threads, "
        f"{args.precision}{', channels_last' if args.channels_last else ''}; medians of {args.repeats} "
        f"interleaved repeats)"
    )
    for col in [
        "row",
        "images",
        "plain img/s",
        "certstudy img/s",
        "ratio",
        "host RSS MiB",
        "eval share of a CIFAR epoch",
    ]:
        table.add_column(col, justify="left" if col == "row" else "right")
    ratios = []
    for row in chosen:
        r = run_row(row, args, device)
        ratios.append(r["ratio"])
        table.add_row(
            row[0],
            str(r["images"]),
            f"{r['plain']:.1f}",
            f"{r['certstudy']:.1f}",
            f"{r['ratio']:.3f}",
            f"{r['rss']:.0f}",
            f"{100 * r['eval_share']:.0f} %",
        )
    console = Console(width=200)
    console.print(table)
    used, stored, dtype = cifar_memory()
    console.print(
        f"CIFAR-10 trial data in host memory: {used:.0f} MiB above an idle torch process for {stored:.0f} MiB of "
        f"{dtype} splits: {used / stored:.2f}x (target <= 1.3x)"
    )
    print(f"min ratio {min(ratios):.3f}")


if __name__ == "__main__":
    main()
