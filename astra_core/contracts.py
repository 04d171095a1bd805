"""Contracts as wrappers: every component the Trainer receives is held to its protocol on use.

`guard(kind, component)` returns a wrapper (Gymnasium's ``PassiveEnvChecker`` is the model)
that forwards every attribute to the component and checks every call of a protocol method,
optional ones included, against what the method returns:

========================= =================================================================
the method returns        the check
========================= =================================================================
log-probs (``*logprobs``) a floating tensor of shape ``(len(contexts),)`` (a pair: two),
                          no NaN, nothing above 0 beyond float slack; the tester's carry a
                          gradient whenever gradients are enabled
a loss ``(loss, logs)``   a floating 0-dim tensor with a gradient path to ``parameters()``
                          (checked on the first call), logs ``dict[str, float]``
rollout trees             `Graph` objects of `Node` turns, one per requested episode
                          (``count``) or prompt
scores (``list[float]``)  one finite float in [0, 1] per item
one output per input      a list as long as ``contexts``; a tensor with one row per context
parameters                tensors (named ones: ``(name, tensor)`` pairs)
an evaluation report      an `EvaluationReport` whose metrics are ``dict[str, float]``
JSON data                 something `json.dumps` accepts (a sampler's checkpointed state)
anything else             the call only
========================= =================================================================

The methods and what they return are read from the protocol classes (`protocols` lists each
kind's main and optional protocols), so a method added there is checked without an edit here.
Any exception a checked method raises (other than an `AstraError`, which already speaks for
itself, or an `OSError`, which is the disk's or the device's) becomes a `ComponentContractError`
chained to it; the CLI writes its traceback to the run's log (`traceback_text`) and prints one
line. A method whose argument another method built (the loss takes what ``collate_fn`` returns)
names both when it raises.

A component's dependencies are checked too: guarding re-points every attribute of the
component that holds another kind of component (``system``, ``scorer``, ``sampler``, or any
object already guarded) to that object's guard, so a sampler's calls to its scorer and an
algorithm's calls to its system's log-probs go through the checks as well.

The NaN policy is written once, in docs/reliability.md ("Contracts"): a value a component
returns outside its contract's domain (a NaN log-prob, a NaN score) is a breach; a non-finite
number computed from valid values (a reward or loss overflowing) is numerical trouble that the
Trainer skips and counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import inspect
import json
import math
import numbers
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from astra_core.errors import AstraError, ComponentContractError
from astra_core.graph import Graph, Node

if TYPE_CHECKING:
    import torch

    from astra_core.registry import ComponentInfo

__all__ = [
    "Guarded",
    "MethodContract",
    "Origin",
    "guard",
    "method_contracts",
    "origin_of",
    "protocols",
    "record_origin",
    "traceback_text",
    "unwrap",
]

V = TypeVar("V")


# --- which protocols a kind's components follow ------------------------------------------------


def protocols(kind: str) -> tuple[type, ...]:
    """The protocol classes a component of `kind` may implement: its main one, then the optional
    ones the core or first-party plugins look for with ``isinstance`` (`astra_core.kinds`).
    Kinds that are torch base classes rather than protocols (optimizer, scheduler) have none."""
    from astra_core import kinds

    record = kinds.KINDS_TABLE.get(kind)  # type: ignore[call-overload]
    if record is None or not record.is_protocol:
        return ()
    return tuple(dict.fromkeys((record.protocol, *record.optional)))


# --- where a component comes from ------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Who provides a component: the registered name and plugin when a build made it, else the
    class's module and the distribution that installed it.

    >>> str(Origin("sampler", "ShortSampler", "shorty.sampler", "short", "shorty (astra-shorty 0.1)"))
    "sampler 'short' (plugin shorty (astra-shorty 0.1))"
    >>> str(Origin("sampler", "ShortSampler", "shorty.sampler", distribution="astra-shorty 0.1"))
    'sampler ShortSampler (module shorty.sampler, distribution astra-shorty 0.1)'
    """

    kind: str
    component: str
    module: str
    name: str | None = None
    plugin: str | None = None
    """The plugin (entry point) and its distribution, as `astra_core.Provider` prints them."""
    distribution: str | None = None

    def __str__(self) -> str:
        if self.name is not None:
            return f"{self.kind} {self.name!r} (plugin {self.plugin})"
        dist = f"distribution {self.distribution}" if self.distribution else "no installed distribution"
        return f"{self.kind} {self.component} (module {self.module}, {dist})"


class _ByIdentity(Generic[V]):
    """Values keyed by an object's identity; an entry goes when its object is collected (objects
    that cannot be weakly referenced are held)."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[Any, V]] = {}

    def set(self, key: object, value: V) -> None:
        ident = id(key)
        holder: Any
        try:
            holder = weakref.ref(key, functools.partial(self._drop, ident))
        except TypeError:
            holder = key
        self._items[ident] = (holder, value)

    def _drop(self, ident: int, _: object) -> None:
        self._items.pop(ident, None)

    def get(self, key: object) -> V | None:
        entry = self._items.get(id(key))
        if entry is None:
            return None
        holder, value = entry
        held = holder() if isinstance(holder, weakref.ref) else holder
        return value if held is key else None


_ORIGINS: _ByIdentity[Origin] = _ByIdentity()


def record_origin(component: object, info: ComponentInfo) -> None:
    """Remember that the registered component `info` built `component` (the build calls this)."""
    _ORIGINS.set(component, _registered(component, info))


def _registered(component: object, info: ComponentInfo) -> Origin:
    provider = info.provider
    cls = type(component)
    distribution = " ".join(filter(None, (provider.distribution, provider.version))) or None
    return Origin(info.kind, cls.__name__, cls.__module__, info.name, str(provider), distribution)


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def origin_of(component: object, kind: str) -> Origin:
    """Where `component` comes from: as recorded by the build, else its class's module and the
    installed distribution that provides that module's top-level package."""
    recorded = _ORIGINS.get(component)
    if recorded is not None:
        return recorded
    cls = type(component)
    top = cls.__module__.split(".")[0]
    distribution = None
    for name in _distributions().get(top, []):
        try:
            distribution = f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
        break
    return Origin(kind, cls.__name__, cls.__module__, distribution=distribution)


# --- what each protocol method promises ------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One checked call: what is needed to judge its result and to word a breach."""

    guarded: Guarded
    contract: MethodContract
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]

    def argument(self, index: int = 0) -> Any:
        names = self.contract.parameters
        if index < len(self.args):
            return self.args[index]
        if index < len(names):
            return self.kwargs.get(names[index])
        return None

    def expected_count(self) -> int | None:
        first = self.argument(0)
        if isinstance(first, bool):
            return None
        if isinstance(first, int):
            return first
        return len(first) if isinstance(first, Sequence) else None

    def call_text(self) -> str:
        first = self.argument(0)
        shown = (
            str(first)
            if isinstance(first, int)
            else f"{len(first)} {self.contract.parameters[0]}"
            if isinstance(first, Sequence) and self.contract.parameters
            else "..."
            if self.contract.parameters
            else ""
        )
        return f"{self.guarded._guard_origin_text_component()}.{self.contract.name}({shown})"

    def breach(self, problem: str, remedy: str | None = None) -> ComponentContractError:
        kind = self.guarded.__guard_kind__
        hint = remedy or (
            f"a bug in the plugin: check it with astra_core.testing.check_{kind}"
            if kind in ("scorer", "system", "sampler", "algorithm")
            else "a bug in the plugin"
        )
        return ComponentContractError(f"{self.guarded.__guard_origin__}: {self.call_text()} {problem} ({hint})")


Check = Callable[[_Call, Any], Any]
"""Judges a call's result: raises the call's `breach`, or returns the result (possibly re-packed)."""


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"a {type(value).__name__} of shape {tuple(shape)}"
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _slack(dtype: torch.dtype) -> float:
    import torch

    # Rounding in a sum of per-token log-probs can land a hair above 0, more so in half precision.
    return max(1e-4, 8 * torch.finfo(dtype).eps)


def _check_logprob_tensor(call: _Call, values: Any, count: int | None, what: str) -> None:
    import torch

    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise call.breach(f"returned {_describe(values)}{what}; log-probs are a floating torch.Tensor")
    if values.dim() != 1 or (count is not None and values.shape[0] != count):
        raise call.breach(
            f"returned shape {tuple(values.shape)}{what}; log-probs have shape ({count},), one per "
            f"(context, continuation) pair"
        )
    detached = values.detach()
    bad = torch.isnan(detached) | (detached > _slack(values.dtype))
    if bool(bad.any()):
        first = float(detached[bad.nonzero()[0, 0]])
        raise call.breach(
            f"returned {first}{what}; log-probs are <= 0 and never NaN",
            "a bug in the plugin, or weights that diverged: lower training.lr or set training.max_grad_norm",
        )
    if call.contract.name.startswith("tester") and torch.is_grad_enabled() and not values.requires_grad:
        raise call.breach(
            f"returned log-probs{what} that carry no gradient; the tester's log-probs must reach its parameters "
            f"(do not detach them or compute them under no_grad)"
        )


def _logprobs(call: _Call, result: Any) -> Any:
    count = call.expected_count()
    if isinstance(result, tuple):
        for index, values in enumerate(result):
            _check_logprob_tensor(call, values, count, f" (item {index} of the tuple)")
    else:
        _check_logprob_tensor(call, result, count, "")
    return result


def _rows(call: _Call, result: Any) -> Any:
    import torch

    count = call.expected_count()
    if not isinstance(result, torch.Tensor) or result.dim() < 1 or (count is not None and result.shape[0] != count):
        raise call.breach(f"returned {_describe(result)}; it must return a tensor with one row per input ({count})")
    return result


def _outputs(call: _Call, result: Any) -> Any:
    count = call.expected_count()
    if not _is_list(result) or (count is not None and len(result) != count):
        raise call.breach(f"returned {_describe(result)}; it must return a list with one output per input ({count})")
    return result


def _scores(call: _Call, result: Any) -> Any:
    count = call.expected_count()
    if not _is_list(result) or (count is not None and len(result) != count):
        raise call.breach(f"returned {_describe(result)}; a scorer returns a list with one score per item ({count})")
    for index, value in enumerate(result):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise call.breach(f"returned {value!r} at index {index}; scores are floats")
        if not (math.isfinite(value) and 0.0 <= float(value) <= 1.0):
            raise call.breach(f"returned {value} at index {index}; scores are finite and lie in [0, 1]")
    return result


def _check_tree(call: _Call, graph: Any, where: str) -> None:
    if not isinstance(graph, Graph):
        raise call.breach(f"returned {_describe(graph)}{where}; a sampler returns rollout trees (astra_core.Graph)")
    for node in graph.nodes():
        if not isinstance(node, Node):
            raise call.breach(f"returned a Graph{where} holding {_describe(node)}; its turns are astra_core.Node")
        reward = node.reward
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real):
            raise call.breach(f"returned a turn{where} whose reward is {reward!r}; rewards are floats")


def _graphs(call: _Call, result: Any) -> Any:
    count = call.expected_count()
    if not _is_list(result):
        raise call.breach(f"returned {_describe(result)}; it must return a list of {count} rollout trees (Graph)")
    if count is not None and len(result) != count:
        raise call.breach(f"returned {len(result)} episodes; it must return exactly {count} rollout trees (Graph)")
    for index, graph in enumerate(result):
        _check_tree(call, graph, f" at index {index}")
    return result


def _graph(call: _Call, result: Any) -> Any:
    _check_tree(call, result, "")
    return result


def _sequence(call: _Call, result: Any) -> Any:
    if not _is_list(result):
        raise call.breach(f"returned {_describe(result)}; it must return a sequence (a list)")
    return result


def _parameters(call: _Call, result: Any) -> Any:
    import torch

    try:
        items = list(result)
    except TypeError:
        raise call.breach(f"returned {_describe(result)}; it must return an iterable of torch parameters") from None
    for item in items:
        if not isinstance(item, torch.Tensor):
            raise call.breach(f"yielded {_describe(item)}; it must yield torch parameters")
    return iter(items)


def _named_parameters(call: _Call, result: Any) -> Any:
    import torch

    try:
        items = list(result)
    except TypeError:
        raise call.breach(f"returned {_describe(result)}; it must return an iterable of (name, parameter)") from None
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise call.breach(f"yielded {_describe(item)}; it must yield (name, parameter) pairs")
        if not isinstance(item[1], torch.Tensor):
            raise call.breach(f"yielded {item[0]!r} as {_describe(item[1])}; it must yield torch parameters")
    return iter(items)


def _logs(call: _Call, logs: Any, what: str) -> None:
    if not isinstance(logs, Mapping):
        raise call.breach(f"returned {what} that are {_describe(logs)}; they must be a dict[str, float]")
    for key, value in logs.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise call.breach(
                f"returned {what} with {key!r}: {_describe(value)}; they must be a dict[str, float] (use float(tensor))"
            )


def _loss(call: _Call, result: Any) -> Any:
    import torch

    if not isinstance(result, tuple) or len(result) != 2:
        raise call.breach(f"returned {_describe(result)}; it must return (loss, logs)")
    loss, logs = result
    if not isinstance(loss, torch.Tensor) or not loss.is_floating_point() or loss.dim() != 0:
        raise call.breach(f"returned a loss that is {_describe(loss)}; a loss is a floating 0-dim tensor (a scalar)")
    _logs(call, logs, "logs")
    if torch.is_grad_enabled():
        if not loss.requires_grad:
            raise call.breach(
                "returned a loss that carries no gradient; it must be computed from the tester's log-probs"
            )
        if call.guarded.__guard_first__(call.contract.name) and not _reaches(loss, call.guarded):
            raise call.breach("returned a loss with no gradient path to any of parameters()")
    return result


def _reaches(loss: torch.Tensor, guarded: Guarded) -> bool:
    """Whether autograd would give any of the component's trainable parameters a gradient."""
    parameters = getattr(guarded.__guard_component__, "parameters", None)
    if parameters is None:
        return True  # nothing to compare with
    wanted = {id(p) for p in parameters() if p.requires_grad}
    if not wanted:
        return True  # "no trainable parameters" is the Trainer's error
    if loss.grad_fn is None:
        return id(loss) in wanted
    # Keyed by id but holding the node: torch may hand out a fresh Python wrapper for a graph
    # node on each access, and a freed wrapper's id can be reused by the next one.
    seen: dict[int, Any] = {}
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in wanted:
            return True
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False


def _report(call: _Call, result: Any) -> Any:
    from astra_core.protocols import EvaluationReport

    if not isinstance(result, EvaluationReport):
        raise call.breach(f"returned {_describe(result)}; it must return an astra_core.EvaluationReport")
    _logs(call, result.metrics, "metrics")
    return result


def _json(call: _Call, result: Any) -> Any:
    try:
        json.dumps(result)
    except (TypeError, ValueError) as error:
        raise call.breach(f"returned data that is not JSON ({error}); it is written to a JSON file") from None
    return result


def _called(call: _Call, result: Any) -> Any:
    return result


def _check_for(name: str, parameters: Sequence[str], returns: str) -> tuple[str, Check]:
    """The check of a protocol method, chosen by what it returns (see the module's table)."""
    r = returns.replace(" ", "")
    if "Tensor" in r and name.endswith("logprobs"):
        return "log-probs", _logprobs
    if r.startswith("tuple[") and "Tensor" in r and "dict[" in r:
        return "loss", _loss
    if "Graph[" in r:
        return ("rollout trees", _graphs) if r.startswith(("list[", "Sequence[")) else ("rollout tree", _graph)
    if r == "list[float]" and parameters:
        return "scores", _scores
    if "Tensor" in r and parameters:
        return "one row per input", _rows
    if "Parameter" in r:
        return ("named parameters", _named_parameters) if "tuple[" in r else ("parameters", _parameters)
    if r == "EvaluationReport":
        return "evaluation report", _report
    if "JSON" in r:
        return "JSON data", _json
    if r.startswith("list[") and parameters:
        return "one output per input", _outputs
    if r.startswith("Sequence["):
        return "sequence", _sequence
    return "call", _called


@dataclass(frozen=True)
class MethodContract:
    """One protocol method as the wrapper checks it."""

    protocol: str
    name: str
    parameters: tuple[str, ...]
    annotations: tuple[str, ...]
    returns: str
    what: str
    check: Check
    consumes: str | None = None
    """The method whose result this one takes as its first argument (the loss takes the batch)."""


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    return value if isinstance(value, str) else getattr(value, "__name__", str(value))


@functools.cache
def method_contracts(kind: str) -> Mapping[str, MethodContract]:
    """Every method of `kind`'s protocols (see `protocols`), with the check its result gets."""
    found: dict[str, tuple[str, Callable[..., Any]]] = {}
    for protocol in protocols(kind):
        for cls in reversed(protocol.__mro__):
            if not getattr(cls, "_is_protocol", False) or cls.__module__ == "typing":
                continue
            for name, value in vars(cls).items():
                if not name.startswith("_") and inspect.isfunction(value):
                    found.setdefault(name, (protocol.__name__, value))
    contracts: dict[str, MethodContract] = {}
    for name, (protocol_name, function) in found.items():
        signature = inspect.signature(function)
        params = [p for p in signature.parameters.values() if p.name != "self"]
        names = tuple(p.name for p in params)
        returns = _annotation(signature.return_annotation)
        what, check = _check_for(name, names, returns)
        contracts[name] = MethodContract(
            protocol_name, name, names, tuple(_annotation(p.annotation) for p in params), returns, what, check
        )
    # A method consumes another's result when its first parameter has the type only that method
    # makes (collate_fn's batch for the loss), not a type it also takes (a state passed along).
    for name, contract in list(contracts.items()):
        if not contract.annotations:
            continue
        wanted = contract.annotations[0]
        producers = [
            other.name
            for other in contracts.values()
            if other.name != name and other.returns == wanted and wanted not in other.annotations
        ]
        if len(producers) == 1:
            contracts[name] = dataclasses.replace(contract, consumes=producers[0])
    return contracts


# --- the wrapper -----------------------------------------------------------------------------

_GUARDS: _ByIdentity[weakref.ref[Guarded]] = _ByIdentity()
_KINDS_HELD = ("scorer", "system", "sampler")  # attributes named so hold that kind of component


class Guarded:
    """A component held to its protocol: attributes are the component's, protocol methods are
    checked on every call (see the module doc). Build one with `guard`.

    ``isinstance(wrapper, TheComponentClass)`` stays true (``__class__`` is the component's), and
    runtime protocol checks see exactly the methods the component has.
    """

    __guard_component__: Any
    __guard_kind__: str

    def __init__(self, kind: str, component: Any, origin: Origin | None) -> None:
        object.__setattr__(self, "__guard_component__", component)
        object.__setattr__(self, "__guard_kind__", kind)
        object.__setattr__(self, "_guard_origin", origin)
        object.__setattr__(self, "_guard_called", set())
        object.__setattr__(self, "_guard_methods", method_contracts(kind))

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.__guard_component__)

    @property
    def __guard_origin__(self) -> Origin:
        origin: Origin | None = self.__dict__["_guard_origin"]
        if origin is None:  # worked out when first needed: the distribution lookup is slow
            origin = origin_of(self.__guard_component__, self.__guard_kind__)
            object.__setattr__(self, "_guard_origin", origin)
        return origin

    def _guard_origin_text_component(self) -> str:
        return type(self.__guard_component__).__name__

    def __guard_first__(self, method: str) -> bool:
        """True on the first call of this (once-per-component) question for `method`."""
        called: set[str] = self.__dict__["_guard_called"]
        if method in called:
            return False
        called.add(method)
        return True

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("__guard", "_guard")):
            raise AttributeError(name)
        component = self.__dict__["__guard_component__"]
        value = getattr(component, name)
        contract = self.__dict__["_guard_methods"].get(name)
        if contract is not None and callable(value):
            return _checked(self, contract, value)
        held = _guard_of(value)
        return held if held is not None else value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__guard_component__, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.__guard_component__, name)

    def __dir__(self) -> list[str]:
        return dir(self.__guard_component__)

    def __repr__(self) -> str:
        return f"<guarded {self.__guard_kind__} {self.__guard_component__!r}>"


def _checked(guarded: Guarded, contract: MethodContract, method: Callable[..., Any]) -> Callable[..., Any]:
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
        except (AstraError, OSError):
            raise
        except Exception as error:
            call = _Call(guarded, contract, args, kwargs)
            message = f"raised {type(error).__name__}: {error}"
            if contract.consumes is not None:
                producer, consumer = f"{contract.consumes}()", f"{contract.name}()"
                message += (
                    f", given what {producer} returned ({_describe(call.argument(0))}): either {producer} builds "
                    f"something {consumer} cannot take, or {consumer} is broken"
                )
            raise ComponentContractError(f"{guarded.__guard_origin__}: {call.call_text()} {message}") from error
        return contract.check(_Call(guarded, contract, args, kwargs), result)

    checked.__wrapped__ = method  # type: ignore[attr-defined]
    return checked


def _guard_of(value: Any) -> Guarded | None:
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return None
    held = _GUARDS.get(value)
    return held() if held is not None else None


def unwrap(component: Any) -> Any:
    """The component inside a guard (the component itself if it is not guarded)."""
    return component.__guard_component__ if type(component) is Guarded else component


def guard(kind: str, component: V, origin: Origin | ComponentInfo | None = None) -> V:
    """`component` held to the contracts of its `kind`'s protocols (see the module doc).

    `origin` says who provides the component (a registry entry or an `Origin`); by default what
    the build recorded, else the class's module and distribution. Guarding is idempotent (a
    guarded component, or one guarded before, gives the same wrapper) and re-points the
    component's attributes that hold other components to their guards. Kinds without run-time
    contracts (optimizer, scheduler: torch objects that schedulers patch) are returned as they are.

    >>> from astra_core.testing.toy import ToyScorer
    >>> scorer = guard("scorer", ToyScorer())
    >>> scorer.score(["hello hate"])
    [0.5]
    >>> isinstance(scorer, ToyScorer), guard("scorer", scorer) is scorer
    (True, True)
    """
    if type(component) is Guarded or not method_contracts(kind):
        return component
    existing = _guard_of(component)
    if existing is not None:
        return existing  # type: ignore[return-value]
    if origin is not None and not isinstance(origin, Origin):
        origin = _registered(component, origin)
    wrapper = Guarded(kind, component, origin)
    _GUARDS.set(component, weakref.ref(wrapper))
    _repoint(component)
    return wrapper  # type: ignore[return-value]


def _stored_attributes(component: Any) -> Iterator[tuple[str, Any]]:
    stored = getattr(component, "__dict__", None)
    if isinstance(stored, dict):
        yield from list(stored.items())
    for cls in type(component).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot not in ("__dict__", "__weakref__") and hasattr(component, slot):
                yield slot, getattr(component, slot)


def _repoint(component: Any) -> None:
    """Point `component`'s attributes that hold components at their guards (guarding them first
    when the attribute is named for a kind and the object has that kind's methods)."""
    stored = list(_stored_attributes(component))
    made = {}  # the new guards, held until their component's attributes hold them
    for attribute, value in stored:
        kind = attribute.lstrip("_")
        if kind in _KINDS_HELD and type(value) is not Guarded and _looks_like(kind, value):
            made[id(value)] = guard(kind, value)
    for attribute, value in stored:
        held = made.get(id(value)) or (_guard_of(value) if type(value) is not Guarded else None)
        if held is None:
            continue
        # object.__setattr__: a frozen dataclass refuses setattr, but re-pointing a dependency to its
        # guard changes no value the component sees. A read-only slot stays unchecked.
        with contextlib.suppress(AttributeError, TypeError):
            object.__setattr__(component, attribute, held)


def _looks_like(kind: str, value: Any) -> bool:
    main = protocols(kind)[0]
    required = [c.name for c in method_contracts(kind).values() if c.protocol == main.__name__]
    return bool(required) and all(callable(getattr(value, name, None)) for name in required)


# --- reporting -------------------------------------------------------------------------------


def traceback_text(error: BaseException) -> str:
    """`error`'s traceback, its causes included: what the CLI appends to the run's log for a
    `ComponentContractError`, whose terminal output is the one-line message."""
    return "".join(traceback.format_exception(error))
