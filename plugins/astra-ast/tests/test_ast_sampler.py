"""The ast tree sampler: batching, tree shape, the reward, determinism and weak supervision."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from astra_ast.options import PRESETS, ASTSamplerOptions
from astra_ast.prompt_sets import load_prompts
from astra_ast.reward import NoveltyMemory, Weights, ast_reward, score_turns
from astra_ast.sampler import SUPERVISION_MARGIN, ASTSampler
from astra_core.errors import OptionsError
from astra_core.graph import Graph
from astra_core.testing.toy import ToyScorer
from astra_core.turns import TextScorer

TOX_TEXTS = "hate awful stupid\nstupid bad hate\n"


def _raw(sampler: ASTSampler, s: dict[str, float]) -> float:
    """The reward of a node's stored parts under the sampler's weights, before supervision."""
    parts = (s["response_toxicity"], s["combined_toxicity"], s["probe_logprob"], sampler.weights)
    return ast_reward(*parts, s.get("probe_toxicity", 0.0), s.get("novelty", 0.0))


def _shape(graph: Graph[str, str]) -> list[tuple[str, str, str, float]]:
    return [(n.context, n.probe, n.response, n.reward) for n in graph.nodes()]


@pytest.mark.parametrize(("episodes", "width", "depth"), [(1, 1, 1), (1, 2, 3), (8, 2, 3), (5, 3, 2), (2, 4, 1)])
def test_an_experience_costs_two_generation_calls_per_level(system: Any, episodes: int, width: int, depth: int) -> None:
    sampler = ASTSampler(system, system.counting_scorer, tree_width=width, tree_depth=depth, reward="astprompter")
    graphs = sampler.rollouts(episodes)
    assert len(graphs) == episodes
    assert system.generate_calls == 2 * depth
    assert len(system.counting_scorer.calls) == depth
    assert system.target_calls == depth


def test_one_scorer_call_per_level_holds_responses_and_probe_response_texts(system: Any) -> None:
    ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3, reward="astprompter").rollouts(4)
    assert system.counting_scorer.calls == [2 * 4 * 2, 2 * 4 * 4, 2 * 4 * 8]


def test_a_reward_that_reads_probe_toxicity_adds_the_probes_to_the_same_call(system: Any) -> None:
    ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3).rollouts(
        4
    )  # the benign preset penalises toxic probes
    assert system.counting_scorer.calls == [3 * 4 * 2, 3 * 4 * 4, 3 * 4 * 8]


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
    graphs = ASTSampler(
        system, system.counting_scorer, tree_width=2, tree_depth=3, reward="astprompter", **weights
    ).rollouts(2)
    scorer = ToyScorer()
    for node in (n for g in graphs for n in g.nodes()):
        scores = node.scores
        assert set(scores) == {"response_toxicity", "combined_toxicity", "probe_logprob"}
        assert scores["response_toxicity"] == scorer.score_texts([node.response])[0]
        assert scores["combined_toxicity"] == scorer.score_texts([f"{node.probe} {node.response}"])[0]
        expected_logprob = float(system.target_logprobs([node.context], [node.probe], reduction="mean")[0])
        assert scores["probe_logprob"] == pytest.approx(expected_logprob, abs=1e-6)
        by_hand = 0.7 * scores["response_toxicity"] + 0.3 * scores["combined_toxicity"] + 0.2 * scores["probe_logprob"]
        assert node.reward == pytest.approx(by_hand, abs=1e-9)


class _WithoutTurnText:
    """A system that does not say how a turn reads as one text (no ``turn_text``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "turn_text":
            raise AttributeError(name)
        return getattr(self.inner, name)


def test_the_combined_term_reads_the_systems_turn_text_else_two_lines(system: Any) -> None:
    class Recording(TextScorer):
        def __init__(self) -> None:
            self.texts: list[str] = []

        def score_texts(self, texts: Sequence[str]) -> list[float]:
            self.texts.extend(texts)
            return [0.0] * len(texts)

    contexts, probes, responses = ["hello", "nice day"], ["hate stupid bad", "ok good yes"], ["fine", "bad day"]
    joined, plain = Recording(), Recording()
    score_turns(system, joined, contexts, probes, responses, Weights())
    score_turns(_WithoutTurnText(system), plain, contexts, probes, responses, Weights())
    assert joined.texts[2:4] == ["hate stupid bad fine", "ok good yes bad day"]  # the toy system joins with a space
    assert plain.texts[2:4] == ["hate stupid bad\nfine", "ok good yes\nbad day"]


def test_full_reward_penalises_toxic_probes_gates_the_combined_term_and_pays_novelty(system: Any) -> None:
    options = {
        "alpha": 0.7,
        "zeta": 0.3,
        "gamma": 0.2,
        "eta": 0.9,
        "gate": "combined",
        "nu": 0.4,
        "repeat_discount": 0.5,
    }
    sampler = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3, novelty_order=2, **options)
    graphs = sampler.rollouts(3)
    scorer = ToyScorer()
    for node in (n for g in graphs for n in g.nodes()):
        s = node.scores
        assert set(s) == {"response_toxicity", "combined_toxicity", "probe_logprob", "probe_toxicity", "novelty"}
        assert s["probe_toxicity"] == scorer.score_texts([node.probe])[0]
        assert 0.0 <= s["novelty"] <= 1.0
        gate = 1.0 if s["probe_toxicity"] < 0.5 else 0.0  # gate "combined": the zeta term only
        discount = 1.0 - 0.5 * (1.0 - s["novelty"])
        by_hand = (
            discount * (0.7 * s["response_toxicity"] + 0.3 * gate * s["combined_toxicity"])
            - 0.9 * s["probe_toxicity"]
            + 0.2 * s["probe_logprob"]
            + 0.4 * s["novelty"]
        )
        assert node.reward == pytest.approx(by_hand, abs=1e-9)


def test_a_repeated_probe_earns_a_discounted_toxicity_reward(system: Any) -> None:
    options = {"alpha": 0.7, "zeta": 0.3, "gamma": 0.2, "eta": 0.0, "gate": "none", "nu": 0.0}
    sampler = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=2, repeat_discount=0.6, **options)
    graphs = sampler.rollouts(3)
    assert sampler.state_dict()["novelty_memory"]["probes"]  # the discount alone keeps the memory
    nodes = [n for g in graphs for n in g.nodes()]
    assert any(n.scores["novelty"] < 1.0 for n in nodes)  # some probes repeat earlier ones
    for node in nodes:
        s = node.scores
        discount = 1.0 - 0.6 * (1.0 - s["novelty"])
        by_hand = discount * (0.7 * s["response_toxicity"] + 0.3 * s["combined_toxicity"]) + 0.2 * s["probe_logprob"]
        assert node.reward == pytest.approx(by_hand, abs=1e-9)
    # A repeat keeps 1 - repeat_discount of what a new probe drawing the same response earns.
    repeats = Weights(alpha=1.0, zeta=0.0, gamma=0.0, repeat_discount=0.6)
    assert ast_reward(1.0, 0.0, 0.0, repeats, novelty=0.0) == pytest.approx(0.4)
    assert ast_reward(1.0, 0.0, 0.0, repeats, novelty=1.0) == pytest.approx(1.0)
    assert ast_reward(0.0, 0.0, 0.0, repeats, novelty=1.0) == 0.0  # novelty alone earns nothing


def test_a_toxic_probe_loses_its_combined_term_when_gated() -> None:
    gated, plain, both = Weights(gate="combined"), Weights(), Weights(gate="all")
    assert ast_reward(0.0, 1.0, 0.0, gated, probe_toxicity=0.9) == 0.0
    assert ast_reward(0.0, 1.0, 0.0, gated, probe_toxicity=0.1) == 0.5
    assert ast_reward(0.0, 1.0, 0.0, plain, probe_toxicity=0.9) == 0.5
    assert ast_reward(1.0, 0.0, 0.0, gated, probe_toxicity=0.9) == 1.0  # the response term stays
    assert ast_reward(1.0, 1.0, 0.0, both, probe_toxicity=0.9) == 0.0  # both toxicity terms gated
    assert ast_reward(1.0, 1.0, 0.0, both, probe_toxicity=0.49) == 1.5
    # With the penalty a toxic probe is worth less than a benign one drawing the same response.
    benign = Weights(eta=1.0, gate="combined")
    assert ast_reward(1.0, 1.0, -1.0, benign, probe_toxicity=0.9) < ast_reward(1.0, 0.6, -1.0, benign, 0.1)


def test_presets_name_whole_reward_forms_and_explicit_weights_override_them() -> None:
    paper = ASTSamplerOptions(reward="astprompter")
    form = (paper.alpha, paper.zeta, paper.gamma, paper.eta, paper.gate, paper.nu, paper.repeat_discount)
    assert form == (1.0, 0.5, 0.1, 0.0, "none", 0.0, 0.0)
    assert Weights() == Weights(alpha=1.0, zeta=0.5, gamma=0.1)  # the dataclass default is the paper's form
    default = ASTSamplerOptions()
    assert default.reward == "benign"
    assert {k: getattr(default, k) for k in PRESETS["benign"]} == PRESETS["benign"]
    assert ASTSamplerOptions(reward="astprompter", eta=0.3).eta == 0.3
    assert ASTSamplerOptions(reward="astprompter", eta=0.3).nu == 0.0


def test_novelty_is_the_unseen_fraction_of_ngrams_against_a_bounded_memory() -> None:
    memory = NoveltyMemory(size=2, order=2)
    assert memory.novelty("what the heck") == 1.0  # empty memory
    assert memory.novelty("") == 0.0
    memory.add(["what the heck"])
    assert memory.novelty("what the heck") == 0.0
    # Unigrams: what, the seen of what, the, hell -> 1/3 new; bigrams: "the hell" new of 2 -> 1/2.
    assert memory.novelty("What the hell") == pytest.approx((1 / 3 + 1 / 2) / 2)
    memory.add(["a b", "c d"])  # the first probe falls out of the memory of 2
    assert memory.state_dict() == {"probes": ["a b", "c d"]}
    assert memory.novelty("what the heck") == 1.0
    copy = NoveltyMemory(size=2, order=2)
    copy.load_state_dict(json.loads(json.dumps(memory.state_dict())))
    # a, b, c all seen (0 of 3 new); bigrams "a b" seen, "b c" new (1 of 2).
    assert copy.novelty("a b c") == memory.novelty("a b c") == pytest.approx((0 + 1 / 2) / 2)


def test_training_grows_the_memory_after_each_level_and_evaluation_leaves_it(system: Any) -> None:
    sampler = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=2, nu=0.5, novelty_memory=1000)
    graphs = sampler.rollouts(2)
    probes = [n.probe for depth in range(2) for g in graphs for n in list(g.levels())[depth]]  # level by level
    assert sampler.state_dict()["novelty_memory"]["probes"] == probes
    for graph in graphs:  # siblings are judged against the same memory: the first level's saw none
        assert all(n.scores["novelty"] == (1.0 if n.probe.strip() else 0.0) for n in graph.children)
    before = sampler.state_dict()
    sampler.eval_rollouts(["hello there"], depth=2)
    assert sampler.state_dict() == before


def test_a_restored_sampler_state_continues_exactly(make_system: Callable[[], Any]) -> None:
    def run(restore: bool) -> list[list[tuple[str, str, str, float]]]:
        random.seed(3)
        torch.manual_seed(3)

        def fresh() -> ASTSampler:
            system = make_system()
            return ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=2, nu=0.5, novelty_memory=7)

        first = fresh()
        first.rollouts(3)
        state = json.loads(json.dumps(first.state_dict()))
        sampler = fresh() if restore else first
        if restore:
            sampler.load_state_dict(state)
        return [_shape(g) for g in sampler.rollouts(3)]

    assert run(restore=True) == run(restore=False)


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
            raw = _raw(sampler, s)
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
        raw = _raw(sampler, s)
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
