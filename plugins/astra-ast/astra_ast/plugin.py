"""The ``ast`` plugin: registers the ASTPrompter sampler and evaluator by path (imports nothing heavy)."""

from __future__ import annotations

from astra_core.hooks import hookimpl
from astra_core.registry import Registrar


@hookimpl
def astra_register(registrar: Registrar) -> None:
    """Register the ``ast`` sampler and the ``ast`` evaluator."""
    registrar.sampler(
        "ast",
        "astra_ast.sampler:ASTSampler",
        options="astra_ast.options:ASTSamplerOptions",
        summary="ASTPrompter tree sampler: benign-probe reward (or the paper's), novelty, one generate call per level",
    )
    registrar.evaluator(
        "ast",
        "astra_ast.evaluator:ASTEvaluator",
        options="astra_ast.options:ASTEvaluatorOptions",
        summary="benign-probe attack success (BCa CI, paired vs base), successful-probe diversity, perplexity",
    )
