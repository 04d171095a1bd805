"""``example-signsgd``: sign SGD, a complete `torch.optim.Optimizer` in a few lines.

Each step moves every weight by ``lr`` against the sign of its gradient (Bernstein et al.,
2018, "signSGD"), after an optional decoupled weight decay ``w <- w * (1 - lr * weight_decay)``.
It keeps no state, so its checkpoint is just its param groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import torch
from torch.optim.optimizer import ParamsT

from astra_core import factories


class SignSGD(torch.optim.Optimizer):
    """Sign SGD: ``SignSGD(params, lr=1e-3, weight_decay=0.0)``."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"SignSGD needs lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @overload
    def step(self, closure: None = None) -> None: ...

    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update; `closure`, if given, recomputes and returns the loss first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                lr, decay = group["lr"], group["weight_decay"]
                for parameter in group["params"]:
                    if parameter.grad is None:
                        continue
                    if decay:
                        parameter.mul_(1.0 - lr * decay)
                    parameter.add_(torch.sign(parameter.grad), alpha=-lr)
        return loss


factory = factories.optimizer(SignSGD)
"""What the plugin registers; mypy checks ``SignSGD`` against the optimizer protocol here."""
