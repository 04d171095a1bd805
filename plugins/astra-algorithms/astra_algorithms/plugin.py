"""The astra-algorithms plugin: registers dpo, ipo, ppo and grpo by name.

Light on purpose: factories and options models are named as ``"module:attribute"`` strings, so
loading the plugin imports neither torch nor pydantic; they load when a run builds an algorithm.
"""

from __future__ import annotations

from astra_core.hooks import hookimpl
from astra_core.registry import Registrar

_OPTIONS = "astra_algorithms.options"


@hookimpl
def astra_register(registrar: Registrar) -> None:
    """Register the four algorithms of this package."""
    registrar.algorithm(
        "dpo",
        "astra_algorithms.dpo:DPO",
        options=f"{_OPTIONS}:DPOOptions",
        summary="Direct Preference Optimization on best-vs-worst sibling pairs (Rafailov et al., 2023)",
    )
    registrar.algorithm(
        "ipo",
        "astra_algorithms.ipo:IPO",
        options=f"{_OPTIONS}:IPOOptions",
        summary="Identity Preference Optimization on best-vs-worst sibling pairs (Azar et al., 2023)",
    )
    registrar.algorithm(
        "ppo",
        "astra_algorithms.ppo:PPO",
        options=f"{_OPTIONS}:PPOOptions",
        summary="PPO with clipped surrogate, value head and KL to the baseline (Schulman et al., 2017)",
    )
    registrar.algorithm(
        "grpo",
        "astra_algorithms.grpo:GRPO",
        options=f"{_OPTIONS}:GRPOOptions",
        summary="policy gradient with sibling-group mean baseline, GRPO-style (Shao et al., 2024)",
    )
