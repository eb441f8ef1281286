"""The model interface: typed params and ``build(params, input_shape, num_classes)``.

Models are plain ``nn.Sequential`` stacks of Linear / Conv2d / ReLU / Flatten where possible, so
the certifiers (IBP, CROWN, Lipschitz bounds) can walk them layer by layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal, Protocol

from pydantic import BaseModel, ConfigDict
from torch import nn


class ModelParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelFactory(Protocol):
    Params: type[ModelParams]

    @staticmethod
    def build(params: ModelParams, input_shape: tuple[int, ...], num_classes: int) -> nn.Module: ...


Activation = Literal["relu", "tanh", "gelu"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block, then the train/eval mode it had before (even on error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
