"""Typed factory declarations: mypy checks a component against its kind's protocol where it is declared.

A plugin registers its factories by ``"module:attribute"`` path, so that loading it imports
nothing heavy; but mypy cannot see through a string. Declare each factory once, in the
component's own module, with the function named after its kind, and register the path of that
declaration::

    # my_package/sampler.py
    from astra_core import factories

    class MySampler:
        def __init__(self, system: System[str, str], depth: int = 3) -> None: ...
        ...

    factory = factories.sampler(MySampler)

    # my_package/plugin.py (imports nothing of my_package.sampler)
    registrar.sampler("my-sampler", "my_package.sampler:factory")

``mypy --strict`` on the package then rejects a ``MySampler`` whose methods do not match the
`Sampler` protocol, or whose first parameter is not the system it is built from; for an
algorithm it also infers the batch type from ``collate_fn`` and ``step`` together, so a
``collate_fn`` returning what ``step`` cannot take is an error. At run time each function only
records the kind: building the component checks it was declared for the kind it is registered
as. The call each factory receives is in `astra_core.kinds`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar

from astra_core.kinds import ComponentKind

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LRScheduler

    from astra_core.protocols import Algorithm, Callback, Evaluator, Sampler, Scorer, System

__all__ = [
    "TypedFactory",
    "algorithm",
    "callback",
    "evaluator",
    "optimizer",
    "sampler",
    "scheduler",
    "scorer",
    "system",
]

S = TypeVar("S")
A = TypeVar("A")
E = TypeVar("E")
B = TypeVar("B")
P = ParamSpec("P")
K_co = TypeVar("K_co", bound=ComponentKind, covariant=True)


@dataclass(frozen=True)
class TypedFactory(Generic[K_co]):
    """A factory declared for the kind `K_co` (a ``Literal`` type, so registering it as another
    kind is a type error); the registry calls `factory`."""

    kind: K_co
    factory: Callable[..., Any]


def scorer(factory: Callable[P, Scorer[S, A]]) -> TypedFactory[Literal["scorer"]]:
    """Declare a scorer factory, called ``factory(**options)``."""
    return TypedFactory("scorer", factory)


def system(factory: Callable[P, System[S, A]]) -> TypedFactory[Literal["system"]]:
    """Declare a system factory, called ``factory(**options)``."""
    return TypedFactory("system", factory)


def sampler(
    factory: Callable[Concatenate[System[S, A], Scorer[S, A], ...], Sampler[S, A]],
) -> TypedFactory[Literal["sampler"]]:
    """Declare a sampler factory, called ``factory(system, scorer, **options)``."""
    return TypedFactory("sampler", factory)


def algorithm(
    factory: Callable[Concatenate[System[S, A], ...], Algorithm[S, A, E, B]],
) -> TypedFactory[Literal["algorithm"]]:
    """Declare an algorithm factory, called ``factory(system, **options)``."""
    return TypedFactory("algorithm", factory)


def evaluator(factory: Callable[Concatenate[Sampler[S, A], ...], Evaluator]) -> TypedFactory[Literal["evaluator"]]:
    """Declare an evaluator factory, called ``factory(sampler, **options)``."""
    return TypedFactory("evaluator", factory)


def optimizer(
    factory: Callable[Concatenate[Iterable[torch.nn.Parameter], ...], torch.optim.Optimizer],
) -> TypedFactory[Literal["optimizer"]]:
    """Declare an optimizer factory, called ``factory(params, lr=lr, **options)``."""
    return TypedFactory("optimizer", factory)


def scheduler(
    factory: Callable[Concatenate[torch.optim.Optimizer, ...], LRScheduler],
) -> TypedFactory[Literal["scheduler"]]:
    """Declare a scheduler factory, called ``factory(optimizer, total_steps=total_steps, **options)``."""
    return TypedFactory("scheduler", factory)


def callback(factory: Callable[P, Callback]) -> TypedFactory[Literal["callback"]]:
    """Declare a callback factory, called ``factory(**options)``."""
    return TypedFactory("callback", factory)
