"""Turns and text scorers: what a scorer judges, and the one-line adapter for text scorers."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from astra_core import Scorer, TextScorer, Turn, text_scorer
from astra_core.testing import check_scorer


def test_a_turns_text_is_its_response_or_the_probe_scored_alone() -> None:
    assert Turn("context", "probe", "response").text() == "response"
    assert Turn("context", "probe").text() == "probe"


def test_text_scorer_applies_the_function_to_each_turns_text_in_one_call() -> None:
    calls: list[list[str]] = []

    def shouting(texts: list[str]) -> list[float]:
        calls.append(texts)
        return [float(text.isupper()) for text in texts]

    scorer: Scorer[str, str] = text_scorer(shouting)
    assert scorer.reads == "text"
    assert scorer.score([Turn("hi", "say it", "NO"), Turn("hi", "QUIET"), Turn("", "x", "calm")]) == [1.0, 1.0, 0.0]
    assert calls == [["NO", "QUIET", "calm"]]


def test_a_text_scorer_passes_the_conformance_check() -> None:
    scorer = text_scorer(lambda texts: [min(1.0, len(text) / 10) for text in texts])
    assert check_scorer(scorer, ["short", Turn("", "", "a longer answer")]) == [0.5, 1.0]


def test_a_text_scorer_without_score_texts_says_what_is_missing() -> None:
    class Forgot(TextScorer):
        pass

    with pytest.raises(NotImplementedError, match=r"Forgot must define score_texts\(texts\)"):
        Forgot().score([Turn("", "p", "r")])


def test_a_subclass_writes_only_score_texts() -> None:
    class Upper(TextScorer):
        def score_texts(self, texts: Sequence[str]) -> list[float]:
            return [float(text.isupper()) for text in texts]

    assert Upper().score([Turn("", "", "A"), Turn("", "b")]) == [1.0, 0.0]

