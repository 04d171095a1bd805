"""The example plugin's own tests: the conformance kit on every component, as an author would write."""

from __future__ import annotations

import pytest

from astra_core import Graph, Node, OptionsError
from astra_core.plugins import discover
from astra_core.registry import ComponentKind
from astra_core.testing import check_algorithm, check_optimizer, check_sampler
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem
from astra_example_plugin.chain import ChainSampler
from astra_example_plugin.reinforce import Reinforce
from astra_example_plugin.signsgd import SignSGD


@pytest.fixture
def system() -> ToySystem:
    return ToySystem(seed=0)


def test_reinforce_passes_the_algorithm_checks(system: ToySystem) -> None:
    logs = check_algorithm(Reinforce(system), ToySampler(system, ToyScorer(), tree_width=2, tree_depth=2))
    assert set(logs) == {"loss", "advantage/mean", "logprob/mean"}


def test_reinforce_passes_the_checks_on_chains_too(system: ToySystem) -> None:
    chains = ChainSampler(system, ToyScorer(), openers=["hello there"])
    check_algorithm(Reinforce(system, discount=0.5, baseline="none"), chains)


def test_chain_sampler_passes_the_sampler_checks(system: ToySystem) -> None:
    graphs = check_sampler(ChainSampler(system, ToyScorer(), depth=3, openers=["hello there", "nice day"]), episodes=3)
    assert all([len(level) for level in g.levels()] == [1, 1, 1] for g in graphs)


def test_signsgd_passes_the_optimizer_checks_by_name() -> None:
    check_optimizer("example-signsgd")  # looked up among the installed plugins


def test_signsgd_passes_the_optimizer_checks_with_weight_decay() -> None:
    check_optimizer(SignSGD, {"weight_decay": 0.1})


def test_returns_discount_the_mean_of_the_children() -> None:
    # root turn (reward 1) has two children with rewards 0 and 1: return = 1 + 0.5 * mean(0, 1)
    leaves = [Node("c2", "a", "r", 0.0), Node("c2", "b", "r", 1.0)]
    graph: Graph[str, str] = Graph("c", [Node("c", "p", "r", 1.0, leaves)])
    turns = Reinforce(ToySystem(), discount=0.5, baseline="none").flatten([graph])
    assert [t.advantage for t in turns] == [1.25, 0.0, 1.0]


def test_mean_baseline_centres_the_advantages() -> None:
    graph: Graph[str, str] = Graph("c", [Node("c", "p", "r", 1.0), Node("c", "q", "r", 0.0)])
    turns = Reinforce(ToySystem()).flatten([graph])
    assert [t.advantage for t in turns] == [0.5, -0.5]


def test_the_installed_plugin_registers_every_component() -> None:
    found = discover()
    assert [p.status for p in found.plugins if p.name == "example"] == ["loaded"]
    components: list[tuple[ComponentKind, str]] = [
        ("algorithm", "example-reinforce"),
        ("sampler", "example-chain"),
        ("optimizer", "example-signsgd"),
    ]
    for kind, name in components:
        assert found.registries.get(kind, name).provider.distribution == "astra-example-plugin"


def test_options_are_validated_by_name() -> None:
    registries = discover().registries
    with pytest.raises(OptionsError, match=r"example-chain.*depth"):
        registries.get("sampler", "example-chain").validate({"depth": 0})
    with pytest.raises(OptionsError, match=r"example-reinforce.*discont"):
        registries.get("algorithm", "example-reinforce").validate({"discont": 0.9})
