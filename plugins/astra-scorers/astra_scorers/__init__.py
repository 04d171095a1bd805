"""Harm scorers for Astra Core: profanity (the offline default), keyword, detoxify and llamaguard.

Each scorer is an `astra_core.TextScorer`: it judges each turn's text, and
``score_texts(texts) -> list[float]`` returns one value in [0, 1] per text. Importing this
package is light; the scorers load their libraries when built::

    from astra_scorers.keyword import KeywordScorer
    KeywordScorer(words=["idiot"]).score_texts(["you idiot", "hello"])  # [1.0, 0.0]
"""

from __future__ import annotations

__version__ = "0.1.0"
