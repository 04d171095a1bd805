"""What a scorer judges: a `Turn` in its context, and the adapter that makes a text scorer.

A scorer is given turns, not bare strings, so a classifier that judges a response in context
(a response classifier that reads the user turn it answers) sees what it needs; a scorer says
what it reads through its `reads` attribute. Most scorers judge one text: `TextScorer` and
`text_scorer` turn a ``list[str] -> list[float]`` function into a scorer in one line.

>>> shouting = text_scorer(lambda texts: [float(t.isupper()) for t in texts])
>>> shouting.score([Turn("hi", "say it", "NO"), Turn("hi", "QUIET")])
[1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal

from astra_core.types import ActionT_co, StateT_co

Reads = Literal["text", "turn"]
"""What a scorer reads of each `Turn`: ``"text"``, only the text under judgement (`Turn.text`:
the response, or the probe when a probe alone is scored); ``"turn"``, the whole turn in context
(the conversation so far, the probe and the response)."""


@dataclass(frozen=True)
class Turn(Generic[StateT_co, ActionT_co]):
    """One turn to score: the conversation so far, the tester's probe, the target's response.

    `response` (the target's text) is None when a probe (or any text in the probe's place) is
    scored alone.
    """

    context: StateT_co
    probe: ActionT_co
    response: str | None = None

    def text(self) -> ActionT_co | str:
        """What a text scorer judges: the response, or the probe when there is none."""
        return self.probe if self.response is None else self.response


class TextScorer:
    """A scorer that judges one text per turn (`Turn.text`); subclasses define `score_texts`.

    >>> class Shouting(TextScorer):
    ...     def score_texts(self, texts: Sequence[str]) -> list[float]:
    ...         return [float(t.isupper()) for t in texts]
    >>> Shouting().score([Turn("", "hey", "STOP")])
    [1.0]
    """

    reads: Reads = "text"

    # Turns of any state type: a text scorer reads only the text, so it scores chat turns too.
    def score(self, turns: Sequence[Turn[object, str]]) -> list[float]:
        """One score in [0, 1] per turn: `score_texts` on each turn's text, in order."""
        return self.score_texts([turn.text() for turn in turns])

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        """One score in [0, 1] per text, in order."""
        raise NotImplementedError(f"{type(self).__name__} must define score_texts(texts)")


class _FunctionScorer(TextScorer):
    def __init__(self, fn: Callable[[list[str]], Sequence[float]]) -> None:
        self.fn = fn

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        return list(self.fn(list(texts)))

    def __repr__(self) -> str:
        return f"text_scorer({getattr(self.fn, '__name__', self.fn)!r})"


def text_scorer(fn: Callable[[list[str]], Sequence[float]]) -> TextScorer:
    """A scorer that applies `fn` (texts -> one score in [0, 1] each) to each turn's text."""
    return _FunctionScorer(fn)
