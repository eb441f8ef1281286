"""A fully connected network: Flatten, ``depth`` hidden layers of ``width`` units, a linear head."""

from __future__ import annotations

import math

from pydantic import Field
from torch import nn

from certstudy.models.base import ACTIVATIONS, Activation, ModelParams
from certstudy.models.registry import MODELS


class MLPParams(ModelParams):
    width: int = Field(128, ge=1, le=65536)
    depth: int = Field(2, ge=0, le=32, description="number of hidden layers")
    activation: Activation = "relu"


@MODELS.register("mlp")
class MLP:
    Params = MLPParams

    @staticmethod
    def build(params: MLPParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(params.depth):
            layers += [nn.Linear(fan_in, params.width), ACTIVATIONS[params.activation]()]
            fan_in = params.width
        layers.append(nn.Linear(fan_in, num_classes))
        return nn.Sequential(*layers)
