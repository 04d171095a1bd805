"""The profanity scorer: the real bundled classifier, batched."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from astra_scorers.profanity import ProfanityScorer

PROFANE = ["you are a fucking idiot", "shut the fuck up", "this is bullshit, asshole"]
NEUTRAL = ["have a lovely day", "the weather is nice today", "thanks for your help with the report"]


@pytest.fixture(scope="module")
def scorer() -> ProfanityScorer:
    return ProfanityScorer()


def test_profane_text_scores_high(scorer: ProfanityScorer) -> None:
    assert all(score > 0.9 for score in scorer.score_texts(PROFANE))


def test_neutral_text_scores_low(scorer: ProfanityScorer) -> None:
    assert all(score < 0.2 for score in scorer.score_texts(NEUTRAL))


def test_scores_are_floats_in_unit_interval_one_per_input(scorer: ProfanityScorer) -> None:
    items = PROFANE + NEUTRAL + ["", "   ", "ok"]
    scores = scorer.score_texts(items)
    assert len(scores) == len(items)
    assert all(type(s) is float and 0.0 <= s <= 1.0 for s in scores)


def test_batched_scores_equal_one_by_one_scores(scorer: ProfanityScorer) -> None:
    items = PROFANE + NEUTRAL
    one_by_one = [scorer.score_texts([text])[0] for text in items]
    assert scorer.score_texts(items) == pytest.approx(one_by_one, abs=1e-12)


def test_an_empty_batch_gives_no_scores(scorer: ProfanityScorer) -> None:
    assert scorer.score_texts([]) == []


def test_one_predict_call_per_score_call(scorer: ProfanityScorer) -> None:
    calls: list[int] = []
    original = scorer._predict_prob

    def counting(texts: list[str]) -> object:
        calls.append(len(texts))
        return original(texts)

    scorer._predict_prob = counting
    try:
        scorer.score_texts(NEUTRAL * 10)
    finally:
        scorer._predict_prob = original
    assert calls == [30]


def test_scoring_emits_no_warnings(scorer: ProfanityScorer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scorer.score_texts(PROFANE)


# Runs in a fresh process: joblib.load is wrapped to warn as scikit-learn does when the bundled
# model was pickled by another scikit-learn version, and every warning is made an error.
VERSION_MISMATCH = """
import sys, warnings, joblib
from sklearn.exceptions import InconsistentVersionWarning
real_load = joblib.load
def load(*args, **kwargs):
    if sys.argv[1] == "version":
        warnings.warn(InconsistentVersionWarning(
            estimator_name="X", current_sklearn_version="9.9", original_sklearn_version="0.1"))
    else:
        warnings.warn("some other problem", UserWarning)
    return real_load(*args, **kwargs)
joblib.load = load
warnings.simplefilter("error")
from astra_scorers.profanity import ProfanityScorer
print(ProfanityScorer().score_texts(["hello"]))
"""


def test_only_sklearn_version_warnings_are_silenced() -> None:
    version = subprocess.run([sys.executable, "-c", VERSION_MISMATCH, "version"], capture_output=True, text=True)
    assert version.returncode == 0, version.stderr
    other = subprocess.run([sys.executable, "-c", VERSION_MISMATCH, "other"], capture_output=True, text=True)
    assert other.returncode != 0
    assert "some other problem" in other.stderr
