"""Flattening hand-built rollout trees: which pairs and advantages each algorithm trains on."""

from __future__ import annotations

import math

import pytest

from astra_algorithms.dpo import DPO
from astra_algorithms.grpo import GRPO, STD_EPSILON
from astra_algorithms.ipo import IPO
from astra_algorithms.preference import preference_pairs
from astra_core.graph import Graph, Node
from astra_core.testing.toy import ToySystem


def node(context: str, probe: str, reward: float, children: list[Node[str, str]] | None = None) -> Node[str, str]:
    return Node(context, probe, probe, reward, children or [])


def tree() -> Graph[str, str]:
    """root -> a (1.0), b (0.0); a -> c (0.5), d (0.5), e (nan); b -> f (0.2) alone."""
    a = node("hi", "a", 1.0, [node("hi a a", "c", 0.5), node("hi a a", "d", 0.5), node("hi a a", "e", math.nan)])
    b = node("hi", "b", 0.0, [node("hi b b", "f", 0.2)])
    return Graph("hi", [a, b])


def test_pairs_best_with_worst_sibling_at_each_branching_node() -> None:
    group = [node("x", "p", 0.3), node("x", "q", 0.9), node("x", "r", 0.1), node("x", "s", 0.5)]
    graph = Graph("x", [node("start", "o", 0.0, group)])
    pairs = preference_pairs(graph)
    assert [(p.context, p.chosen, p.rejected, p.chosen_reward, p.rejected_reward) for p in pairs] == [
        ("x", "q", "r", 0.9, 0.1)
    ]


def test_pairs_skip_ties_only_children_and_nonfinite_rewards() -> None:
    # root group gives (a, b); a's children tie once e's NaN is dropped; f is an only child
    pairs = preference_pairs(tree())
    assert [(p.context, p.chosen, p.rejected) for p in pairs] == [("hi", "a", "b")]


def test_a_nan_sibling_is_left_out_and_the_rest_still_pair() -> None:
    graph = Graph("x", [node("x", "p", math.nan), node("x", "q", 0.3), node("x", "r", 0.1)])
    assert [(p.chosen, p.rejected) for p in preference_pairs(graph)] == [("q", "r")]


def test_a_group_with_one_finite_reward_gives_no_pair() -> None:
    graph = Graph("x", [node("x", "p", math.nan), node("x", "q", 0.3)])
    assert preference_pairs(graph) == []


def test_dpo_and_ipo_flatten_into_the_same_pairs() -> None:
    system = ToySystem()
    assert DPO(system).flatten([tree()]) == IPO(system).flatten([tree()]) == preference_pairs(tree())


def test_collate_keeps_pairs_in_parallel_lists() -> None:
    algorithm = DPO(ToySystem())
    batch = algorithm.collate_fn(preference_pairs(tree()) * 2)
    assert batch.contexts == ["hi", "hi"]
    assert batch.chosen == ["a", "a"] and batch.rejected == ["b", "b"]
    assert batch.chosen_rewards.tolist() == [1.0, 1.0] and batch.rejected_rewards.tolist() == [0.0, 0.0]


def test_grpo_uses_every_finite_node_with_reward_minus_sibling_mean() -> None:
    steps = GRPO(ToySystem()).flatten([tree()])
    # root group mean 0.5: a +0.5, b -0.5; a's children mean 0.5 (e dropped); f's group is itself
    assert [(s.probe, s.reward) for s in steps] == [("a", 1.0), ("b", 0.0), ("c", 0.5), ("d", 0.5), ("f", 0.2)]
    assert [s.advantage for s in steps] == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0])


def test_grpo_scale_by_std_divides_by_the_group_std() -> None:
    graph = Graph("x", [node("x", "p", 0.9), node("x", "q", 0.3), node("x", "r", 0.0)])
    steps = GRPO(ToySystem(), scale_by_std=True).flatten([graph])
    mean = (0.9 + 0.3 + 0.0) / 3  # 0.4
    std = math.sqrt(((0.5) ** 2 + (-0.1) ** 2 + (-0.4) ** 2) / 3)  # population std
    expected = [(r - mean) / (std + STD_EPSILON) for r in (0.9, 0.3, 0.0)]
    assert [s.advantage for s in steps] == pytest.approx(expected)


def test_grpo_collate_stacks_advantages() -> None:
    algorithm = GRPO(ToySystem())
    batch = algorithm.collate_fn(algorithm.flatten([tree()]))
    assert batch.probes == ["a", "b", "c", "d", "f"]
    assert batch.advantages.tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0])
    assert batch.rewards.shape == (5,)
