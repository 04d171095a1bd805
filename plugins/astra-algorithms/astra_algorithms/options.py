"""The options of each algorithm, as pydantic models (importing only pydantic, so a run file's
options are validated before torch loads).

Each model is what a run file's ``[algorithm]`` table may hold besides ``name``; the algorithm's
constructor takes the same names as keywords and validates them against the same model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DPOOptions(BaseModel):
    """Direct Preference Optimization: `beta` scales the implicit reward; `label_smoothing` is
    the assumed probability that a preference label is flipped (conservative DPO)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="probability a pair's preference is wrong (conservative DPO); 0: plain DPO"
    )


class IPOOptions(BaseModel):
    """Identity Preference Optimization: the squared loss pulls the log-ratio margin to 1/(2·beta)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="regularisation strength (tau in the paper); target margin 1/(2 beta)")
    length_normalize: bool = Field(
        True, description="use per-token mean log-probs (reduction='mean') instead of sums, as TRL's IPO does"
    )


class PPOOptions(BaseModel):
    """Proximal Policy Optimization with a learned value head and a KL penalty to the baseline."""

    model_config = ConfigDict(extra="forbid")

    clip_range: float = Field(0.2, gt=0, lt=1, description="epsilon of the clipped surrogate: ratio kept in [1-e, 1+e]")
    ppo_epochs: int = Field(4, ge=1, description="passes over each experience (read as epochs_per_experience)")
    vf_coef: float = Field(0.5, ge=0, description="weight of the value-head loss")
    kl_coef: float = Field(0.1, ge=0, description="weight of the KL penalty to the frozen baseline; 0: none")
    kl_estimator: Literal["k3", "k1"] = Field(
        "k3", description="k3: (r - 1) - log r with r = pi_ref/pi (unbiased, >= 0); k1: log pi - log pi_ref"
    )
    normalize_advantages: bool = Field(True, description="standardise advantages within each batch")
    feature_size: int | None = Field(
        None, ge=1, description="width of system.state_features; None: read it from the system"
    )


class GRPOOptions(BaseModel):
    """Tree-group policy gradient: each turn's advantage is its reward minus its siblings' mean."""

    model_config = ConfigDict(extra="forbid")

    scale_by_std: bool = Field(False, description="divide each group's advantages by the group's standard deviation")
    kl_coef: float = Field(0.0, ge=0, description="weight of the k3 KL penalty to the frozen baseline; 0: none")
