"""The standard CIFAR augmentation, per batch on the trial's device: random crop with zero padding and
random horizontal flip (He et al. 2016; the recipe of Madry et al. and Rice et al.).

Written here rather than with torchvision.transforms because those transform one image at a time on
the host; this transforms a whole batch where it lives (uint8 or float, CPU or GPU) in two indexing
ops. The draws come from the default generator of the batch's device, which the trial seeds and
saves in every checkpoint, so a resumed trial and ``certstudy run`` draw exactly the same crops and
flips. Evaluation, certification and the soundness audit never augment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from certstudy.schema import Schema


class Augment(Schema):
    """``dataset.augment``: off unless asked for."""

    crop: int = Field(
        0,
        ge=0,
        le=64,
        description="random crop after zero-padding this many pixels on each side (0: off; CIFAR recipe: 4)",
    )
    flip: bool = Field(False, description="random horizontal flip with probability 1/2 (not for digits)")

    @property
    def enabled(self) -> bool:
        return self.crop > 0 or self.flip


def augment(x: Tensor, spec: Augment) -> Tensor:
    """A randomly cropped and/or flipped copy of the image batch ``x`` (N, C, H, W)."""
    if not spec.enabled:
        return x
    n, c, h, w = x.shape
    device = x.device
    if spec.crop > 0:
        p = spec.crop
        padded = F.pad(x, (p, p, p, p))
        di = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=device)
        dj = torch.randint(0, 2 * p + 1, (n, 1, 1, 1), device=device)
        rows = torch.arange(h, device=device).view(1, 1, h, 1) + di
        cols = torch.arange(w, device=device).view(1, 1, 1, w) + dj
        index = (rows * (w + 2 * p) + cols).expand(n, c, h, w).reshape(n, c, h * w)
        x = padded.flatten(2).gather(2, index).view(n, c, h, w)
    if spec.flip:
        flipped = torch.rand(n, device=device) < 0.5
        x = torch.where(flipped.view(n, 1, 1, 1), x.flip(3), x)
    return x
