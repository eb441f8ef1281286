"""Optimizer and per-epoch learning-rate schedule from a ``TrainingConfig``."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from certstudy.trial.config import TrainingConfig


def build_optimizer(cfg: TrainingConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_schedule(cfg: TrainingConfig, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """Stepped once per epoch."""
    s = cfg.schedule
    sched = torch.optim.lr_scheduler
    if s.name == "cosine":
        main: LRScheduler = sched.CosineAnnealingLR(optimizer, T_max=max(1, cfg.epochs - s.warmup_epochs))
    elif s.name == "step":
        main = sched.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    elif s.name == "multistep":
        main = sched.MultiStepLR(optimizer, milestones=[m - s.warmup_epochs for m in s.milestones], gamma=s.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if s.warmup_epochs == 0:
        return main
    warm = sched.LinearLR(optimizer, start_factor=0.1, total_iters=s.warmup_epochs)
    return sched.SequentialLR(optimizer, [warm, main], milestones=[s.warmup_epochs])
