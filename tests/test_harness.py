"""The Harness: rollouts per experience, batching, seeded shuffling, empty experiences."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pytest
import torch

from astra_core.errors import ComponentContractError, ConfigError
from astra_core.graph import Graph, Node
from astra_core.harness import Harness, rollout_metrics

if TYPE_CHECKING:
    from conftest import Kit, Parts


def exact(kit: Kit) -> Parts:
    return kit.parts(algorithm=lambda system: kit.ToyDPO(system, keep_ties=True))


def test_batch_size_is_what_collate_fn_sees(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, num_episodes_per_experience=3, batch_size=4)
    batches = list(harness.experience(0))
    assert [len(b) for b in batches] == parts.algorithm.batch_sizes == [4, 4, 1]  # 9 pairs


def test_batched_sampler_is_called_once_per_experience(kit: Kit) -> None:
    parts = kit.parts()
    harness = Harness(parts.sampler, parts.algorithm, num_episodes_per_experience=5, batch_size=4)
    calls_before = parts.system.generate_calls
    harness.experience(0)
    assert len(harness.last_graphs) == 5
    assert harness.last_metrics["episodes"] == 5.0
    # depth 2: one tester and one target call per level for all five episodes together
    assert parts.system.generate_calls - calls_before == 4


def test_a_sampler_is_asked_for_the_whole_experience_in_one_call(kit: Kit) -> None:
    parts = kit.parts()
    calls: list[int] = []

    class Counting:
        system = parts.system
        scorer = parts.sampler.scorer

        def rollouts(self, count: int) -> list[Graph[str, str]]:
            calls.append(count)
            return parts.sampler.rollouts(count)

        def eval_rollouts(self, prompts: Sequence[str]) -> list[Graph[str, str]]:
            return parts.sampler.eval_rollouts(prompts)

    harness = Harness(Counting(), parts.algorithm, num_episodes_per_experience=3, batch_size=4)
    harness.experience(0)
    assert calls == [3] and len(harness.last_graphs) == 3


def test_the_algorithm_flattens_the_whole_experience_in_one_call(kit: Kit) -> None:
    parts = kit.parts()
    seen: list[int] = []
    flatten = parts.algorithm.flatten

    def counting(graphs: Sequence[Graph[str, str]]) -> Any:
        seen.append(len(graphs))
        return flatten(graphs)

    parts.algorithm.flatten = counting  # type: ignore[method-assign]
    Harness(parts.sampler, parts.algorithm, num_episodes_per_experience=5, batch_size=4).experience(0)
    assert seen == [5]


def test_a_sampler_returning_the_wrong_count_is_reported(kit: Kit) -> None:
    parts = kit.parts()
    parts.sampler.rollouts = lambda count: []  # type: ignore[method-assign]
    harness = Harness(parts.sampler, parts.algorithm, num_episodes_per_experience=2)
    with pytest.raises(ComponentContractError, match=r"rollouts\(2\) returned 0 episodes"):
        harness.experience(0)


def test_shuffle_by_example_is_seeded_by_run_seed_and_step(kit: Kit) -> None:
    parts = exact(kit)
    torch.manual_seed(0)
    harness = Harness(parts.sampler, parts.algorithm, 4, 5, seed=3, shuffle_by="example")
    loader = harness.experience(7)
    examples = list(loader.dataset)  # type: ignore[call-overload]

    def seen(seed: int, step: int) -> list[Any]:
        again = Harness(parts.sampler, parts.algorithm, 4, 5, seed=seed, shuffle_by="example")
        again.rollouts = lambda: harness.last_graphs  # type: ignore[method-assign]
        return [pair for batch in again.experience(step) for pair in batch]

    first = [pair for batch in loader for pair in batch]
    assert sorted(map(repr, first)) == sorted(map(repr, examples))
    assert first != examples  # shuffled
    assert seen(3, 7) == first  # same run seed and step: same order, whatever the global RNG did
    assert seen(3, 8) != first
    assert seen(4, 7) != first


def test_shuffle_false_keeps_flatten_order(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 4, 5, shuffle=False)
    loader = harness.experience(0)
    expected = list(parts.algorithm.flatten(harness.last_graphs))
    assert [pair for batch in loader for pair in batch] == expected


def episode_order(harness: Harness[Any, Any, Any, Any], seen: list[Any]) -> list[int]:
    """Which episode each stretch of `seen` came from, asserting every episode's examples arrive
    together and in flatten order (the check fails on an example-level shuffle)."""
    per_episode = [list(harness.algorithm.flatten([graph])) for graph in harness.last_graphs]
    order: list[int] = []
    at = 0
    while at < len(seen):
        matches = [i for i, examples in enumerate(per_episode) if seen[at : at + len(examples)] == examples]
        assert matches, f"examples from {at} on are not one episode's, in order"
        order.append(next(i for i in matches if i not in order))
        at += len(per_episode[order[-1]])
    return order


def test_shuffle_by_episode_keeps_each_episode_together_in_a_seeded_order(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 6, 5, seed=3, shuffle_by="episode")
    loader = harness.experience(7)
    seen = [pair for batch in loader for pair in batch]
    order = episode_order(harness, seen)
    assert sorted(order) == list(range(6)) and order != list(range(6))  # every episode, shuffled

    def again(seed: int, step: int) -> list[int]:
        other = Harness(parts.sampler, parts.algorithm, 6, 5, seed=seed, shuffle_by="episode")
        other.rollouts = lambda: harness.last_graphs  # type: ignore[method-assign]
        return episode_order(other, [pair for batch in other.experience(step) for pair in batch])

    assert again(3, 7) == order  # same run seed and step: same order
    assert again(3, 8) != order
    assert again(4, 7) != order
    assert harness.last_graphs is not None and len(harness.last_graphs) == 6


def test_shuffle_by_example_mixes_episodes(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 6, 5, seed=3, shuffle_by="example")
    seen = [pair for batch in harness.experience(7) for pair in batch]
    with pytest.raises(AssertionError, match="not one episode's"):
        episode_order(harness, seen)


def test_shuffle_by_episode_cuts_batches_of_batch_size(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 3, 4, shuffle_by="episode")
    assert [len(batch) for batch in harness.experience(0)] == [4, 4, 1]  # 9 pairs


def test_shuffle_by_episode_revisits_the_same_batches_in_a_new_order_each_pass(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 8, 2, seed=1, shuffle_by="episode")
    loader = harness.experience(0)
    passes = [[tuple(map(repr, batch)) for batch in loader] for _ in range(3)]
    assert sorted(passes[0]) == sorted(passes[1]) == sorted(passes[2])  # the same batches
    assert passes[1] != passes[0] or passes[2] != passes[0]  # in a new order


def test_shuffle_false_ignores_shuffle_by(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 4, 5, shuffle=False, shuffle_by="episode")
    loader = harness.experience(0)
    assert [pair for batch in loader for pair in batch] == list(parts.algorithm.flatten(harness.last_graphs))


def test_unknown_shuffle_by_is_a_config_error(kit: Kit) -> None:
    parts = kit.parts()
    with pytest.raises(ConfigError, match="shuffle_by must be 'example' or 'episode'"):
        Harness(parts.sampler, parts.algorithm, 2, 2, shuffle_by="tree")  # type: ignore[arg-type]


def test_an_empty_experience_yields_no_batches_and_warns(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    class NoPairs(kit.ToyDPO):  # type: ignore[name-defined,misc]
        def flatten(self, graphs: Any) -> list[Any]:
            return []

    parts = kit.parts(algorithm=NoPairs)
    harness = Harness(parts.sampler, parts.algorithm, 3, 4)
    with caplog.at_level(logging.WARNING):
        assert list(harness.experience(5)) == []
    assert harness.last_metrics["train_examples"] == 0.0
    assert "experience at step 5 produced no training examples" in caplog.text


@pytest.mark.parametrize(("episodes", "batch_size"), [(0, 4), (4, 0), (-1, 4)])
def test_invalid_sizes_are_config_errors(kit: Kit, episodes: int, batch_size: int) -> None:
    parts = kit.parts()
    with pytest.raises(ConfigError, match="must be at least 1"):
        Harness(parts.sampler, parts.algorithm, episodes, batch_size)


def test_loss_returns_the_algorithms_loss_and_logs(kit: Kit) -> None:
    parts = exact(kit)
    harness = Harness(parts.sampler, parts.algorithm, 2, 64)
    (batch,) = list(harness.experience(0))
    loss, logs = harness.loss(batch)
    assert loss.shape == () and loss.requires_grad
    assert set(logs) == {"margin"}


def test_rollout_metrics_count_nonfinite_rewards_and_average_score_parts() -> None:
    graph: Graph[str, str] = Graph(
        "c",
        [
            Node("c", "p", "r", 0.5, scores={"tox": 0.5}),
            Node("c", "q", "r", math.nan, scores={"tox": 0.25}),
            Node("c", "s", "r", 1.0, scores={"tox": 0.75}),
        ],
    )
    metrics = rollout_metrics([graph])
    assert metrics["turns"] == 3.0
    assert metrics["reward/mean"] == 0.75
    assert metrics["reward/min"] == 0.5 and metrics["reward/max"] == 1.0
    assert metrics["reward/nonfinite"] == 1.0
    assert metrics["score/tox"] == 0.5
    assert rollout_metrics([Graph("c")]) == {"episodes": 1.0, "turns": 0.0}
