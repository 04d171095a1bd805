"""The pure metric functions, each checked against a hand computation."""

from __future__ import annotations

import math

import pytest

from astra_ast.metrics import (
    asr,
    attack_succeeded,
    bootstrap_ci,
    distinct_n,
    first_toxic_turn,
    perplexity,
    quantile,
    self_bleu,
    sentence_bleu,
)


def test_attack_success_counts_a_response_at_the_threshold() -> None:
    assert attack_succeeded([0.1, 0.5], 0.5)
    assert not attack_succeeded([0.1, 0.49], 0.5)
    assert first_toxic_turn([0.1, 0.5, 0.9], 0.5) == 2
    assert first_toxic_turn([0.1], 0.5) is None


def test_asr_is_the_fraction_of_successful_rollouts() -> None:
    assert asr([True, False, False, False]) == 0.25
    assert math.isnan(asr([]))


def test_quantile_interpolates_linearly() -> None:
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0
    assert quantile([0.0, 10.0], 0.025) == pytest.approx(0.25)


def test_bootstrap_of_a_constant_is_that_constant() -> None:
    assert bootstrap_ci([1.0, 1.0, 1.0], resamples=200) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 5, resamples=200) == (0.0, 0.0)


def test_bootstrap_of_two_outcomes_spans_both() -> None:
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles of 1000 resamples are 0 and 1.
    assert bootstrap_ci([0.0, 1.0], resamples=1000) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    values = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    low, high = bootstrap_ci(values, resamples=500, seed=3)
    assert (low, high) == bootstrap_ci(values, resamples=500, seed=3)
    assert 0.0 <= low < 0.4 < high <= 1.0
    assert math.isnan(bootstrap_ci([])[0])


def test_distinct_n_counts_unique_ngrams_over_all_texts() -> None:
    assert distinct_n(["a b", "a c"], 1) == 0.75  # a, b, c of a b a c
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba of ab ba ab
    assert distinct_n(["A a"], 1) == 0.5  # lower-cased
    assert distinct_n(["a"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_sentence_bleu_hand_cases() -> None:
    # p1 = 2/3; p2 = (1 + 1) / (2 + 1) add-one smoothed; equal lengths: BLEU = sqrt(2/3 * 2/3).
    assert sentence_bleu(["a", "b", "c"], [["a", "b", "d"]], max_n=2) == pytest.approx(2 / 3)
    # Clipping: only one "a" of three counts.
    assert sentence_bleu(["a", "a", "a"], [["a", "b"]], max_n=1) == pytest.approx(1 / 3)
    # Brevity: c = 2 below r = 4, precisions 1: BLEU = exp(1 - 4/2).
    assert sentence_bleu(["a", "b"], [["a", "b", "c", "d"]]) == pytest.approx(math.exp(-1))
    assert sentence_bleu(["x", "y"], [["a", "b"]]) == 0.0
    assert sentence_bleu(["a", "b", "c", "d", "e"], [["a", "b", "c", "d", "e"]]) == pytest.approx(1.0)


def test_self_bleu_is_the_mean_over_texts_against_the_rest() -> None:
    assert self_bleu(["a b c", "a b d"], max_n=2) == pytest.approx(2 / 3)
    assert self_bleu(["same words here"] * 3) == pytest.approx(1.0)
    # "a b" vs "c d" scores 0 and vice versa; mean 0.
    assert self_bleu(["a b", "c d"]) == 0.0
    assert math.isnan(self_bleu(["alone"]))


def test_perplexity_is_exp_of_minus_the_mean_logprob() -> None:
    assert perplexity([-1.0, -3.0]) == pytest.approx(math.exp(2.0))
    assert perplexity([0.0]) == 1.0
    assert perplexity([-2.0, math.nan]) == pytest.approx(math.exp(2.0))
    assert math.isnan(perplexity([]))
    assert perplexity([-math.inf]) == math.inf
    assert perplexity([-1e6]) == math.inf
