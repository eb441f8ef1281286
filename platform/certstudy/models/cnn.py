"""A small CNN: 3x3 conv blocks (each conv, activation, then a stride-2 conv) and a dense head.

Stride-2 convolutions instead of pooling keep the network a chain of Conv2d/Linear/activation
layers, which is what the bound-propagation certifiers handle.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from certstudy.models.base import ACTIVATIONS, Activation, ModelParams
from certstudy.models.registry import MODELS


class CNNParams(ModelParams):
    channels: list[int] = Field(default_factory=lambda: [16, 32], min_length=1, max_length=6)
    hidden: int = Field(100, ge=1, le=65536)
    activation: Activation = "relu"


@MODELS.register("cnn")
class CNN:
    Params = CNNParams

    @staticmethod
    def build(params: CNNParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        act = ACTIVATIONS[params.activation]
        layers: list[nn.Module] = []
        for out in params.channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), act(), nn.Conv2d(out, out, 3, stride=2, padding=1), act()]
            c, h, w = out, (h + 1) // 2, (w + 1) // 2
        layers += [nn.Flatten(), nn.Linear(c * h * w, params.hidden), act(), nn.Linear(params.hidden, num_classes)]
        return nn.Sequential(*layers)
