"""The options models of the example components: pydantic only, so validating a run file is cheap.

Each field is an option a run file may set; ``extra="forbid"`` turns a misspelt option into an
error that names the component and the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ReinforceOptions(BaseModel):
    """Options of ``example-reinforce``."""

    model_config = ConfigDict(extra="forbid")

    discount: float = Field(1.0, ge=0.0, le=1.0, description="weight of later turns in a turn's return")
    baseline: Literal["mean", "none"] = Field("mean", description="subtract the episode's mean return, or nothing")


class ChainOptions(BaseModel):
    """Options of ``example-chain``."""

    model_config = ConfigDict(extra="forbid")

    depth: int = Field(3, ge=1, le=64, description="turns per episode")
    openers: list[str] = Field(
        default_factory=lambda: ["hello there", "nice day", "good weather"],
        min_length=1,
        description="opening contexts, one drawn at random per episode",
    )


class SignSGDOptions(BaseModel):
    """Options of ``example-signsgd`` (the learning rate comes from ``training.lr``)."""

    model_config = ConfigDict(extra="forbid")

    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay, as a fraction of lr")
