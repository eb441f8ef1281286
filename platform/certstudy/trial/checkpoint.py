"""Trial checkpoints: model, optimizer, schedule, method state, RNG states, history.

Everything saved is a tensor or a plain container of numbers/strings, so checkpoints load with
``torch.load(weights_only=True)``: a checkpoint file cannot run code when it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "trial_state.pt"
MODEL_FILE = "model.pt"
ARTIFACTS_DIR = "artifacts"  # files logged with the trial's run (e.g. certification curves)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    directory: str | Path,
    state: dict[str, Any],
    model_state: dict[str, torch.Tensor] | None = None,
    artifacts: dict[str, bytes] | None = None,
) -> None:
    """The trial state; plus the bare model weights (``model.pt``) and result files when given (at the end)."""
    directory = Path(directory)
    torch.save(state, directory / CHECKPOINT_FILE)
    if model_state is not None:
        torch.save(model_state, directory / MODEL_FILE)
    for name, data in (artifacts or {}).items():
        path = directory / ARTIFACTS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def load(directory: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    return torch.load(Path(directory) / CHECKPOINT_FILE, map_location=map_location, weights_only=True)


def snapshot(state: Any) -> Any:
    """A copy of ``state`` that later training cannot change: tensors cloned (on their device),
    containers copied, other values shared (numbers and strings are immutable). What a trial keeps
    of its last evaluated epoch between saves, to write it if the trial fails before the next save."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return state
