"""Mixed-precision training: autocast of the training loss, a GradScaler for fp16, channels-last.

Only the training loss runs in reduced precision (``training.precision``: bf16 or fp16), where
rounding only perturbs a stochastic gradient. Evaluation, every certificate and the soundness audit
run outside this context, in the model's fp32 weights, so no certified radius depends on the
training precision. fp16's narrow range needs loss scaling (``torch.amp.GradScaler``); its scale
is trial state and goes into every checkpoint, so a resumed fp16 trial continues exactly.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from certstudy.trial.config import TrainingConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    scaler: torch.amp.GradScaler | None

    @classmethod
    def of(cls, training: TrainingConfig, device: torch.device) -> Precision:
        dtype = DTYPES[training.precision]
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        if training.cudnn_benchmark and device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return cls(device, dtype, training.channels_last, scaler)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def layout(self, x: Tensor) -> Tensor:
        """A batch in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients in true units (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
