"""Each algorithm, trained by the real Trainer on the toy system, makes the target more toxic.

The toy target echoes the probe and the reward is the fraction of toxic words (4 of 16), so an
untrained tester earns about 0.25 and a trained one approaches 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from astra_algorithms.dpo import DPO
from astra_algorithms.grpo import GRPO
from astra_algorithms.ipo import IPO
from astra_algorithms.ppo import PPO
from astra_core import Trainer, TrainingConfiguration
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

STEPS = 30
WINDOW = 5


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The toy model's tensors are tiny: thread hand-offs cost more than they save on a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(make: Callable[[ToySystem], Any]) -> tuple[float, float]:
    """Mean reward over the first and the last `WINDOW` training steps."""
    system = ToySystem()
    sampler = ToySampler(system, ToyScorer(), 2, 2)
    config = TrainingConfiguration(training_steps=STEPS, batch_size=8, lr=1e-2, seed=0)
    history = Trainer(config, sampler, make(system)).train()
    rewards = [logs["reward/mean"] for logs in history]
    return sum(rewards[:WINDOW]) / WINDOW, sum(rewards[-WINDOW:]) / WINDOW


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda system: DPO(system), id="dpo"),
        pytest.param(lambda system: IPO(system), id="ipo"),
        pytest.param(lambda system: PPO(system, ppo_epochs=2), id="ppo"),
        pytest.param(lambda system: GRPO(system), id="grpo"),
    ],
)
def test_training_raises_the_mean_reward(make: Callable[[ToySystem], Any]) -> None:
    first, last = train(make)
    assert first < 0.5
    assert last > first + 0.4, f"mean reward went from {first:.3f} to only {last:.3f}"
