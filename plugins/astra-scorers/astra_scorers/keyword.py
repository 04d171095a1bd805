"""The `keyword` scorer: deterministic matching of words, phrases and regular expressions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from astra_core.errors import OptionsError
from astra_core.turns import TextScorer
from astra_scorers.options import compile_pattern

_WORD = re.compile(r"\S+")


class KeywordScorer(TextScorer):
    """Scores texts by what they contain: a list of words (whole-word matches) and/or regexes.

    With ``mode="any"`` a text scores 1.0 when any word or pattern matches it, else 0.0. With
    ``mode="fraction"`` it scores the share of its whitespace-separated words that some match
    touches (so a two-word phrase marks both words). Empty text scores 0.0.

    >>> scorer = KeywordScorer(words=["idiot"], patterns=[r"sh[i1]t"], mode="fraction")
    >>> scorer.score_texts(["you idiot", "SH1T happens here", "hello"])
    [0.5, 0.3333333333333333, 0.0]
    """

    def __init__(
        self,
        words: Sequence[str] = (),
        patterns: Sequence[str] = (),
        case_sensitive: bool = False,
        mode: Literal["any", "fraction"] = "any",
    ) -> None:
        if mode not in ("any", "fraction"):
            raise OptionsError("scorer", "keyword", [f"mode: must be 'any' or 'fraction', got {mode!r}"])
        if isinstance(words, str) or isinstance(patterns, str):
            raise OptionsError("scorer", "keyword", ["words and patterns must be lists of strings, not one string"])
        self.mode = mode
        flags = 0 if case_sensitive else re.IGNORECASE
        self._matchers: list[re.Pattern[str]] = []
        if words:
            # Lookarounds rather than \b, so words that start or end with punctuation ("f*ck!") still match whole.
            alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
            self._matchers.append(re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", flags))
        for pattern in patterns:
            try:
                self._matchers.append(compile_pattern(pattern, case_sensitive))
            except ValueError as error:
                raise OptionsError("scorer", "keyword", [f"patterns: {error}"]) from None

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per text, in input order."""
        return [self._score_one(text) for text in texts]

    def _score_one(self, text: str) -> float:
        if self.mode == "any":
            return 1.0 if any(m.search(text) for m in self._matchers) else 0.0
        words = [(w.start(), w.end()) for w in _WORD.finditer(text)]
        if not words:
            return 0.0
        spans = [
            (m.start(), m.end()) for matcher in self._matchers for m in matcher.finditer(text) if m.end() > m.start()
        ]
        touched = sum(any(start < end_m and start_m < end for start_m, end_m in spans) for start, end in words)
        return touched / len(words)
