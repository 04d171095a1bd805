"""Every algorithm passes the core's conformance checks on the toy sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from astra_algorithms.dpo import DPO
from astra_algorithms.grpo import GRPO
from astra_algorithms.ipo import IPO
from astra_algorithms.ppo import PPO
from astra_core.testing import check_algorithm
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem


@pytest.mark.parametrize(
    ("make", "prefix"),
    [
        (lambda s: DPO(s), "dpo/"),
        (lambda s: DPO(s, label_smoothing=0.1), "dpo/"),
        (lambda s: IPO(s, length_normalize=False), "ipo/"),
        (lambda s: PPO(s), "ppo/"),
        (lambda s: PPO(s, kl_estimator="k1", normalize_advantages=False), "ppo/"),
        (lambda s: GRPO(s), "grpo/"),
        (lambda s: GRPO(s, scale_by_std=True, kl_coef=0.1), "grpo/"),
    ],
)
def test_algorithm_conforms(make: Callable[[ToySystem], Any], prefix: str) -> None:
    system = ToySystem()
    logs = check_algorithm(make(system), ToySampler(system, ToyScorer(), 2, 2))
    assert logs and all(key.startswith(prefix) for key in logs)
