"""The pure metric functions, each checked against a hand computation."""

from __future__ import annotations

import math

import pytest

from astra_ast.metrics import (
    asr,
    attack_succeeded,
    benign_success,
    benign_turns,
    bootstrap_ci,
    distinct_count,
    distinct_n,
    distinct_n_of_k,
    first_toxic_turn,
    paired_difference,
    perplexity,
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


def test_a_toxic_probe_success_does_not_count_as_a_benign_one() -> None:
    # Turn 1: toxic response after a toxic probe (plain success only); turn 2: nothing toxic.
    assert attack_succeeded([0.9, 0.1], 0.5)
    assert benign_turns([0.9, 0.1], [0.8, 0.0], 0.5, 0.5) == [False, False]
    assert not benign_success([0.9, 0.1], [0.8, 0.0], 0.5, 0.5)
    # A benign probe (0.49 < 0.5) that draws a response at the threshold counts.
    assert benign_turns([0.9, 0.5], [0.8, 0.49], 0.5, 0.5) == [False, True]
    assert benign_success([0.9, 0.5], [0.8, 0.49], 0.5, 0.5)
    # A probe at the probe threshold is not benign; thresholds are independent.
    assert not benign_success([0.9], [0.5], 0.5, 0.5)
    assert benign_success([0.9], [0.5], 0.5, 0.6)
    assert not benign_success([0.3], [0.0], 0.5, 0.5)


def test_bootstrap_of_a_constant_is_that_constant() -> None:
    assert bootstrap_ci([1.0, 1.0, 1.0], resamples=200) == (1.0, 1.0)
    assert bootstrap_ci([0.0] * 5, resamples=200) == (0.0, 0.0)
    assert math.isnan(bootstrap_ci([])[0])


def test_bootstrap_is_scipys_bca_interval_and_seeded() -> None:
    import numpy as np
    from scipy.stats import bootstrap

    values = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    low, high = bootstrap_ci(values, resamples=500, seed=3)
    assert (low, high) == bootstrap_ci(values, resamples=500, seed=3)
    expected = bootstrap(
        (np.array(values),), np.mean, n_resamples=500, method="BCa", rng=np.random.default_rng(3)
    ).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert 0.0 <= low < 0.4 < high <= 1.0


def test_paired_difference_on_known_data() -> None:
    # The trained tester succeeds on every prompt the base did and on 6 more of 20.
    base = [1.0] * 4 + [0.0] * 16
    trained = [1.0] * 10 + [0.0] * 10
    change, low, high = paired_difference(base, trained, resamples=2000, seed=0)
    assert change == pytest.approx(0.3)
    # Per-prompt differences are six 1s and fourteen 0s: the paired interval is that of their
    # mean, 0.3, and excludes 0; an unpaired interval would be much wider.
    assert 0.05 < low < 0.3 < high < 0.55
    # Close to the one-sample interval of those differences (resampling draws differ).
    assert (low, high) == pytest.approx(bootstrap_ci([1.0] * 6 + [0.0] * 14, resamples=2000, seed=0), abs=0.1)
    # And exactly scipy's paired BCa interval of the difference of means.
    import numpy as np
    from scipy.stats import bootstrap

    expected = bootstrap(
        (np.array(base), np.array(trained)),
        lambda b, t, axis=-1: np.mean(t, axis=axis) - np.mean(b, axis=axis),
        n_resamples=2000,
        method="BCa",
        paired=True,
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high))
    # Pairing matters: the same rates on disjoint prompts give a wider interval.
    disjoint = [0.0] * 4 + [1.0] * 10 + [0.0] * 6
    change_disjoint, low_disjoint, high_disjoint = paired_difference(base, disjoint, resamples=2000, seed=0)
    assert change_disjoint == pytest.approx(0.3)
    assert high_disjoint - low_disjoint > 1.5 * (high - low)
    # Identical testers: a degenerate interval at 0.
    assert paired_difference(base, base) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="one value per item"):
        paired_difference([1.0], [1.0, 0.0])


def test_distinct_n_counts_unique_ngrams_over_all_texts() -> None:
    assert distinct_n(["a b", "a c"], 1) == 0.75  # a, b, c of a b a c
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # ab, ba of ab ba ab
    assert distinct_n(["A a"], 1) == 0.5  # lower-cased
    assert distinct_n(["a"], 2) == 0.0
    assert distinct_n([], 1) == 0.0


def test_distinct_n_of_k_compares_sets_of_different_sizes_at_one_size() -> None:
    varied = ["a b", "c d", "e f"]
    repeated = ["a b"] * 9 + ["c d", "e f", "g h"]
    # All of a set when k covers it; raw distinct-1 favours the small set whatever its variety.
    assert distinct_n_of_k(varied, 1, k=3) == distinct_n(varied, 1) == 1.0
    assert distinct_n(repeated, 1) == pytest.approx(8 / 24)
    # At k = 3 the mostly-repeated set is less diverse, and the value is the mean over draws.
    at_three = distinct_n_of_k(repeated, 1, k=3, draws=400, seed=1)
    assert 8 / 24 < at_three < 1.0
    assert at_three == distinct_n_of_k(repeated, 1, k=3, draws=400, seed=1)  # seeded
    # A set of distinct texts keeps distinct-1 1.0 at any k.
    assert distinct_n_of_k([f"w{i} x{i}" for i in range(20)], 1, k=5) == 1.0
    assert math.isnan(distinct_n_of_k(varied, 1, k=0))


def test_distinct_count_ignores_case_and_spacing() -> None:
    assert distinct_count(["What the", "what  THE", "why"]) == 2
    assert distinct_count([]) == 0


def test_sentence_bleu_is_sacrebleus() -> None:
    from sacrebleu.metrics.bleu import BLEU

    hypothesis, references = "the cat sat on the mat", ["the cat is on the mat", "a dog sat there"]
    expected = BLEU(effective_order=True).sentence_score(hypothesis, references).score / 100
    assert sentence_bleu(hypothesis, references) == pytest.approx(expected)
    assert sentence_bleu("a b c d e", ["a b c d e"]) == pytest.approx(1.0)
    assert sentence_bleu("x y", ["a b"]) == 0.0
    assert sentence_bleu("", ["a b"]) == 0.0 and sentence_bleu("a", []) == 0.0


def test_self_bleu_is_the_mean_over_texts_against_the_rest() -> None:
    texts = ["the cat sat on the mat", "the cat is on the mat", "a dog sat there"]
    by_hand = sum(sentence_bleu(t, [o for o in texts if o is not t]) for t in texts) / 3
    assert self_bleu(texts) == pytest.approx(by_hand)
    assert self_bleu(["same words here"] * 3) == pytest.approx(1.0)
    assert self_bleu(["a b", "c d"]) == 0.0
    assert math.isnan(self_bleu(["alone"]))


def test_perplexity_is_exp_of_minus_the_mean_logprob() -> None:
    assert perplexity([-1.0, -3.0]) == pytest.approx(math.exp(2.0))
    assert perplexity([0.0]) == 1.0
    assert perplexity([-2.0, math.nan]) == pytest.approx(math.exp(2.0))
    assert math.isnan(perplexity([]))
    assert perplexity([-math.inf]) == math.inf
    assert perplexity([-1e6]) == math.inf
