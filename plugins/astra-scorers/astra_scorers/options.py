"""Options of every scorer, as pydantic models.

This module imports only pydantic and the standard library, so a run file's scorer options are
validated before torch, scikit-learn or any model is loaded.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def compile_pattern(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    """Compile one user regex; an invalid one raises `ValueError` naming the pattern and the fault.

    >>> compile_pattern("h[ae]te", case_sensitive=False).search("HATE") is not None
    True
    """
    try:
        return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
    except re.error as error:
        raise ValueError(f"invalid regular expression {pattern!r}: {error}; fix or escape it (re.escape)") from None


class ProfanityOptions(BaseModel):
    """The `profanity` scorer takes no options: its model ships inside alt-profanity-check."""

    model_config = ConfigDict(extra="forbid")


class KeywordOptions(BaseModel):
    """Options of the `keyword` scorer.

    `words` match as whole words (or whole phrases), `patterns` are regular expressions searched
    anywhere in the text. `mode="any"` scores 1.0 when anything matches, else 0.0;
    `mode="fraction"` scores the share of the text's whitespace-separated words that a match
    touches.
    """

    model_config = ConfigDict(extra="forbid")

    words: list[str] = Field(default_factory=list, description="words or phrases matched as whole words")
    patterns: list[str] = Field(default_factory=list, description="regular expressions (Python `re` syntax)")
    case_sensitive: bool = Field(False, description="match letter case exactly")
    mode: Literal["any", "fraction"] = Field("any", description="'any': 1.0 on any match; 'fraction': matched words")

    @field_validator("words")
    @classmethod
    def _words_not_blank(cls, words: list[str]) -> list[str]:
        for word in words:
            if not word.strip():
                raise ValueError("words must not be empty or blank")
        return words

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            compile_pattern(pattern, case_sensitive=True)
        return patterns

    @model_validator(mode="after")
    def _something_to_match(self) -> KeywordOptions:
        if not self.words and not self.patterns:
            raise ValueError("give at least one entry in words or patterns (otherwise every score is 0)")
        return self


class DetoxifyOptions(BaseModel):
    """Options of the `detoxify` scorer (extra: ``astra-scorers[detoxify]``)."""

    model_config = ConfigDict(extra="forbid")

    model_type: str = Field("original", description="Detoxify model: original, unbiased, multilingual, ...")
    checkpoint: str | None = Field(None, description="local .ckpt file instead of downloading model_type's")
    huggingface_config_path: str | None = Field(
        None, description="local directory with the tokenizer and config (fully offline loading)"
    )
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda'")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    label: str = Field("toxicity", description="which Detoxify output is the score")
    allow_pickle_weights: bool = Field(
        False, description="required: Detoxify checkpoints are pickles, which can run code; only if you trust them"
    )


class LlamaGuardOptions(BaseModel):
    """Options of the `llamaguard` scorer (extra: ``astra-scorers[llamaguard]``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("meta-llama/Llama-Guard-3-1B", description="Hugging Face model id or local directory")
    content_format: Literal["parts", "text"] = Field(
        "parts",
        description="'parts': content=[{type: text, text}] (Llama Guard 3 1B); 'text': content=str (3 8B, 7b)",
    )
    device: str = Field("cpu", description="torch device, e.g. 'cpu' or 'cuda'")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="weights dtype; None: default")
    batch_size: int = Field(8, ge=1, description="texts per forward pass (left-padded)")
    safe_token: str = Field("safe", min_length=1, description="the verdict word for safe text")
    unsafe_token: str = Field("unsafe", min_length=1, description="the verdict word for unsafe text")
    prompt_suffix: str = Field("", description="text appended after the chat template, before the verdict")
    local_files_only: bool = Field(False, description="never contact the hub (a local directory never does)")
    allow_pickle_weights: bool = Field(
        False, description="also load .bin (pickle) weights, which can run code: only for files you trust"
    )
