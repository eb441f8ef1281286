"""Layers the papers' networks use beyond torch.nn: MinMax (GroupSort of pairs) and an input normalisation.

Both are plain modules the certifiers recognise by exact type (``certify/network.py``): MinMax is
1-Lipschitz in l2 and monotone in each input, Normalize is a per-channel affine map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


class MinMax(nn.Module):
    """GroupSort with groups of 2 (Anil et al. 2019), GloRo's default activation (Leino et al. 2021).

    Channels (2k, 2k+1) of every position become (min, max) of the pair, as klasleino/gloro's
    ``MinMax`` does on channels-last tensors. It permutes each pair's entries, so it is exactly
    1-Lipschitz in l2 and preserves gradient norms. The channel count must be even.
    """

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        if c % 2:
            raise ValueError(f"MinMax pairs channels and needs an even count, got {c}")
        pairs = x.unflatten(1, (c // 2, 2))
        low, high = pairs.min(dim=2, keepdim=True).values, pairs.max(dim=2, keepdim=True).values
        return torch.cat([low, high], dim=2).flatten(1, 2)


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the network's first layer.

    Keeping the normalisation inside the network keeps every radius in [0, 1] input space, and the
    certifiers see it as the affine map it is.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"Normalize needs one positive std per mean, got mean={list(mean)} std={list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def channel_view(self, t: Tensor, ndim: int) -> Tensor:
        """``t`` (one value per channel) shaped to broadcast over an input of ``ndim`` dims (batch included)."""
        return t.view(-1, *([1] * (ndim - 2)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.channel_view(self.mean, x.dim())) / self.channel_view(self.std, x.dim())


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """The spatial size after a convolution or pooling (floor mode), as PyTorch computes it."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(
            f"a {kernel}x{kernel} window with stride {stride} and padding {padding} does not fit an input of size "
            f"{size}"
        )
    return out


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image dataset, or a one-line error naming the model."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs image inputs (C, H, W), got shape {input_shape}")
    c, h, w = input_shape
    return c, h, w


def conv_chain(
    name: str,
    input_shape: tuple[int, ...],
    convs: list[tuple[int, int, int, int]],
    hidden: list[int],
    num_classes: int,
    *,
    batch_norm: bool = False,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """The chain of the certified-training papers' nets: per (out channels, kernel, stride, padding) a conv
    (+ BatchNorm) + activation, Flatten, per hidden width a dense layer (+ BatchNorm) + activation, and a
    linear head."""
    c, h, w = image_shape(name, input_shape)
    layers: list[nn.Module] = []
    for out, k, s, p in convs:
        layers += (
            [nn.Conv2d(c, out, k, stride=s, padding=p)] + ([nn.BatchNorm2d(out)] if batch_norm else []) + [activation()]
        )
        c, h, w = out, conv_out(h, k, s, p), conv_out(w, k, s, p)
    layers.append(nn.Flatten())
    fan_in = c * h * w
    for width in hidden:
        layers += [nn.Linear(fan_in, width)] + ([nn.BatchNorm1d(width)] if batch_norm else []) + [activation()]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)
