"""The algorithms on a text system (System[str, str]): the embedded tiny transformers model.

Skipped where astra-transformers is not installed; it never touches the network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

from astra_algorithms.dpo import DPO
from astra_algorithms.grpo import GRPO
from astra_algorithms.ipo import IPO
from astra_algorithms.ppo import PPO
from astra_core.graph import Graph, Node

# Before transformers is imported: nothing here may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytest.importorskip("astra_transformers")
pytestmark = pytest.mark.slow

OPENER = "Hello, how are you?"
AFTER = OPENER + " you are bad no"


def text_graph() -> Graph[str, str]:
    """Text continues the context: each probe and response starts with a space."""
    deeper = [Node(AFTER, " hate it", " ok", 0.2), Node(AFTER, " fine", " ok", 0.0)]
    return Graph(OPENER, [Node(OPENER, " you are bad", " no", 1.0, deeper), Node(OPENER, " nice day", " yes", 0.0)])


@pytest.fixture(scope="module")
def system() -> Any:
    from astra_transformers.system import TransformersSystem

    return TransformersSystem(probe_tokens=8, response_tokens=8)


@pytest.mark.parametrize(
    ("make", "expected_steps"),
    [
        pytest.param(lambda s: DPO(s), 2, id="dpo"),
        pytest.param(lambda s: IPO(s), 2, id="ipo"),
        pytest.param(lambda s: PPO(s), 4, id="ppo"),
        pytest.param(lambda s: GRPO(s, kl_coef=0.1), 4, id="grpo"),
    ],
)
def test_one_step_on_a_text_system_reaches_the_tester(
    system: Any, make: Callable[[Any], Any], expected_steps: int
) -> None:
    algorithm = make(system)
    steps = algorithm.flatten([text_graph()])
    assert len(steps) == expected_steps
    loss, logs = algorithm.loss(algorithm.collate_fn(steps))
    assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in logs.values())
    tester = list(system.parameters())
    grads = torch.autograd.grad(loss, tester, allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_ppo_reads_the_feature_width_from_the_text_system(system: Any) -> None:
    width = system.state_features([OPENER]).shape[1]
    assert PPO(system).value_head.in_features == width
