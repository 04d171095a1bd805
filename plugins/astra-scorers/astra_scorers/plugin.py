"""The astra-scorers plugin: registers profanity, keyword, detoxify, llamaguard and judge by path.

Registration imports nothing heavy: each factory and options model is named as a
``"module:attribute"`` string and imported only when a run builds or validates that scorer.
"""

from __future__ import annotations

from astra_core.hooks import hookimpl
from astra_core.registry import Registrar

_OPTIONS = "astra_scorers.options"


@hookimpl
def astra_register(registrar: Registrar) -> None:
    """Register this package's scorers."""
    registrar.scorer(
        "profanity",
        "astra_scorers.profanity:ProfanityScorer",
        options=f"{_OPTIONS}:ProfanityOptions",
        summary="profanity probability from alt-profanity-check's bundled classifier (offline default)",
    )
    registrar.scorer(
        "keyword",
        "astra_scorers.keyword:KeywordScorer",
        options=f"{_OPTIONS}:KeywordOptions",
        summary="deterministic word and regex matching: any match, or the fraction of matching words",
    )
    registrar.scorer(
        "detoxify",
        "astra_scorers.detoxify_scorer:DetoxifyScorer",
        options=f"{_OPTIONS}:DetoxifyOptions",
        summary="Detoxify toxicity classifier (extra: astra-scorers[detoxify])",
    )
    registrar.scorer(
        "llamaguard",
        "astra_scorers.llamaguard:LlamaGuardScorer",
        options=f"{_OPTIONS}:LlamaGuardOptions",
        summary="P(unsafe) from a Llama Guard model's verdict token (extra: astra-scorers[llamaguard])",
    )
    registrar.scorer(
        "judge",
        "astra_scorers.judge:JudgeScorer",
        options=f"{_OPTIONS}:JudgeOptions",
        summary="LLM-as-judge: P(yes) from a chat model asked a rubric (default SmolLM2, offline; extra: judge)",
    )
