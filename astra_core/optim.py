"""Options of the built-in optimizers, and the built-in LR schedules.

Optimizers are torch's own classes; their options models list what a run file may pass through
(weight decay, betas, momentum, ...). Schedules are multiplicative factors on the base learning
rate, stepped once per training step, with a linear warmup over `warmup_steps`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LambdaLR


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdamOptions(_Options):
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    amsgrad: bool = False


class AdamWOptions(AdamOptions):
    weight_decay: float = Field(0.01, ge=0)


class SGDOptions(_Options):
    momentum: float = Field(0.0, ge=0)
    dampening: float = 0.0
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False


class RMSpropOptions(_Options):
    alpha: float = Field(0.99, gt=0)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0)
    centered: bool = False


class AdagradOptions(_Options):
    lr_decay: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-10, gt=0)


class WarmupOptions(_Options):
    warmup_steps: int = Field(0, ge=0)


class DecayOptions(WarmupOptions):
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def constant_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warmup to the base rate, then constant."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda step: _warmup(step, warmup_steps))


def linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then linear decay to `min_lr_ratio` of the base rate at `total_steps`."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)

    return LambdaLR(optimizer, factor)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup, then half a cosine down to `min_lr_ratio` of the base rate."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
