"""PreAct-ResNet-18 (He et al. 2016), the network of Rice, Wong & Kolter (ICML 2020), as in
locuslab/robust_overfitting ``preactresnet.py``: a 3x3 stem conv, four stages of two pre-activation
blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2), BN + ReLU, global average pool, linear.

The stem takes the dataset's channel count and the final pool is adaptive, so the same network
runs on CIFAR's 3x32x32 (the 4x4 average pool of the original) and MNIST's 1x28x28. Residual
blocks are not chains: the deterministic certifiers refuse them (at validation); PGD, AutoAttack
and randomized smoothing work on it.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import image_shape
from certstudy.models.registry import MODELS


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the (1x1-projected where the shape changes) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNetModule(nn.Module):
    def __init__(self, in_channels: int, blocks: list[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        stages: list[nn.Module] = []
        planes_in = width
        for i, (planes, n) in enumerate(zip((width, 2 * width, 4 * width, 8 * width), blocks)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            stage = []
            for s in strides:
                stage.append(PreActBlock(planes_in, planes, s))
                planes_in = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(8 * width)
        self.linear = nn.Linear(8 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(out.flatten(1))


class PreActResNet18Params(ModelParams):
    width: int = Field(
        64, ge=1, le=1024, description="channels of the first stage (64 in the paper; the stages have 1x, 2x, 4x, 8x)"
    )


@MODELS.register("preact_resnet18")
class PreActResNet18:
    Params = PreActResNet18Params

    @staticmethod
    def build(params: PreActResNet18Params, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, _, _ = image_shape("preact_resnet18", input_shape)
        return PreActResNetModule(c, [2, 2, 2, 2], num_classes, params.width)
