"""Options of the toy components (kept apart so validating them does not import torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ToyScorerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    toxic_words: tuple[str, ...] = ("awful", "bad", "hate", "stupid")


class ToySystemOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    probe_length: int = Field(3, ge=1, le=16)
    seed: int = Field(0, ge=0)


class ToySamplerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tree_width: int = Field(2, ge=1)
    tree_depth: int = Field(2, ge=1)
