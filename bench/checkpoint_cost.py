"""What saving a trial's state costs per epoch, against the epoch itself (``checkpoint`` policy).

For the papers' CIFAR-size networks it times, on the chosen device: one training step (SGD with
momentum, batch 128, forward + backward + step on random 3x32x32 inputs) and from it a CIFAR-10
epoch (45,000 images); writing the trial's whole state as the trial loop writes it
(``checkpoint.save``: model, optimizer, RNG; a temporary folder on local disk, as each save is
before Ray copies it to the trial's storage); and the in-memory snapshot a trial keeps between
saves (``checkpoint.snapshot``: tensors cloned on the device) so that a failure can still save its
last evaluated epoch. With ``checkpoint: {every_s: 30}`` a save happens once per 30 s instead of once
per epoch; the last columns show what that spares over 100 epochs. Ray's copy of each save into the
trial folder (a second write of the same bytes) comes on top, and is spared too.

    python bench/checkpoint_cost.py                    # CPU (small batch, fewer steps)
    python bench/checkpoint_cost.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from certstudy.models import MODELS
from certstudy.trial import checkpoint

MODELS_TO_TIME = [
    ("cnn7", {}),
    ("preact_resnet18", {}),
    ("wide_resnet", {"depth": 28, "widen_factor": 10}),
]
CIFAR_TRAIN = 45_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_s(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = 128 if device.type == "cuda" else 16
    console = Console(width=160)
    table = Table(title=f"a trial's save against its epoch on {device} (medians of {args.repeats}; batch {batch})")
    for col in (
        "model",
        "params (M)",
        "state (MB)",
        "step (ms)",
        "CIFAR epoch (s)",
        "save (ms)",
        "snapshot (ms)",
        "save / epoch",
        "100 epochs: saves every epoch (s)",
        "every_s 30 (s)",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, params in MODELS_TO_TIME:
        factory = MODELS.get(name)
        try:
            model = factory.build(factory.Params(**params), (3, 32, 32), 10).to(device)
        except Exception as exc:  # noqa: BLE001 - a model this registry lacks is a row that says so
            table.add_row(name, f"not built: {type(exc).__name__}: {exc}"[:60], *[""] * 8)
            continue
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.rand(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        step()  # momentum buffers exist from here on, as in a trial's state
        step_s = _median_s(step, device, max(3, args.repeats))
        epoch_s = step_s * CIFAR_TRAIN / batch

        def state() -> dict:
            return {
                "epoch": 0,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": checkpoint.rng_state(),
                "history": [{"val/robust_acc": 0.5}] * 100,
            }

        with tempfile.TemporaryDirectory(prefix="certstudy-ckpt-bench-") as tmp:

            def save() -> None:
                checkpoint.save(tmp, state())

            save_s = _median_s(save, device, args.repeats)
            size_mb = (Path(tmp) / checkpoint.CHECKPOINT_FILE).stat().st_size / 2**20
        snap_s = _median_s(lambda: checkpoint.snapshot(state()), device, args.repeats)
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        saves_30 = min(100, max(1, round(100 * epoch_s / 30)))  # one save per 30 s of training, and the last
        table.add_row(
            name,
            f"{n_params:.1f}",
            f"{size_mb:.0f}",
            f"{step_s * 1e3:.1f}",
            f"{epoch_s:.1f}",
            f"{save_s * 1e3:.0f}",
            f"{snap_s * 1e3:.1f}",
            f"{save_s / epoch_s:.2%}",
            f"{100 * save_s:.1f}",
            f"{saves_30 * save_s + (100 - saves_30) * snap_s:.1f}",
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    console.print(table)


if __name__ == "__main__":
    main()
