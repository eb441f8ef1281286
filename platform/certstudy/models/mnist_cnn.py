"""The PyTorch MNIST-example CNN, the network of the HR repository's section 6.1
(RyanLucas3/HR_Neural_Networks ``Section_6.1/mnist_single_param.py``, from pytorch/examples ``mnist/main.py``):

c32 3x3, ReLU, c64 3x3, ReLU, maxpool 2, dropout 0.25, FC128, ReLU, dropout 0.5, FC(classes).
Dropout is the identity in eval mode, so the certifiers skip it.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from certstudy.models.base import ModelParams
from certstudy.models.layers import conv_out, image_shape
from certstudy.models.registry import MODELS


class MnistCNNParams(ModelParams):
    dropout: bool = Field(True, description="the example's two dropout layers (0.25 and 0.5)")


@MODELS.register("mnist_cnn")
class MnistCNN:
    Params = MnistCNNParams

    @staticmethod
    def build(params: MnistCNNParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = image_shape("mnist_cnn", input_shape)
        h, w = conv_out(conv_out(conv_out(h, 3), 3), 2, 2), conv_out(conv_out(conv_out(w, 3), 3), 2, 2)
        drop1, drop2 = (nn.Dropout(0.25), nn.Dropout(0.5)) if params.dropout else (nn.Identity(), nn.Identity())
        return nn.Sequential(
            nn.Conv2d(c, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), drop1,
            nn.Flatten(), nn.Linear(64 * h * w, 128), nn.ReLU(), drop2, nn.Linear(128, num_classes),
        )  # fmt: skip
