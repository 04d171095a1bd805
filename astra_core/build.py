"""Run config -> live components, in dependency order.

`resolve` looks every name up and validates every option set without building anything heavy;
`build` then constructs each component after the ones it depends on (`astra_core.kinds`).

Plugins are checked at both edges: `ComponentInfo.build` names the plugin whose factory raises or
returns something that is not a component of its kind, and `build` guards the outputs the rest
of a run relies on (one log-prob per pair, one probe or response per context, one episode per
requested rollout), so a plugin breaking its protocol at run time is a `ComponentContractError`
naming it, not a broadcast that silently trains on garbage or a shape error deep in a loss.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from astra_core import kinds
from astra_core.config import ComponentRef, RunConfig
from astra_core.errors import ComponentBuildError, ComponentContractError
from astra_core.kinds import ComponentKind
from astra_core.registry import ComponentInfo, Registries

if TYPE_CHECKING:
    from pydantic import BaseModel


@dataclass(frozen=True)
class Resolved:
    """A component reference looked up and its options validated."""

    info: ComponentInfo
    options: BaseModel

    def describe(self) -> dict[str, Any]:
        """Name, provider and validated options (defaults filled in), as plain data."""
        return {
            "name": self.info.name,
            "provider": str(self.info.provider),
            "options": self.options.model_dump(mode="json"),
        }


@dataclass(frozen=True)
class ResolvedRun:
    """Every component of a run, resolved."""

    config: RunConfig
    components: dict[str, Resolved]
    callbacks: list[Resolved] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The fully resolved configuration, options with their defaults filled in."""
        data: dict[str, Any] = {"training": self.config.training.model_dump(mode="json")}
        for key, resolved in self.components.items():
            if key in ("optimizer", "lr_scheduler"):
                data["training"][key] = resolved.describe()
            else:
                data[key] = resolved.describe()
        data["callbacks"] = [c.describe() for c in self.callbacks]
        return data


def _resolve(registries: Registries, kind: ComponentKind, ref: ComponentRef) -> Resolved:
    info = registries.get(kind, ref.name)
    return Resolved(info, info.validate(ref.options))


def resolve(config: RunConfig, registries: Registries | None = None) -> ResolvedRun:
    """Look up every component of `config` and validate its options; builds nothing."""
    if registries is None:
        from astra_core.plugins import registries as loaded

        registries = loaded()
    training = config.training
    components: dict[str, Resolved] = {
        "optimizer": _resolve(registries, "optimizer", training.optimizer),
        "lr_scheduler": _resolve(registries, "scheduler", training.scheduler_ref()),
        "scorer": _resolve(registries, "scorer", config.scorer),
        "system": _resolve(registries, "system", config.system),
        "sampler": _resolve(registries, "sampler", config.sampler),
        "algorithm": _resolve(registries, "algorithm", config.algorithm),
    }
    if config.evaluator is not None:
        components["evaluator"] = _resolve(registries, "evaluator", config.evaluator)
    callbacks = [_resolve(registries, "callback", ref) for ref in config.callbacks]
    return ResolvedRun(config, components, callbacks)


@dataclass
class BuiltRun:
    """The live components of a run."""

    scorer: Any
    system: Any
    sampler: Any
    algorithm: Any
    evaluator: Any | None
    callbacks: list[Any]


_LOGPROB_METHODS = ("tester_logprobs", "baseline_logprobs", "target_logprobs")
_ROLLOUT_METHODS = {"rollout_tester": "probes", "rollout_target": "responses"}


def _argument(args: Sequence[Any], kwargs: Mapping[str, Any], position: int, name: str) -> Any:
    return args[position] if len(args) > position else kwargs.get(name)


def _install_check(component: Any, method: str, check: Callable[[Sequence[Any], Mapping[str, Any], Any], None]) -> None:
    """Wrap `component.method` so every result passes `check(args, kwargs, result)` first."""
    original = getattr(component, method, None)
    if original is None or getattr(original, "__astra_checked__", False):
        return

    @functools.wraps(original)
    def checked(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        check(args, kwargs, result)
        return result

    checked.__astra_checked__ = True  # type: ignore[attr-defined]
    # On the instance, so identity and isinstance stay the same; __slots__ or a frozen class
    # refuses it, and then the component keeps its unchecked method.
    with contextlib.suppress(AttributeError, TypeError):
        setattr(component, method, checked)


def _check_logprobs(label: str, method: str) -> Callable[[Sequence[Any], Mapping[str, Any], Any], None]:
    def check(args: Sequence[Any], kwargs: Mapping[str, Any], result: Any) -> None:
        contexts = _argument(args, kwargs, 0, "contexts")
        if contexts is None:
            return
        shape = getattr(result, "shape", None)
        if shape is None or tuple(shape) != (len(contexts),):
            got = f"shape {tuple(shape)}" if shape is not None else f"a {type(result).__name__}"
            raise ComponentContractError(
                f"{label}.{method} returned {got} for {len(contexts)} (context, continuation) pairs; "
                f"it must return a 1-D tensor with one log-prob per pair "
                f"(a bug in the plugin: check it with astra_core.testing.check_system)"
            )

    return check


def _check_outputs(label: str, method: str, what: str) -> Callable[[Sequence[Any], Mapping[str, Any], Any], None]:
    def check(args: Sequence[Any], kwargs: Mapping[str, Any], result: Any) -> None:
        contexts = _argument(args, kwargs, 0, "contexts")
        if contexts is not None and (not isinstance(result, Sequence) or len(result) != len(contexts)):
            got = f"{len(result)} {what}" if isinstance(result, Sequence) else f"a {type(result).__name__}"
            raise ComponentContractError(
                f"{label}.{method} returned {got} for {len(contexts)} contexts; it must return one per context "
                f"(a bug in the plugin: check it with astra_core.testing.check_system)"
            )

    return check


def _check_rollouts(label: str) -> Callable[[Sequence[Any], Mapping[str, Any], Any], None]:
    def check(args: Sequence[Any], kwargs: Mapping[str, Any], result: Any) -> None:
        count = _argument(args, kwargs, 0, "count")
        if isinstance(count, int) and (not isinstance(result, Sequence) or len(result) != count):
            got = f"{len(result)} episodes" if isinstance(result, Sequence) else f"a {type(result).__name__}"
            raise ComponentContractError(
                f"{label}.rollouts({count}) returned {got}; it must return one rollout graph per episode "
                f"(a bug in the plugin: check it with astra_core.testing.check_sampler)"
            )

    return check


def _label(resolved: Resolved) -> str:
    return f"{resolved.info.kind} {resolved.info.name!r} (plugin {resolved.info.provider})"


def _build(resolved: Resolved, *dependencies: Any) -> Any:
    built = resolved.info.build(*dependencies, options=resolved.options)
    record = kinds.kind(resolved.info.kind)
    missing = record.missing(built)
    if missing:
        raise ComponentBuildError(
            f"{_label(resolved)} built a {type(built).__name__} that lacks {', '.join(missing)}; "
            f"a {record.name} must provide {', '.join(record.required) or record.protocol_name} "
            f"(a bug in the plugin: check it with astra_core.testing)"
        )
    return built


def guard_system(system: Any, label: str) -> None:
    """Check every later call of `system`'s log-prob and rollout methods against the protocol.

    A log-prob method must return a tensor of shape ``(len(contexts),)`` (a ``(B, 1)`` result
    would broadcast against ``(B,)`` into a ``(B, B)`` loss that trains on garbage without an
    error); ``rollout_tester`` and ``rollout_target`` must return one output per context.
    Breaking either raises `ComponentContractError` naming `label`. The check wraps the methods
    on the instance, costs a shape comparison per call, and is skipped for classes whose
    instances cannot take attributes.
    """
    for method in _LOGPROB_METHODS:
        _install_check(system, method, _check_logprobs(label, method))
    for method, what in _ROLLOUT_METHODS.items():
        _install_check(system, method, _check_outputs(label, method, what))


def guard_sampler(sampler: Any, label: str) -> None:
    """Check that a sampler's ``rollouts(count)`` returns `count` episodes (see `guard_system`)."""
    _install_check(sampler, "rollouts", _check_rollouts(label))


# Built by the trainer, which owns the parameters and the number of training steps they need.
_BUILT_BY_TRAINER = ("optimizer", "scheduler", "callback")


def build(run: ResolvedRun, *, with_evaluator: bool = True) -> BuiltRun:
    """Construct every component of a resolved run, in the kinds' build order.

    Each factory receives the components its kind depends on (`astra_core.kinds`). A factory
    that raises, or returns an object lacking its kind's methods, is a `ComponentBuildError`
    naming the kind, the name and the plugin. The system and sampler are guarded
    (`guard_system`, `guard_sampler`): a plugin returning wrongly shaped output at run time
    raises `ComponentContractError` naming it.
    """
    parts = run.components
    built: dict[str, Any] = {}
    for kind in kinds.build_order():
        if kind in _BUILT_BY_TRAINER or kind not in parts or (kind == "evaluator" and not with_evaluator):
            continue
        built[kind] = _build(parts[kind], *(built[d] for d in kinds.kind(kind).depends_on))
        if kind == "system":
            guard_system(built[kind], _label(parts[kind]))
        elif kind == "sampler":
            guard_sampler(built[kind], _label(parts[kind]))
    callbacks = [c.info.build(options=c.options) for c in run.callbacks]
    return BuiltRun(
        built["scorer"], built["system"], built["sampler"], built["algorithm"], built.get("evaluator"), callbacks
    )
