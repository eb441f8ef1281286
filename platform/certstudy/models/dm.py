"""The DeepMind IBP nets DM-small, DM-medium and DM-large (Gowal et al. 2018), as CROWN-IBP uses them.

Layer specs from deepmind/interval-bound-propagation ``examples/train.py`` (``layers(model_size)``),
also ``IBP_large`` in huanzhang12/CROWN-IBP ``model_defs.py`` (Zhang et al., ICLR 2020):

- small:  c16 4x4 s2 VALID, c32 4x4 s1 VALID, FC100, FC(classes)
- medium: c32 3x3 VALID, c32 4x4 s2 VALID, c64 3x3 VALID, c64 4x4 s2 VALID, FC512, FC512, FC(classes)
- large:  c64 3x3, c64 3x3, c128 3x3 s2, c128 3x3, c128 3x3 (SAME, padding 1), FC512, FC(classes)

Every conv and hidden dense layer is followed by a ReLU. Plain ``nn.Sequential`` chains, so IBP,
CROWN and the Lipschitz bound all walk them.
"""

from __future__ import annotations

from torch import nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import conv_chain
from certstudy.models.registry import MODELS

# (out channels, kernel, stride, padding) per conv, then the hidden dense widths
_SPECS: dict[str, tuple[list[tuple[int, int, int, int]], list[int]]] = {
    "dm_small": ([(16, 4, 2, 0), (32, 4, 1, 0)], [100]),
    "dm_medium": ([(32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)], [512, 512]),
    "dm_large": ([(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)], [512]),
}


class DMParams(ModelParams):
    pass


def _register(name: str) -> None:
    convs, hidden = _SPECS[name]

    class DMNet:
        Params = DMParams

        @staticmethod
        def build(params: DMParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
            return conv_chain(name, input_shape, convs, hidden, num_classes)

    DMNet.__name__ = DMNet.__qualname__ = "".join(part.capitalize() for part in name.split("_"))
    DMNet.__doc__ = f"{name}: the DeepMind IBP net (Gowal et al. 2018; Zhang et al. 2020)."
    MODELS.register(name)(DMNet)


for _name in _SPECS:
    _register(_name)
