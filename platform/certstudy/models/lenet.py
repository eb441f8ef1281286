"""LeNet for MNIST randomized smoothing (Salman et al. 2019; Jeong & Shin, NeurIPS 2020,
jh-jeong/smoothing-consistency ``archs/``): c20 5x5, maxpool 2, c50 5x5, maxpool 2, FC500, FC(classes),
ReLU after each conv and after FC500 (conv -> ReLU -> pool, as in the classic LeNet-5 code)."""

from __future__ import annotations

from torch import nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import conv_out, image_shape
from certstudy.models.registry import MODELS


class LeNetParams(ModelParams):
    pass


@MODELS.register("lenet")
class LeNet:
    Params = LeNetParams

    @staticmethod
    def build(params: LeNetParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = image_shape("lenet", input_shape)
        for _ in range(2):
            h, w = conv_out(conv_out(h, 5), 2, 2), conv_out(conv_out(w, 5), 2, 2)
        return nn.Sequential(
            nn.Conv2d(c, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(50 * h * w, 500), nn.ReLU(), nn.Linear(500, num_classes),
        )  # fmt: skip
