"""Run config -> live components, in dependency order.

`resolve` looks every name up and validates every option set without building anything heavy;
`build` then constructs each component after the ones it depends on (`astra_core.kinds`).

`ComponentInfo.build` names the plugin whose factory raises or returns something that is not a
component of its kind; `build` records which plugin built each component, so the contract
wrappers (`astra_core.contracts`) name it when it breaks its protocol at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from astra_core import contracts, kinds
from astra_core.config import ComponentRef, RunConfig
from astra_core.errors import ComponentBuildError
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


def _label(resolved: Resolved) -> str:
    return f"{resolved.info.kind} {resolved.info.name!r} (plugin {resolved.info.provider})"


def build_component(resolved: Resolved, *dependencies: Any, **injected: Any) -> Any:
    """Build one resolved component from its dependencies (and injected keywords, such as an
    optimizer's ``lr``), and check it is of its kind (`astra_core.kinds.Kind.missing`)."""
    built = resolved.info.build(*dependencies, options=resolved.options, **injected)
    record = kinds.kind(resolved.info.kind)
    missing = record.missing(built)
    if missing:
        raise ComponentBuildError(
            f"{_label(resolved)} built a {type(built).__name__} that lacks {', '.join(missing)}; "
            f"a {record.name} must provide {', '.join(record.required) or record.protocol_name} "
            f"(a bug in the plugin: check it with astra_core.testing)"
        )
    contracts.record_origin(built, resolved.info)  # a contract breach later names this plugin
    return built


# Built by the assembly (astra_core.assembly), which owns the parameters and the step count.
_BUILT_BY_ASSEMBLY = ("optimizer", "scheduler", "callback")


def build(run: ResolvedRun, *, with_evaluator: bool = True) -> BuiltRun:
    """Construct every component of a resolved run, in the kinds' build order.

    Each factory receives the components its kind depends on (`astra_core.kinds`). A factory
    that raises, or returns an object lacking its kind's methods, is a `ComponentBuildError`
    naming the kind, the name and the plugin. Each component's origin is recorded
    (`astra_core.contracts.record_origin`), so the contract wrappers the Trainer puts on them
    name the plugin when one breaks its protocol at run time.
    """
    parts = run.components
    built: dict[str, Any] = {}
    for kind in kinds.build_order():
        if kind in _BUILT_BY_ASSEMBLY or kind not in parts or (kind == "evaluator" and not with_evaluator):
            continue
        built[kind] = build_component(parts[kind], *(built[d] for d in kinds.kind(kind).depends_on))
    callbacks = [build_component(c) for c in run.callbacks]
    return BuiltRun(
        built["scorer"], built["system"], built["sampler"], built["algorithm"], built.get("evaluator"), callbacks
    )
