"""The built-in optimizers and LR schedules, as registered by the core's own plugin."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from astra_core.errors import OptionsError
from astra_core.optim import constant_schedule, cosine_schedule, linear_schedule
from astra_core.registry import Registries


def parameters() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


def trajectory(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_constant_schedule_warms_up_linearly_then_holds() -> None:
    optimizer = torch.optim.SGD(parameters(), lr=1.0)
    assert trajectory(constant_schedule(optimizer, 10, warmup_steps=4), 6) == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    )
    assert trajectory(constant_schedule(torch.optim.SGD(parameters(), lr=1.0), 10), 3) == [1.0, 1.0, 1.0]


def test_linear_schedule_decays_to_min_lr_ratio() -> None:
    optimizer = torch.optim.SGD(parameters(), lr=1.0)
    rates = trajectory(linear_schedule(optimizer, 6, warmup_steps=2, min_lr_ratio=0.2), 8)
    assert rates == pytest.approx([0.5, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


def test_cosine_schedule_follows_half_a_cosine() -> None:
    optimizer = torch.optim.SGD(parameters(), lr=2.0)
    rates = trajectory(cosine_schedule(optimizer, 5, warmup_steps=1), 7)
    expected = [2.0] + [2.0 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)] + [0.0]
    assert rates == pytest.approx(expected[:7], abs=1e-12)


@pytest.mark.parametrize(
    ("name", "options", "kind", "expected"),
    [
        ("adam", {"betas": (0.5, 0.6)}, torch.optim.Adam, {"betas": (0.5, 0.6)}),
        ("adamw", {}, torch.optim.AdamW, {"weight_decay": 0.01}),
        ("sgd", {"momentum": 0.9}, torch.optim.SGD, {"momentum": 0.9}),
        ("rmsprop", {"alpha": 0.9}, torch.optim.RMSprop, {"alpha": 0.9}),
        ("adagrad", {"lr_decay": 0.1}, torch.optim.Adagrad, {"lr_decay": 0.1}),
    ],
)
def test_builtin_optimizers_build_with_their_options(
    registries: Registries, name: str, options: dict[str, object], kind: Any, expected: dict[str, object]
) -> None:
    optimizer: Any = registries.get("optimizer", name).build(parameters(), options=options, lr=0.25)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.25
    for key, value in expected.items():
        assert group[key] == value


@pytest.mark.parametrize(
    ("kind", "name", "options", "message"),
    [
        ("optimizer", "sgd", {"betas": (0.9, 0.9)}, "unknown option 'betas'"),
        ("optimizer", "adamw", {"weight_decay": -1}, "weight_decay"),
        ("scheduler", "cosine", {"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ("scheduler", "constant", {"min_lr_ratio": 0.5}, "unknown option 'min_lr_ratio'"),
        ("scheduler", "linear", {"warmup_steps": -1}, "warmup_steps"),
    ],
)
def test_bad_options_are_options_errors(
    registries: Registries, kind: str, name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(OptionsError, match=message):
        registries.get(kind, name).validate(options)  # type: ignore[arg-type]


def test_schedulers_build_from_the_registry_with_total_steps(registries: Registries) -> None:
    optimizer = torch.optim.SGD(parameters(), lr=1.0)
    scheduler = registries.get("scheduler", "linear").build(optimizer, options={"warmup_steps": 1}, total_steps=3)
    assert trajectory(scheduler, 4) == pytest.approx([1.0, 1.0, 0.5, 0.0])
