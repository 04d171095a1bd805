"""The scorer contract, checked at run time by astra_core.scoring.checked_scores."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from astra_core.scoring import ScorerError, checked_scores
from astra_core.testing import check_scorer
from astra_core.turns import TextScorer, Turn
from astra_scorers.keyword import KeywordScorer
from astra_scorers.profanity import ProfanityScorer

ITEMS = ["hello there", "you stupid idiot", "", "what the fuck"]
TURNS = [Turn("", "", text) for text in ITEMS]  # each text as a response to score


class DropsOneScore(TextScorer):
    """Broken on purpose: returns one score too few."""

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [0.0] * (len(texts) - 1)


class ScoresAboveOne(TextScorer):
    """Broken on purpose: returns 1.5."""

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return [1.5 for _ in texts]


def test_a_scorer_returning_too_few_scores_is_caught_by_name() -> None:
    with pytest.raises(ScorerError, match=r"scorer DropsOneScore returned 3 scores for 4 inputs"):
        checked_scores(DropsOneScore(), TURNS)


def test_a_scorer_returning_a_value_above_one_is_caught_by_name() -> None:
    with pytest.raises(ScorerError, match=r"scorer ScoresAboveOne returned 1.5 at index 0.*\[0, 1\]"):
        checked_scores(ScoresAboveOne(), TURNS)


@pytest.mark.parametrize("mode", ["any", "fraction"])
def test_keyword_scorer_passes_the_runtime_check(mode: str) -> None:
    scorer = KeywordScorer(words=["stupid", "idiot"], patterns=["f+u+c+k"], mode=mode)  # type: ignore[arg-type]
    assert checked_scores(scorer, TURNS) == scorer.score_texts(ITEMS)


def test_profanity_scorer_passes_the_runtime_check() -> None:
    scorer = ProfanityScorer()
    assert checked_scores(scorer, TURNS) == pytest.approx(scorer.score_texts(ITEMS))


def test_keyword_scorer_passes_the_conformance_check() -> None:
    for mode in ("any", "fraction"):
        scorer = KeywordScorer(words=["stupid"], patterns=["f+u+c+k"], mode=mode)
        assert check_scorer(scorer, ITEMS) == scorer.score_texts(ITEMS)


def test_profanity_scorer_passes_the_conformance_check() -> None:
    scores = check_scorer(ProfanityScorer(), ITEMS)
    assert scores[1] > 0.5 > scores[0]
