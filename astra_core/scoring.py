"""Calling a scorer safely: the core checks every scorer's output, whoever wrote it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from astra_core.errors import AstraError
from astra_core.protocols import Scorer
from astra_core.turns import Turn
from astra_core.types import ActionT, StateT


class ScorerError(AstraError):
    """A scorer broke its contract: wrong number of scores, or values outside [0, 1]."""


def checked_scores(scorer: Scorer[StateT, ActionT], items: Sequence[Turn[StateT, ActionT]]) -> list[float]:
    """`scorer.score(items)`, verified: one float per turn, each in [0, 1].

    NaN passes through on purpose: a non-finite reward is a numeric fault that the trainer
    counts and skips, not a broken plugin.
    """
    name = type(scorer).__name__
    scores = scorer.score(items)
    if len(scores) != len(items):
        raise ScorerError(
            f"scorer {name} returned {len(scores)} scores for {len(items)} inputs; "
            f"a scorer must return exactly one score per input"
        )
    checked = []
    for index, value in enumerate(scores):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ScorerError(f"scorer {name} returned {value!r} at index {index}; scores must be floats") from None
        if not math.isnan(number) and not 0.0 <= number <= 1.0:
            raise ScorerError(f"scorer {name} returned {number} at index {index}; scores must lie in [0, 1]")
        checked.append(number)
    return checked
