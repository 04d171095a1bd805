"""The plugin module named by the entry point: registers components by name, imports nothing heavy.

Factories and options models are given as ``"module:attribute"`` strings, so loading this
plugin costs one small import; torch is imported only when a run builds one of these components.
Each path names a ``factory`` declared with `astra_core.factories` next to its class, which is
where mypy checks the class against its kind's protocol.
"""

from __future__ import annotations

from astra_core import Registrar, hookimpl

_PACKAGE = "astra_example_plugin"


@hookimpl
def astra_register(registrar: Registrar) -> None:
    """Register the example algorithm, sampler and optimizer."""
    registrar.algorithm(
        "example-reinforce",
        f"{_PACKAGE}.reinforce:factory",
        options=f"{_PACKAGE}.options:ReinforceOptions",
        summary="REINFORCE over every turn of the tree, with the episode's mean return as baseline",
    )
    registrar.sampler(
        "example-chain",
        f"{_PACKAGE}.chain:factory",
        options=f"{_PACKAGE}.options:ChainOptions",
        summary="a width-1 chain of turns over any system, every episode batched",
    )
    registrar.optimizer(
        "example-signsgd",
        f"{_PACKAGE}.signsgd:factory",
        options=f"{_PACKAGE}.options:SignSGDOptions",
        summary="sign SGD: step each weight by lr times the sign of its gradient",
    )
