"""One trial: epochs of training, evaluation after each, a checkpoint per epoch, test at the end.

The trial reports through ``report(metrics, checkpoint_dir)`` and knows nothing of Ray, Optuna or
MLflow; ``certstudy launch`` passes a reporter that forwards to Ray Tune, ``certstudy run`` one
that prints. Resuming from a checkpoint restores model, optimizer, schedule, method state and RNG
streams, so a resumed trial ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from certstudy.errors import TrialFailed
from certstudy.trial import checkpoint
from certstudy.trial.build import TrialParts, build_parts
from certstudy.certify.metrics import radius_label
from certstudy.trial.certification import certify_all
from certstudy.trial.config import TrialConfig
from certstudy.trial.environment import seed_everything, select_device
from certstudy.trial.evaluation import Scores, evaluate
from certstudy.trial.optim import build_optimizer, build_schedule

Reporter = Callable[[dict[str, "float | str"], "str | None"], None]


def _fixed_subset(n: int, size: int | None, seed: int) -> Tensor:
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def _scores(prefix: str, s: Scores) -> dict[str, float]:
    return {f"{prefix}/clean_acc": s.clean_acc, f"{prefix}/clean_loss": s.clean_loss, f"{prefix}/robust_acc": s.robust_acc, f"{prefix}/robust_loss": s.robust_loss}


def attack_grid(model: torch.nn.Module, x: Tensor, y: Tensor, cfg: TrialConfig, bounds: tuple[float, float] | None) -> dict[str, float]:
    """PGD-robust accuracy at every positive radius of the attack norm's grid (upper bounds on certified accuracy)."""
    ev = cfg.evaluation
    out = {}
    for r in ev.radii.get(ev.attack.norm, []):
        attack = ev.attack.model_copy(update={"eps": r, "step_size": None})
        s = evaluate(model, x, y, attack, bounds, batch_size=ev.batch_size, seed=cfg.seed + 16)
        out[f"test/robust_acc_{ev.attack.norm}_{radius_label(r)}"] = s.robust_acc
    return out


def train_epoch(parts: TrialParts, cfg: TrialConfig, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    """One pass over the (shuffled) train split; returns the mean training loss."""
    model, method, splits = parts.model, parts.method, parts.splits
    model.train()
    n = len(splits.y_train)
    batch = n if cfg.training.full_batch else cfg.training.batch_size
    order = torch.randperm(n).to(splits.x_train.device)
    total, seen = 0.0, 0
    for i in range(0, n, batch):
        idx = order[i : i + batch]
        loss = method.loss(model, splits.x_train[idx], splits.y_train[idx])
        if not torch.isfinite(loss):
            raise TrialFailed(f"training loss became {loss.item()} at epoch {epoch}, batch {i // batch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.training.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
        optimizer.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / seen


def run_trial(cfg: TrialConfig, report: Reporter, *, data_dir: str, resume_from: str | Path | None = None) -> dict[str, float | str]:
    """Trains and evaluates one configuration; returns the last report's metrics (test included)."""
    seed_everything(cfg.seed, cfg.threads)
    device = select_device(cfg.device)
    parts = build_parts(cfg, data_dir, device)
    model, splits, ev = parts.model, parts.splits, cfg.evaluation
    optimizer = build_optimizer(cfg.training, model)
    schedule = build_schedule(cfg.training, optimizer)
    val_idx = _fixed_subset(len(splits.y_val), ev.val_subset, cfg.seed + 1).to(device)
    train_idx = _fixed_subset(len(splits.y_train), ev.train_subset or len(val_idx), cfg.seed + 2).to(device)
    test_idx = _fixed_subset(len(splits.y_test), ev.test_subset, cfg.seed + 3).to(device)
    cert_idx = test_idx[_fixed_subset(len(test_idx), ev.certify_subset, cfg.seed + 4).to(device)]
    cert_val_idx = _fixed_subset(len(splits.y_val), ev.certify_val_subset, cfg.seed + 5).to(device) if ev.certify_val_subset else None

    start, history = 0, []
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        parts.method.load_state_dict(state["method"])
        checkpoint.set_rng_state(state["rng"])
        start, history = int(state["epoch"]) + 1, list(state["history"])

    metrics: dict[str, float | str] = dict(history[-1]) if history else {}
    files: dict[str, bytes] = {}
    for epoch in range(start, cfg.training.epochs):
        final = epoch == cfg.training.epochs - 1
        parts.method.on_epoch_start(model, epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_epoch(parts, cfg, optimizer, epoch)
        schedule.step()
        val = evaluate(model, splits.x_val[val_idx], splits.y_val[val_idx], ev.attack, splits.bounds, batch_size=ev.batch_size, seed=cfg.seed + 11)
        tr = evaluate(model, splits.x_train[train_idx], splits.y_train[train_idx], ev.attack, splits.bounds, batch_size=ev.batch_size, seed=cfg.seed + 12)
        metrics = {
            "epoch": float(epoch),
            "train/lr": lr,
            "train/loss": train_loss,
            "train/acc": tr.clean_acc,
            "train/robust_acc": tr.robust_acc,
            "train/robust_loss": tr.robust_loss,
            **_scores("val", val),
            "gap/robust_acc": tr.robust_acc - val.robust_acc,
            "gap/robust_loss": val.robust_loss - tr.robust_loss,
            **parts.method.epoch_metrics(),
        }
        history.append(metrics)
        if final:
            test = evaluate(model, splits.x_test[test_idx], splits.y_test[test_idx], ev.attack, splits.bounds, batch_size=ev.batch_size, seed=cfg.seed + 13)
            metrics = {**metrics, **_scores("test", test)}
            if ev.attack_grid:
                metrics.update(attack_grid(model, splits.x_test[test_idx], splits.y_test[test_idx], cfg, splits.bounds))
            test_split = dataclasses.replace(splits, x_test=splits.x_test[test_idx], y_test=splits.y_test[test_idx])
            metrics.update(parts.method.final_metrics(model, test_split, batch_size=ev.batch_size, seed=cfg.seed + 14))
            if parts.certifiers:
                val_points = (splits.x_val[cert_val_idx], splits.y_val[cert_val_idx]) if cert_val_idx is not None else None
                certified, files = certify_all(parts, cfg, (splits.x_test[cert_idx], splits.y_test[cert_idx]), val_points, cfg.seed + 15)
                metrics.update(certified)
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise TrialFailed(f"metric {bad[0]} is {metrics[bad[0]]} at epoch {epoch}")
        state = {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "method": parts.method.state_dict(),
            "rng": checkpoint.rng_state(),
            "history": history,
        }
        with tempfile.TemporaryDirectory(prefix="certstudy-ckpt-") as tmp:
            checkpoint.save(tmp, state, model.state_dict() if final else None, files)
            report(metrics, tmp)
    return metrics
