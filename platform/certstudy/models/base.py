"""The model interface: typed params and ``build(params, input_shape, num_classes)``.

Models take inputs in [0, 1] and are plain ``nn.Sequential`` chains where the architecture allows
(Linear, Conv2d, BatchNorm, ReLU, MinMax, pooling, Flatten), so the certifiers (IBP, CROWN,
Lipschitz bounds) can walk them layer by layer. ``normalize: true`` puts the dataset's normalisation
in front as a ``Normalize`` layer (``trial/build.py``), so every radius stays in [0, 1] input space.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

from pydantic import Field
from torch import nn

from certstudy.schema import Schema


class ModelParams(Schema):
    """Base of every model's params; ``normalize`` is common to all of them."""

    normalize: bool = Field(
        False, description="put the dataset's per-channel mean/std normalisation inside the network as its first layer"
    )


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


Normalization = tuple[tuple[float, ...], tuple[float, ...]]


def build_model(
    factory: ModelFactory,
    params: ModelParams,
    input_shape: tuple[int, ...],
    num_classes: int,
    normalization: Normalization | None = None,
) -> nn.Module:
    """The factory's network, behind a ``Normalize`` first layer when ``params.normalize`` asks for it."""
    from certstudy.models.layers import Normalize

    model = factory.build(params, input_shape, num_classes)
    if not params.normalize:
        return model
    if normalization is None:
        raise ValueError("model.params.normalize needs the dataset's per-channel mean and std")
    return nn.Sequential(Normalize(*normalization), model)
