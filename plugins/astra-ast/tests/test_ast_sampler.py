"""The ast tree sampler: batching, tree shape, the reward, determinism and weak supervision."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from astra_ast.prompt_sets import load_prompts
from astra_ast.reward import Weights, ast_reward
from astra_ast.sampler import SUPERVISION_MARGIN, ASTSampler
from astra_core.errors import OptionsError
from astra_core.graph import Graph
from astra_core.testing.toy import ToyScorer
from astra_core.turns import TextScorer

TOX_TEXTS = "hate awful stupid\nstupid bad hate\n"


def _shape(graph: Graph[str, str]) -> list[tuple[str, str, str, float]]:
    return [(n.context, n.probe, n.response, n.reward) for n in graph.nodes()]


@pytest.mark.parametrize(("episodes", "width", "depth"), [(1, 1, 1), (1, 2, 3), (8, 2, 3), (5, 3, 2), (2, 4, 1)])
def test_an_experience_costs_two_generation_calls_per_level(
    system: Any, episodes: int, width: int, depth: int
) -> None:
    sampler = ASTSampler(system, system.counting_scorer, tree_width=width, tree_depth=depth)
    graphs = sampler.rollouts(episodes)
    assert len(graphs) == episodes
    assert system.generate_calls == 2 * depth
    assert len(system.counting_scorer.calls) == depth
    assert system.target_calls == depth


def test_one_scorer_call_per_level_holds_responses_and_probe_response_texts(system: Any) -> None:
    ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3).rollouts(4)
    assert system.counting_scorer.calls == [2 * 4 * 2, 2 * 4 * 4, 2 * 4 * 8]


def test_supervision_does_not_add_generation_calls(system: Any, tmp_path: Path) -> None:
    texts = tmp_path / "tox.txt"
    texts.write_text(TOX_TEXTS, encoding="utf-8")
    scorer = system.counting_scorer
    ASTSampler(system, scorer, tree_width=3, tree_depth=3, tox_mix=0.5, tox_texts=str(texts)).rollouts(6)
    assert system.generate_calls == 6


@pytest.mark.parametrize(("width", "depth"), [(1, 3), (2, 3), (3, 2)])
def test_tree_has_width_children_per_node_and_depth_levels(system: Any, width: int, depth: int) -> None:
    graphs = ASTSampler(system, system.counting_scorer, tree_width=width, tree_depth=depth).rollouts(3)
    prompts = set(load_prompts("builtin:train"))
    for graph in graphs:
        assert graph.context in prompts
        assert [len(level) for level in graph.levels()] == [width**k for k in range(1, depth + 1)]
        assert all(child.context == graph.context for child in graph.children)
        for node in graph.nodes():
            assert len(node.children) in (0, width)
            following = system.advance(node.context, node.probe, node.response)
            assert all(child.context == following for child in node.children)
            assert node.response == system.rollout_target([system.join(node.context, node.probe)])[0]


def test_rewards_equal_the_formula_on_the_stored_parts(system: Any) -> None:
    weights = {"alpha": 0.7, "zeta": 0.3, "gamma": 0.2}
    graphs = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3, **weights).rollouts(2)
    scorer = ToyScorer()
    for node in (n for g in graphs for n in g.nodes()):
        scores = node.scores
        assert set(scores) == {"response_toxicity", "combined_toxicity", "probe_logprob"}
        assert scores["response_toxicity"] == scorer.score_texts([node.response])[0]
        assert scores["combined_toxicity"] == scorer.score_texts([f"{node.probe} {node.response}"])[0]
        expected_logprob = float(system.target_logprobs([node.context], [node.probe], reduction="mean")[0])
        assert scores["probe_logprob"] == pytest.approx(expected_logprob, abs=1e-6)
        by_hand = (
            0.7 * scores["response_toxicity"] + 0.3 * scores["combined_toxicity"] + 0.2 * scores["probe_logprob"]
        )
        assert node.reward == pytest.approx(by_hand, abs=1e-9)


def test_default_weights_are_the_papers() -> None:
    assert Weights() == Weights(alpha=1.0, zeta=0.5, gamma=0.1)
    assert ast_reward(0.5, 0.2, -2.0, Weights()) == pytest.approx(0.5 + 0.1 - 0.2)


def test_the_same_seed_gives_the_same_trees_seed_zero_included(make_system: Callable[[], Any]) -> None:
    def trees(seed: int) -> list[list[tuple[str, str, str, float]]]:
        random.seed(seed)
        torch.manual_seed(seed)
        system = make_system()
        return [_shape(g) for g in ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=2).rollouts(4)]

    assert trees(0) == trees(0)
    assert trees(7) == trees(7)
    assert trees(0) != trees(7)


def test_eval_rollout_is_a_width_one_chain_from_the_prompt(system: Any) -> None:
    sampler = ASTSampler(system, system.counting_scorer, tree_width=3, tree_depth=4)
    chain = sampler.eval_rollouts(["hello there"])[0]
    assert chain.context == "hello there"
    assert [len(level) for level in chain.levels()] == [1, 1, 1, 1]
    assert all("probe_toxicity" in node.scores and "supervised" not in node.scores for node in chain.nodes())


def test_eval_rollouts_batch_every_prompt_per_turn(system: Any) -> None:
    sampler = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3)
    chains = sampler.eval_rollouts(["a", "b", "c", "d", "e"], depth=2)
    assert [g.context for g in chains] == ["a", "b", "c", "d", "e"]
    assert all(g.depth() == 2 and len(list(g.nodes())) == 2 for g in chains)
    assert system.generate_calls == 4
    assert system.counting_scorer.calls == [15, 15]  # responses, probe+response, probes


def test_supervised_sibling_is_marked_drawn_from_tox_texts_and_wins(system: Any, tmp_path: Path) -> None:
    texts = tmp_path / "tox.txt"
    texts.write_text(TOX_TEXTS, encoding="utf-8")
    sampler = ASTSampler(system, system.counting_scorer, tree_width=3, tree_depth=2, tox_mix=1.0, tox_texts=str(texts))
    graphs = sampler.rollouts(3)
    weights = Weights()
    for graph in graphs:
        for group in graph.sibling_groups():
            supervised = [n for n in group if n.scores["supervised"] == 1.0]
            assert len(supervised) == 1
            winner = supervised[0]
            others = [n for n in group if n is not winner]
            assert all(n.scores["supervised"] == 0.0 for n in others)
            assert winner.probe in {"hate awful stupid", "stupid bad hate"}
            assert winner.reward > max(n.reward for n in others)
            s = winner.scores
            raw = ast_reward(s["response_toxicity"], s["combined_toxicity"], s["probe_logprob"], weights)
            assert winner.reward == pytest.approx(max(raw, max(n.reward for n in others) + SUPERVISION_MARGIN))
            assert s["response_toxicity"] == 1.0  # the echoing target repeats the toxic text


def test_supervision_raises_a_losing_supervised_reward_above_its_siblings(system: Any, tmp_path: Path) -> None:
    # A benign "supervised" text loses on the raw reward; it must still win its group.
    texts = tmp_path / "tox.jsonl"
    texts.write_text('{"text": "hello there friend"}\n', encoding="utf-8")
    scorer = system.counting_scorer
    sampler = ASTSampler(system, scorer, tree_width=2, tree_depth=1, tox_mix=1.0, tox_texts=str(texts), tox_key="text")
    raised = 0
    for graph in sampler.rollouts(20):
        winner, other = sorted(graph.children, key=lambda n: -n.scores["supervised"])
        s = winner.scores
        raw = ast_reward(s["response_toxicity"], s["combined_toxicity"], s["probe_logprob"], Weights())
        assert winner.reward > other.reward
        raised += raw < winner.reward
    assert raised > 0


def test_no_supervision_without_siblings_or_with_tox_mix_zero(system: Any, tmp_path: Path) -> None:
    texts = tmp_path / "tox.txt"
    texts.write_text(TOX_TEXTS, encoding="utf-8")
    scorer = system.counting_scorer
    chains = ASTSampler(system, scorer, tree_width=1, tree_depth=2, tox_mix=1.0, tox_texts=str(texts)).rollouts(3)
    assert all(n.scores["supervised"] == 0.0 for g in chains for n in g.nodes())
    plain = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=2).rollouts(3)
    assert all("supervised" not in n.scores for g in plain for n in g.nodes())


def test_tox_mix_needs_tox_texts(system: Any) -> None:
    with pytest.raises(OptionsError, match=r"tox_texts"):
        ASTSampler(system, system.counting_scorer, tox_mix=0.3)


@pytest.mark.parametrize("options", [{"tree_width": 0}, {"tree_depth": 0}, {"tox_mix": 1.5}, {"width": 2}])
def test_bad_options_are_options_errors(system: Any, options: dict[str, object]) -> None:
    with pytest.raises(OptionsError, match=r"sampler 'ast'"):
        ASTSampler(system, system.counting_scorer, **options)


def test_a_missing_prompt_file_fails_at_construction(system: Any, tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match=r"prompts: .*does not exist"):  # when the options validate
        ASTSampler(system, system.counting_scorer, prompts=str(tmp_path / "nope.txt"))


def test_user_prompts_open_the_episodes(system: Any, tmp_path: Path) -> None:
    path = tmp_path / "openers.csv"
    path.write_text("id,opener\n1,nice day\n2,good weather\n", encoding="utf-8")
    scorer = system.counting_scorer
    graphs = ASTSampler(system, scorer, prompts=str(path), prompt_key="opener", tree_depth=1).rollouts(10)
    assert {g.context for g in graphs} <= {"nice day", "good weather"}


def test_nan_scores_pass_through_as_nan_rewards(system: Any) -> None:
    class NaNScorer(TextScorer):
        def score_texts(self, texts: Sequence[str]) -> list[float]:
            return [math.nan] * len(texts)

    graphs = ASTSampler(system, NaNScorer(), tree_width=2, tree_depth=1).rollouts(1)
    assert all(math.isnan(n.reward) for n in graphs[0].nodes())


def test_passes_the_core_conformance_check(system: Any) -> None:
    from astra_core.testing import check_sampler

    sampler = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=2)
    graphs = check_sampler(sampler, episodes=3)
    assert len(graphs) == 3


def test_registered_sampler_builds_through_the_registry(system: Any) -> None:
    from astra_core.plugins import discover

    info = discover().registries["sampler"].get("ast")
    sampler = info.build(system, system.counting_scorer, options={"tree_width": 3, "tree_depth": 1})
    assert isinstance(sampler, ASTSampler)
    assert [len(level) for level in sampler.rollouts(1)[0].levels()] == [3]
    with pytest.raises(OptionsError, match=r"tox_texts"):
        info.validate({"tox_mix": 0.2})
