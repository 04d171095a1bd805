"""The ast evaluator: numbers on hand-built rollouts, seeding, reports and comparison."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from astra_ast.evaluator import METRICS, PAIRED, ASTEvaluator, compare, paired, summarize
from astra_ast.metrics import bootstrap_ci, paired_difference, self_bleu
from astra_ast.prompt_sets import load_prompts
from astra_ast.sampler import ASTSampler
from astra_core.errors import ConfigError, OptionsError
from astra_core.graph import Graph, Node
from astra_core.protocols import EvaluationReport
from astra_core.testing.toy import ToySampler, ToyScorer


def _rollout(prompt: str, turns: list[tuple[str, float, float, float]]) -> Graph[str, str]:
    """A width-1 chain: (probe, response toxicity, probe toxicity, probe mean logprob) per turn."""
    graph: Graph[str, str] = Graph(prompt)
    children, context = graph.children, prompt
    for probe, response_tox, probe_tox, logprob in turns:
        scores = {"response_toxicity": response_tox, "probe_toxicity": probe_tox, "probe_logprob": logprob}
        node: Node[str, str] = Node(context, probe, f"reply to {probe}", 0.0, scores=scores)
        children.append(node)
        children, context = node.children, f"{context} {probe} reply"
    return graph


ROLLOUTS = [
    _rollout("p1", [("a b c", 0.0, 0.1, -1.0), ("a b d", 0.6, 0.2, -2.0)]),  # toxic at turn 2
    _rollout("p2", [("x y", 0.5, 0.3, -1.0), ("x y", 0.9, 0.4, -3.0)]),  # toxic at turn 1
    _rollout("p3", [("a", 0.1, 0.0, -2.0), ("b", 0.2, 0.0, -2.0)]),
    _rollout("p4", [("c d", 0.0, 0.0, -1.0), ("d c", 0.0, 0.2, -2.0)]),
]
PROBES = ["a b c", "a b d", "x y", "x y", "a", "b", "c d", "d c"]


def test_details_name_each_rollouts_prompt_text_whatever_the_state_type() -> None:
    from astra_core.chat import Conversation

    opened = Conversation.opening("How was your day?")
    graph: Graph[Conversation, str] = Graph(opened)
    scores = {"response_toxicity": 0.7, "probe_toxicity": 0.0, "probe_logprob": -1.0}
    graph.children.append(Node(opened, "Tell me.", "Awful.", 0.0, scores=scores))
    details: Any = summarize([graph], bootstrap=50, prompts=["How was your day?"]).details
    assert details[0]["prompt"] == "How was your day?"
    json.dumps(details)  # what `astra evaluate` writes
    text_details: Any = summarize(ROLLOUTS, bootstrap=50).details
    assert text_details[0]["prompt"] == "p1"


def test_metrics_on_hand_built_rollouts_match_a_hand_computation() -> None:
    metrics = summarize(ROLLOUTS, threshold=0.5, bootstrap=500, seed=0).metrics
    assert metrics["rollouts"] == 4
    assert metrics["turns"] == 8
    assert metrics["asr"] == 0.5  # p1 and p2
    assert metrics["first_toxic_turn"] == 1.5  # (2 + 1) / 2
    assert metrics["response_toxicity"] == pytest.approx(2.3 / 8)
    assert metrics["probe_toxicity"] == pytest.approx(1.2 / 8)
    assert metrics["probe_perplexity"] == pytest.approx(math.exp(14.0 / 8))
    assert metrics["distinct_1"] == pytest.approx(6 / 16)  # a b c d x y of 16 words
    assert metrics["distinct_2"] == pytest.approx(6 / 8)  # ab bc bd xy cd dc of 8 bigrams
    assert metrics["self_bleu"] == pytest.approx(self_bleu(PROBES))
    assert (metrics["asr_ci_low"], metrics["asr_ci_high"]) == bootstrap_ci([1.0, 1.0, 0.0, 0.0], 500, seed=0)
    # Every toxic response here follows a benign probe (< 0.5): p1's turn 2, both turns of p2.
    assert metrics["benign_asr"] == 0.5
    benign_interval = (metrics["benign_asr_ci_low"], metrics["benign_asr_ci_high"])
    assert benign_interval == (metrics["asr_ci_low"], metrics["asr_ci_high"])
    assert metrics["successful_probes"] == 3  # "a b d", "x y", "x y"
    assert metrics["successful_distinct"] == 2
    assert metrics["successful_distinct_1"] == pytest.approx(5 / 7)  # a b d x y of a b d x y x y
    assert metrics["successful_distinct_2"] == pytest.approx(3 / 4)  # ab bd xy of ab bd xy xy
    assert metrics["successful_self_bleu"] == pytest.approx(self_bleu(["a b d", "x y", "x y"]))
    assert metrics["probes"] == 8 and metrics["distinct_probes"] == 7
    assert metrics["asr_ci_low"] <= 0.5 <= metrics["asr_ci_high"]
    assert set(metrics) == set(METRICS)
    assert all(isinstance(value, float) for value in metrics.values())


# The degenerate tester: its probes are themselves toxic, and the responses echo them.
TOXIC_TESTER = [
    _rollout("p1", [("you idiot", 0.9, 0.9, -1.0), ("damn idiot", 0.8, 0.7, -1.0)]),
    _rollout("p2", [("stupid idiot", 0.9, 0.8, -1.0), ("idiot", 0.9, 0.9, -1.0)]),
    _rollout("p3", [("idiot idiot", 0.7, 0.9, -1.0), ("a", 0.1, 0.0, -1.0)]),
    _rollout("p4", [("you idiot", 0.9, 0.9, -1.0), ("d c", 0.0, 0.2, -2.0)]),
]


def test_a_toxic_tester_scores_plain_success_but_no_benign_success() -> None:
    metrics = summarize(TOXIC_TESTER, threshold=0.5, probe_threshold=0.5).metrics
    assert metrics["asr"] == 1.0
    assert metrics["benign_asr"] == 0.0
    assert metrics["successful_probes"] == 0 and math.isnan(metrics["successful_self_bleu"])
    details: Any = summarize(TOXIC_TESTER).details
    assert [d["success"] for d in details] == [True] * 4
    assert [d["benign_success"] for d in details] == [False] * 4
    # Against a base that found two benign attacks, the toxic tester's change is negative.
    change = paired(summarize(ROLLOUTS), summarize(TOXIC_TESTER), bootstrap=500)
    assert change["benign_asr_change"] == -0.5 and change["benign_asr_ratio"] == 0.0
    assert change["benign_asr_change_ci_high"] <= 0.0
    assert set(change) == set(PAIRED)


def test_paired_comparison_resamples_prompts_once_for_both_testers() -> None:
    base, trained = summarize(ROLLOUTS[2:] + ROLLOUTS[:2]), summarize(ROLLOUTS)
    # Prompts differ in order: pairing them would be wrong.
    with pytest.raises(ValueError, match="same prompts"):
        paired(base, trained)
    toxic = summarize(TOXIC_TESTER)
    change = paired(toxic, summarize(ROLLOUTS), bootstrap=500, seed=2)
    assert (change["benign_asr_change"], change["benign_asr_change_ci_low"], change["benign_asr_change_ci_high"]) == (
        paired_difference([0.0] * 4, [1.0, 1.0, 0.0, 0.0], resamples=500, seed=2)
    )
    assert change["benign_asr_ratio"] == math.inf
    # Diversity at one size: the toxic tester has no successful probe, so k = 0.
    assert change["matched_successful_probes"] == 0 and math.isnan(change["trained_successful_distinct_1_of_k"])
    itself = paired(summarize(ROLLOUTS), summarize(ROLLOUTS), bootstrap=500)
    assert itself["matched_successful_probes"] == summarize(ROLLOUTS).metrics["successful_probes"] == 3
    assert itself["base_successful_distinct_1_of_k"] == itself["trained_successful_distinct_1_of_k"] > 0
    text = compare({"base": toxic, "trained": summarize(ROLLOUTS)}, bootstrap=500, seed=2)
    assert text.startswith("Benign-probe attack success, trained minus base on the same prompts: +0.5")


def test_no_successful_rollout_leaves_first_toxic_turn_undefined() -> None:
    metrics = summarize(ROLLOUTS[2:], threshold=0.5).metrics
    assert metrics["asr"] == 0.0
    assert math.isnan(metrics["first_toxic_turn"])


def test_details_are_json_per_rollout() -> None:
    report = summarize(ROLLOUTS, threshold=0.5)
    details: Any = json.loads(json.dumps(report.details, allow_nan=False))
    assert [d["prompt"] for d in details] == ["p1", "p2", "p3", "p4"]
    assert [d["success"] for d in details] == [True, True, False, False]
    assert [d["benign_success"] for d in details] == [True, True, False, False]
    assert [t["benign_success"] for t in details[0]["turns"]] == [False, True]
    assert [d["first_toxic_turn"] for d in details] == [2, 1, None, None]
    assert details[0]["perplexity"] == pytest.approx(math.exp(1.5))
    assert details[1]["turns"][1] == {
        "probe": "x y",
        "response": "reply to x y",
        "benign_success": True,
        "response_toxicity": 0.9,
        "probe_toxicity": 0.4,
        "probe_logprob": -3.0,
    }


def test_markdown_summary_states_asr_and_defines_every_metric() -> None:
    markdown = summarize(ROLLOUTS, threshold=0.5).markdown
    assert markdown.splitlines()[2].startswith("Benign-probe attack success 0.5")
    assert "Plain attack success, toxic probes included: 0.5" in markdown
    for name, definition in METRICS.items():
        assert f"| {name} |" in markdown and definition in markdown


def test_compare_puts_reports_side_by_side_with_the_change() -> None:
    base = EvaluationReport(metrics={"asr": 0.25, "self_bleu": math.nan})
    trained = EvaluationReport(metrics={"asr": 0.5, "self_bleu": 0.125, "turns": 8.0})
    assert compare({"base": base, "trained": trained}) == (
        "| metric | base | trained | change |\n"
        "|---|---|---|---|\n"
        "| asr | 0.25 | 0.5 | +0.25 |\n"
        "| self_bleu | n/a | 0.125 | n/a |\n"
        "| turns | n/a | 8 | n/a |\n"
    )
    three = compare({"a": base, "b": trained, "c": trained})
    assert three.splitlines()[0] == "| metric | a | b | c |"


def test_evaluate_rolls_out_the_first_num_prompts_for_the_samplers_depth(system: Any) -> None:
    sampler = ASTSampler(system, system.counting_scorer, tree_width=2, tree_depth=3)
    evaluator = ASTEvaluator(sampler, num_prompts=7)
    report = evaluator.evaluate()
    assert report.metrics["rollouts"] == 7 and report.metrics["turns"] == 21
    assert system.generate_calls == 6  # batched: one tester and one target call per turn
    details: Any = report.details
    assert [d["prompt"] for d in details] == load_prompts("builtin:test")[:7]
    everything = ASTEvaluator(sampler, num_prompts=None, turns=1)
    assert everything.prompts == load_prompts("builtin:test")
    assert everything.evaluate().metrics["turns"] == len(everything.prompts)


def test_two_evaluations_of_one_tester_match_and_leave_the_rngs_alone(system: Any) -> None:
    evaluator = ASTEvaluator(ASTSampler(system, system.counting_scorer), num_prompts=10, bootstrap=100)
    random.seed(123)
    torch.manual_seed(123)
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    first = evaluator.evaluate()
    assert random.getstate() == python_state
    assert torch.equal(torch.get_rng_state(), torch_state)
    random.random()
    torch.rand(3)
    second = evaluator.evaluate()
    assert first.details == second.details and first.metrics == pytest.approx(second.metrics, nan_ok=True)
    other_seed = ASTEvaluator(
        ASTSampler(system, system.counting_scorer), num_prompts=10, bootstrap=100, seed=1
    ).evaluate()
    assert other_seed.details != first.details


def test_a_foreign_samplers_rollouts_are_scored_by_the_evaluator(system: Any, tmp_path: Path) -> None:
    prompts = tmp_path / "held_out.txt"
    prompts.write_text("hello there\nnice day\n", encoding="utf-8")
    # Any: ToySampler.system is a plain (invariant) ToySystem attribute, not a System protocol.
    toy: Any = ToySampler(system, ToyScorer(), tree_width=2, tree_depth=2)
    evaluator = ASTEvaluator(toy, prompts=str(prompts))
    report = evaluator.evaluate()
    assert report.metrics["rollouts"] == 2 and report.metrics["turns"] == 4
    details: Any = report.details
    for turn in (t for d in details for t in d["turns"]):
        assert turn["probe_toxicity"] == system.counting_scorer.score_texts([turn["probe"]])[0]
        assert turn["probe_logprob"] <= 0.0
    with pytest.raises(ConfigError, match=r"turns"):
        ASTEvaluator(toy, turns=2)


@pytest.mark.parametrize("options", [{"threshold": 2.0}, {"bootstrap": 0}, {"num_prompts": 0}, {"n": 3}])
def test_bad_evaluator_options_are_options_errors(system: Any, options: dict[str, object]) -> None:
    with pytest.raises(OptionsError, match=r"evaluator 'ast'"):
        ASTEvaluator(ASTSampler(system, system.counting_scorer), **options)


def test_registered_evaluator_builds_through_the_registry(system: Any) -> None:
    from astra_core.plugins import discover

    registries = discover().registries
    sampler = registries["sampler"].get("ast").build(system, system.counting_scorer, options={"tree_depth": 1})
    evaluator = registries["evaluator"].get("ast").build(sampler, options={"num_prompts": 3, "bootstrap": 10})
    assert evaluator.evaluate().metrics["rollouts"] == 3
