"""The keyword scorer: whole-word and regex matching, both modes, case handling, option errors."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from astra_core.errors import OptionsError
from astra_core.plugins import discover
from astra_scorers.keyword import KeywordScorer
from astra_scorers.options import KeywordOptions


def test_any_mode_scores_one_when_a_word_appears_and_zero_otherwise() -> None:
    scorer = KeywordScorer(words=["idiot", "stupid"])
    assert scorer.score_texts(["you idiot", "what a lovely day", "stupid!"]) == [1.0, 0.0, 1.0]


def test_words_match_whole_words_only() -> None:
    scorer = KeywordScorer(words=["ass"])
    assert scorer.score_texts(["a class assignment", "you ass", "ass."]) == [0.0, 1.0, 1.0]


def test_words_may_be_phrases_and_may_contain_punctuation() -> None:
    scorer = KeywordScorer(words=["go away", "f*ck"], mode="fraction")
    assert scorer.score_texts(["please go away now", "f*ck it", "go and stay"]) == [0.5, 0.5, 0.0]


def test_fraction_mode_is_the_share_of_words_a_match_touches() -> None:
    scorer = KeywordScorer(words=["bad", "awful"], mode="fraction")
    assert scorer.score_texts(["bad awful good day", "bad", "good", ""]) == [0.5, 1.0, 0.0, 0.0]


def test_patterns_are_searched_anywhere_in_the_text_even_inside_words() -> None:
    scorer = KeywordScorer(patterns=[r"h[a4]te", r"\bk+i+l+l+\b"])  # "whatever" contains "hate"
    assert scorer.score_texts(["I h4te this", "killl", "skills", "whatever it is"]) == [1.0, 1.0, 0.0, 1.0]


def test_fraction_mode_counts_words_touched_by_a_pattern() -> None:
    scorer = KeywordScorer(patterns=[r"sh[i1]t"], mode="fraction")
    assert scorer.score_texts(["oh sh1tty day", "nothing here at all"]) == [pytest.approx(1 / 3), 0.0]


def test_matching_ignores_case_by_default() -> None:
    scorer = KeywordScorer(words=["idiot"], patterns=["dumb"])
    assert scorer.score_texts(["IDIOT", "So Dumb"]) == [1.0, 1.0]


def test_case_sensitive_matching_respects_letter_case() -> None:
    scorer = KeywordScorer(words=["idiot"], patterns=["dumb"], case_sensitive=True)
    assert scorer.score_texts(["IDIOT", "So Dumb", "idiot", "dumb"]) == [0.0, 0.0, 1.0, 1.0]


def test_scores_are_deterministic_and_one_per_input() -> None:
    scorer = KeywordScorer(words=["bad"], mode="fraction")
    items = ["bad day", "good day", "bad bad"] * 5
    assert scorer.score_texts(items) == scorer.score_texts(items)
    assert len(scorer.score_texts(items)) == len(items)
    assert scorer.score_texts([]) == []


def test_invalid_regex_in_the_constructor_names_the_pattern() -> None:
    with pytest.raises(OptionsError, match=r"keyword.*invalid regular expression '\(unclosed'"):
        KeywordScorer(patterns=["ok", "(unclosed"])


def test_invalid_regex_in_options_is_a_validation_error_naming_the_pattern() -> None:
    with pytest.raises(ValidationError, match=r"invalid regular expression '\[a-'"):
        KeywordOptions(patterns=["[a-"])


def test_run_file_options_with_a_bad_regex_fail_with_the_component_and_field_named() -> None:
    info = discover().registries.get("scorer", "keyword")
    with pytest.raises(OptionsError, match=r"scorer 'keyword'.*patterns.*invalid regular expression '\*oops'"):
        info.validate({"patterns": ["*oops"]})


def test_options_need_at_least_one_word_or_pattern() -> None:
    with pytest.raises(ValidationError, match="at least one entry in words or patterns"):
        KeywordOptions()


def test_options_reject_unknown_modes_and_keys() -> None:
    with pytest.raises(ValidationError):
        KeywordOptions.model_validate({"words": ["x"], "mode": "all"})
    with pytest.raises(ValidationError):
        KeywordOptions.model_validate({"words": ["x"], "regexes": ["y"]})


def test_a_single_string_instead_of_a_list_is_rejected() -> None:
    options: dict[str, Any] = {"words": "idiot"}  # as a hand-written Python call might pass it
    with pytest.raises(OptionsError, match="lists of strings"):
        KeywordScorer(**options)
