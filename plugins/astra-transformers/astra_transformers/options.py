"""Options of the "transformers" system (only pydantic here, so validating a config stays light)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["float32", "bfloat16", "float16"]


class TransformersOptions(BaseModel):
    """How to load the tester, target and baseline, and how they generate.

    `model` names the default for every role: ``"tiny"`` (the embedded offline GPT-2), a hub id
    such as ``"gpt2"``, or a local directory written by ``save_pretrained``. `tester`, `target`
    and `baseline` override it per role; the baseline defaults to a frozen copy of the tester's
    starting weights. Target and baseline that resolve to the same source share one copy.

    >>> TransformersOptions(probe_tokens=16).response_tokens
    24
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field("tiny", min_length=1, description="default source of every role: 'tiny', a hub id or a path")
    tester: str | None = Field(None, min_length=1, description="the trainable tester's source (None: model)")
    target: str | None = Field(None, min_length=1, description="the frozen target's source (None: model)")
    baseline: str | None = Field(
        None, min_length=1, description="the frozen baseline's source (None: a copy of the tester's starting weights)"
    )
    dtype: DType = Field("float32", description="parameter dtype of every model")
    device: str = Field("cpu", min_length=1, description="torch device of every model")
    tester_device: str | None = Field(None, min_length=1, description="the tester's (and baseline's) device")
    target_device: str | None = Field(None, min_length=1, description="the target's device")
    probe_tokens: int = Field(24, ge=1, description="max new tokens the tester writes per probe")
    response_tokens: int = Field(24, ge=1, description="max new tokens the target writes per response")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass (1.0: off)")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens (0: off)")
    max_context_tokens: int | None = Field(
        None,
        ge=1,
        description="longest context a model sees, oldest tokens cut first (None: n_positions - new tokens)",
    )
