"""Wide-ResNet WRN-d-k (Zagoruyko & Komodakis 2016), as Madry et al., TRADES and Rice et al. use it
(locuslab/robust_overfitting ``wideresnet.py``): a 3x3 stem conv of 16 channels, three groups of
(d - 4) / 6 pre-activation basic blocks with 16k, 32k, 64k channels (strides 1, 2, 2), BN + ReLU,
global average pool, linear. Dropout 0 (the robust-training recipes).

The unused ``sub_block1`` of the TRADES code is left out (it adds parameters no forward pass uses).
The stem takes the dataset's channel count and the final pool is adaptive, so WRN-28-10 and
WRN-34-10 run on CIFAR and on MNIST shapes alike. Residual: refused by the deterministic certifiers.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import image_shape
from certstudy.models.registry import MODELS


class WideBasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if in_planes != out_planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNetModule(nn.Module):
    def __init__(self, in_channels: int, depth: int, widen_factor: int, num_classes: int) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        for i in range(3):
            blocks = [
                WideBasicBlock(
                    widths[i] if j == 0 else widths[i + 1], widths[i + 1], (1 if i == 0 else 2) if j == 0 else 1
                )
                for j in range(n)
            ]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # the initialisation of the reference code
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.fc(out.flatten(1))


class WideResNetParams(ModelParams):
    depth: int = Field(34, ge=10, le=100, description="6n + 4: 28 and 34 are the usual")
    widen_factor: int = Field(10, ge=1, le=20)

    @model_validator(mode="after")
    def _depth_is_6n_plus_4(self) -> WideResNetParams:
        if (self.depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (e.g. 28 or 34), got {self.depth}")
        return self


@MODELS.register("wide_resnet")
class WideResNet:
    Params = WideResNetParams

    @staticmethod
    def build(params: WideResNetParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, _, _ = image_shape("wide_resnet", input_shape)
        return WideResNetModule(c, params.depth, params.widen_factor, num_classes)
