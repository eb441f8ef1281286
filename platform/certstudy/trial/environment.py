"""Where and how a trial computes: device choice, thread count, seeding."""

from __future__ import annotations

import random

import torch

from certstudy.errors import TrialFailed


def select_device(requested: str) -> torch.device:
    """``auto`` takes the first visible CUDA device, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrialFailed(f"device {requested!r} requested but no CUDA device is visible")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrialFailed(
            f"device {requested!r} requested but this process sees {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of on-device running sums (losses, counts): float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def seed_everything(seed: int, threads: int) -> None:
    """Seeds every RNG a trial touches and fixes the intra-op thread count.

    The thread count is part of the configuration: the order of floating-point reductions depends
    on it, and ``certstudy run`` reproduces a study trial exactly only with the same count.
    """
    torch.set_num_threads(threads)
    random.seed(seed)
    torch.manual_seed(seed)
