"""Optimiser and learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import get_scheduler

from workflow_scripts.train.config import OptimConfig

_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | list[dict], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; groups (``{"params", "lr_scale"}``) get ``lr * lr_scale``."""
    params = list(params)
    groups = params if params and isinstance(params[0], dict) else [{"params": params, "lr_scale": 1.0}]
    groups = [
        {"params": [p for p in g["params"] if p.requires_grad], "lr": cfg.lr * g.get("lr_scale", 1.0)}
        for g in groups
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=False
    )


def build_schedule(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return get_scheduler(
        _SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
    )
