"""The astra-transformers plugin: registers the "transformers" system (alias "hf").

Registration names everything by path, so loading this plugin imports neither torch nor
transformers; they load when a run builds the system.
"""

from __future__ import annotations

from astra_core.hooks import hookimpl
from astra_core.registry import Registrar


@hookimpl
def astra_register(registrar: Registrar) -> None:
    """Register the Hugging Face causal-LM system."""
    registrar.system(
        "transformers",
        "astra_transformers.system:transformers_system",
        options="astra_transformers.options:TransformersOptions",
        summary="Hugging Face causal LMs as tester/target/baseline, plain text or chat mode "
        "(default: the embedded tiny GPT-2, offline)",
        aliases=("hf",),
    )
