"""Optimizer and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from medseg.tasks import OptimizerTask


def build_optimizer(model: torch.nn.Module, cfg: OptimizerTask, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer of a task's ``optimizer`` section; ``lr`` overrides its peak learning rate."""
    name = cfg.name.lower()
    lr = float(lr if lr is not None else cfg.lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (adamw or sgd)")


class WarmupCosine:
    """Linear warm-up over ``warmup_steps``, then cosine annealing to ``min_fraction`` x base lr.

    Progress along the cosine is the larger of step/total_steps and elapsed/max_time, so a
    time-limited run anneals to the end of its time budget. The state is plain numbers, so it
    round-trips through a ``weights_only`` checkpoint.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None,
                 max_time_s: float | None, min_fraction: float) -> None:
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps) if total_steps else None
        self.max_time_s = float(max_time_s) if max_time_s else None
        self.min_fraction = float(min_fraction)
        self.last_factor = 0.0
        self.step(0, 0.0)

    def factor(self, step: int, elapsed_s: float) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = 0.0
        if self.total_steps:
            span = max(1, self.total_steps - self.warmup_steps)
            progress = max(progress, (step - self.warmup_steps) / span)
        if self.max_time_s:
            progress = max(progress, elapsed_s / self.max_time_s)
        progress = min(1.0, progress)
        return self.min_fraction + (1 - self.min_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    def step(self, step: int, elapsed_s: float) -> None:
        self.last_factor = self.factor(step, elapsed_s)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * self.last_factor

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "max_time_s": self.max_time_s, "min_fraction": self.min_fraction, "last_factor": self.last_factor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.warmup_steps = int(state["warmup_steps"])
        self.total_steps = state["total_steps"]
        self.max_time_s = state["max_time_s"]
        self.min_fraction = float(state["min_fraction"])
        self.last_factor = float(state["last_factor"])
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * self.last_factor

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]
