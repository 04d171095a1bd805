"""ASTPrompter for Astra Core: adaptive stress testing of language models.

The plugin registers the ``ast`` sampler (a batched tree sampler whose reward is the paper's mix
of response toxicity, probe+response toxicity and probe likelihood under the target) and the
``ast`` evaluator (attack success rate with a bootstrap interval, toxicity, perplexity and
diversity on held-out prompts), and ships original neutral prompt sets (``builtin:train``,
``builtin:dev``, ``builtin:test``). Importing this package imports nothing heavy; the modules
``astra_ast.sampler`` and ``astra_ast.evaluator`` are imported when a run builds them.
"""

from __future__ import annotations

__version__ = "0.1.0"
