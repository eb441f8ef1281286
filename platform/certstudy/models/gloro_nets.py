"""The GloRo conv nets 2C2F, 4C3F, 6C2F and 8C2F (Leino, Wang & Fredrikson, ICML 2021).

Layer specs from klasleino/gloro ``tools/training/architectures.py`` (``cnn_2C2F`` ... ``cnn_8C2F``
with ``pooling='conv'``: each down-sampling is a 4x4 stride-2 conv followed by the activation):

- 2C2F: c16 4x4 s2, c32 4x4 s2, FC100
- 4C3F: c32 3x3, c32 4x4 s2, c64 3x3, c64 4x4 s2, FC512, FC512
- 6C2F: c32 3x3, c32 3x3, c32 4x4 s2, c64 3x3, c64 3x3, c64 4x4 s2, FC512
- 8C2F: c64 3x3 x2, c64 4x4 s2, c128 3x3 x2, c128 4x4 s2, c256 3x3, c256 4x4 s2, FC256

then a linear head. Keras' ``padding='same'`` is padding 1 here for both kernel sizes: identical
for 3x3 convs and for 4x4 stride-2 convs on even sizes; on an odd size (8C2F's third down-sampling
on 28x28 inputs: 7 -> 3 here, 4 in Keras) PyTorch cannot pad asymmetrically and gives one row less.

``activation: minmax`` (GroupSort of channel pairs, the library's current default) or ``relu`` (the
2021 paper's scripts); ``init: orthogonal`` (the library's default, zero biases) or ``default``
(PyTorch's). Both activations are 1-Lipschitz, which is what GloRo's margin bound needs.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import MinMax, conv_chain
from certstudy.models.registry import MODELS

# (out channels, kernel, stride) per conv (padding 1 throughout), then the hidden dense widths
_SPECS: dict[str, tuple[list[tuple[int, int, int]], list[int]]] = {
    "gloro_2c2f": ([(16, 4, 2), (32, 4, 2)], [100]),
    "gloro_4c3f": ([(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)], [512, 512]),
    "gloro_6c2f": ([(32, 3, 1), (32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 3, 1), (64, 4, 2)], [512]),
    "gloro_8c2f": (
        [(64, 3, 1), (64, 3, 1), (64, 4, 2), (128, 3, 1), (128, 3, 1), (128, 4, 2), (256, 3, 1), (256, 4, 2)],
        [256],
    ),
}


class GloroNetParams(ModelParams):
    activation: Literal["minmax", "relu"] = "minmax"
    init: Literal["orthogonal", "default"] = "orthogonal"


def _orthogonal(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _register(name: str) -> None:
    convs, hidden = _SPECS[name]

    class GloroNet:
        Params = GloroNetParams

        @staticmethod
        def build(params: GloroNetParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
            activation = MinMax if params.activation == "minmax" else nn.ReLU
            model = conv_chain(
                name, input_shape, [(out, k, s, 1) for out, k, s in convs], hidden, num_classes, activation=activation
            )
            if params.init == "orthogonal":
                _orthogonal(model)
            return model

    GloroNet.__name__ = GloroNet.__qualname__ = name.replace("gloro_", "Gloro").upper()
    GloroNet.__doc__ = f"{name}: a GloRo conv net (Leino et al. 2021, klasleino/gloro)."
    MODELS.register(name)(GloroNet)


for _name in _SPECS:
    _register(_name)
