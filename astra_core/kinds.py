"""The table of component kinds: the one place that says what each kind of component is.

For every kind a plugin can register (scorer, system, sampler, algorithm, evaluator, optimizer,
scheduler, callback) one `Kind` record gives its protocol, what its factory is built from (the
components it depends on, passed positionally, and the keywords the core injects), its factory
call, the conformance check and the contract wrapper that hold it to its protocol, and, through
its dependencies, the order a run builds it in. The `Registrar`, the build, the conformance kit
and the table in ``docs/plugins.md`` are all read from here.

Methods are never listed here: they are derived from the protocol classes in
`astra_core.protocols`. The rule for optional methods: a kind's *required* members are those of
its protocol; its *optional* members are those of the protocols named in `Kind.extensions`, which
are the ``@runtime_checkable`` extension protocols the core tests with ``isinstance`` before it
uses them (``FeatureSystem``, ``MultiEpochAlgorithm``, ...). A kind whose protocol is itself
optional (``Callback``: every method is optional) names it there too. Optimizers and schedulers are
torch classes rather than protocols: they are checked with ``isinstance`` and list no members.

Importing this module is light: protocols are named as ``"module:attribute"`` paths and imported
on first use (the torch base classes only when a component of that kind is checked).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Literal, get_args

ComponentKind = Literal["scorer", "system", "sampler", "algorithm", "evaluator", "optimizer", "scheduler", "callback"]
"""The kinds of component a plugin can register (a misspelt kind is a type error)."""

_PROTOCOLS = "astra_core.protocols"


@dataclass(frozen=True)
class Dependency:
    """A positional argument of a kind's factory: its name in the call, and the kind it comes from.

    The argument is that kind's built component, except where the name says otherwise
    (an optimizer's ``params`` are its algorithm's ``parameters()``).
    """

    argument: str
    kind: ComponentKind


@dataclass(frozen=True)
class Kind:
    """One kind of component: its protocol, how it is built, and how it is checked."""

    name: ComponentKind
    protocol_path: str
    """The protocol (or, for torch's kinds, the base class) as a lazy ``"module:attribute"``."""
    dependencies: tuple[Dependency, ...] = ()
    injected: tuple[str, ...] = ()
    """Keywords the core passes besides the options (``lr``, ``total_steps``); not user options."""
    extensions: tuple[str, ...] = ()
    """Names of the `astra_core.protocols` classes whose members are optional for this kind."""
    conformance: str | None = None
    """The `astra_core.testing` check a plugin author runs on a component of this kind."""

    @property
    def protocol(self) -> type:
        """The protocol class (imported on first use)."""
        return _import(self.protocol_path)

    @property
    def protocol_name(self) -> str:
        return self.protocol_path.partition(":")[2]

    @property
    def is_protocol(self) -> bool:
        """Whether the kind is a structural protocol (else a base class checked with isinstance)."""
        return self.protocol_path.startswith(f"{_PROTOCOLS}:")

    @property
    def required(self) -> tuple[str, ...]:
        """The members every component of this kind has, in the protocol's order."""
        if not self.is_protocol:
            return ()  # a torch base class, checked with isinstance (and not imported here)
        optional = set(self.optional_members)
        return tuple(name for name in members(self.protocol) if name not in optional)

    @property
    def optional(self) -> tuple[type, ...]:
        """The extension protocols (imported on first use): what a component of this kind may also be."""
        return tuple(_import(_p(name)) for name in self.extensions)

    @property
    def optional_members(self) -> tuple[str, ...]:
        """The members of this kind's optional protocols, which a component may leave out."""
        found: list[str] = []
        for protocol in self.optional:
            found.extend(name for name in members(protocol) if name not in found)
        return tuple(found)

    @property
    def call(self) -> str:
        """How the core calls a factory of this kind, as text: ``factory(system, **options)``."""
        arguments = [d.argument for d in self.dependencies]
        arguments += [f"{keyword}={keyword}" for keyword in self.injected]
        return f"factory({', '.join([*arguments, '**options'])})"

    @property
    def depends_on(self) -> tuple[ComponentKind, ...]:
        """The kinds built before this one."""
        return tuple(d.kind for d in self.dependencies)

    def missing(self, component: object) -> list[str]:
        """What `component` lacks to be of this kind: required members, or the base class."""
        if not self.is_protocol:
            return [] if isinstance(component, self.protocol) else [f"the base class {self.protocol_name}"]
        return [name for name in self.required if not hasattr(component, name)]

    def guard(self, component: Any, origin: object = None) -> Any:
        """`component` wrapped by the contract checker of this kind (`astra_core.contracts.guard`).

        `origin` says who provides it (a `ComponentInfo`, or the contracts' own `Origin`).
        """
        # By name, on use: the table describes kinds without importing the checks it points at.
        contracts = importlib.import_module("astra_core.contracts")
        return contracts.guard(self.name, component, origin)


def _p(name: str) -> str:
    return f"{_PROTOCOLS}:{name}"


def _on(kind: ComponentKind, argument: str | None = None) -> Dependency:
    return Dependency(argument or kind, kind)


KINDS_TABLE: dict[ComponentKind, Kind] = {
    record.name: record
    for record in (
        # kind, protocol, built from, injected keywords, extensions (optional), conformance check
        Kind("scorer", _p("Scorer"), (), (), (), "check_scorer"),
        Kind(
            "system",
            _p("System"),
            (),
            (),
            ("FeatureSystem", "PairLogprobSystem", "TurnTextSystem", "SavableSystem", "NamedParameters"),
            "check_system",
        ),
        Kind(
            "sampler",
            _p("Sampler"),
            (_on("system"), _on("scorer")),
            (),
            ("TreeSampler", "StatefulSampler"),
            "check_sampler",
        ),
        Kind("algorithm", _p("Algorithm"), (_on("system"),), (), ("MultiEpochAlgorithm",), "check_algorithm"),
        Kind("evaluator", _p("Evaluator"), (_on("sampler"),), (), ("ComparingEvaluator",), None),
        Kind("optimizer", "torch.optim:Optimizer", (_on("algorithm", "params"),), ("lr",), (), "check_optimizer"),
        Kind("scheduler", "torch.optim.lr_scheduler:LRScheduler", (_on("optimizer"),), ("total_steps",), (), None),
        Kind("callback", _p("Callback"), (), (), ("Callback",), None),
    )
}
"""Every kind, by name."""

KINDS: tuple[ComponentKind, ...] = get_args(ComponentKind)


def kind(name: ComponentKind) -> Kind:
    """The record of kind `name`."""
    return KINDS_TABLE[name]


def build_order() -> list[ComponentKind]:
    """Every kind, each after the kinds it depends on (ties in table order)."""
    order: list[ComponentKind] = []
    pending = list(KINDS_TABLE)
    while pending:
        ready = next(k for k in pending if all(d in order for d in KINDS_TABLE[k].depends_on))
        order.append(ready)
        pending.remove(ready)
    return order


def members(protocol: type) -> tuple[str, ...]:
    """The public members of a protocol class (methods, properties, attributes), in definition order.

    A class that is not a `typing.Protocol` (torch's base classes) has none: it is checked with
    ``isinstance`` instead.
    """
    if not getattr(protocol, "_is_protocol", False):
        return ()
    found: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls is object or not getattr(cls, "_is_protocol", False) or cls.__module__ == "typing":
            continue
        names = [*inspect.get_annotations(cls), *vars(cls)]
        found.extend(n for n in names if not n.startswith("_") and n not in found)
    return tuple(found)


def table_markdown() -> str:
    """The kinds as a Markdown table, the one ``docs/plugins.md`` shows (a test keeps them equal)."""
    lines = [
        "| kind | factory call | must have | may have | checked by |",
        "|---|---|---|---|---|",
    ]
    for record in KINDS_TABLE.values():
        must = ", ".join(f"`{m}`" for m in record.required) or (
            "nothing" if record.is_protocol else f"be a `{record.protocol_path.replace(':', '.')}`"
        )
        may = ", ".join(f"`{m}`" for m in record.optional_members) or "-"
        check = f"`{record.conformance}`" if record.conformance else "-"
        lines.append(f"| {record.name} | `{record.call}` | {must} | {may} | {check} |")
    return "\n".join(lines)


@functools.cache
def _import(path: str) -> type:
    from astra_core.registry import import_path

    found: type = import_path(path)
    return found
