"""CNN7 with BatchNorm (Shi, Wang, Zhang, Yi & Hsieh, "Fast Certified Robust Training with Short
Warmup", NeurIPS 2021): the ``cnn_7layer_bn`` of their repository (shizhouxing/Fast-Certified-Robust-Training).

c64 3x3, c64 3x3, c128 3x3 s2, c128 3x3, c128 3x3 (padding 1), FC512, FC(classes); BatchNorm after
every conv and after FC512, ReLU after each BatchNorm. In eval mode each BatchNorm is an affine map
the certifiers fold in; CROWN-IBP training bounds it with the clean batch's statistics
(``certify/network.py``, ``BatchNormLayer``).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import conv_chain
from certstudy.models.registry import MODELS


class CNN7Params(ModelParams):
    width: int = Field(64, ge=1, le=4096, description="channels of the first convs (the later ones have 2x)")
    linear_size: int = Field(512, ge=1, le=65536)


@MODELS.register("cnn7")
class CNN7:
    Params = CNN7Params

    @staticmethod
    def build(params: CNN7Params, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        w = params.width
        convs = [(w, 3, 1, 1), (w, 3, 1, 1), (2 * w, 3, 2, 1), (2 * w, 3, 1, 1), (2 * w, 3, 1, 1)]
        return conv_chain("cnn7", input_shape, convs, [params.linear_size], num_classes, batch_norm=True)
