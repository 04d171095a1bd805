"""astra-transformers: an Astra Core system over Hugging Face causal language models.

The system itself lives in `astra_transformers.system` (importing it imports torch and
transformers); this package's top level and its plugin module stay light. The embedded default
model, a tiny GPT-2 trained offline on conversational English, ships in `TINY_MODEL_DIR` and is
what ``model = "tiny"`` (the default) loads.
"""

from __future__ import annotations

from pathlib import Path

TINY_MODEL_DIR = Path(__file__).resolve().parent / "models" / "tiny"
"""The directory of the embedded tiny GPT-2 (config.json, model.safetensors, tokenizer files)."""

__all__ = ["TINY_MODEL_DIR"]
