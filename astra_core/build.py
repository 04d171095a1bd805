"""Run config -> live components, in dependency order.

`resolve` looks every name up and validates every option set without building anything heavy;
`build` then constructs scorer -> system -> sampler and algorithm -> evaluator and callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from astra_core.config import ComponentRef, RunConfig
from astra_core.registry import ComponentInfo, ComponentKind, Registries

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


def build(run: ResolvedRun, *, with_evaluator: bool = True) -> BuiltRun:
    """Construct every component of a resolved run, dependencies first."""
    parts = run.components
    scorer = parts["scorer"].info.build(options=parts["scorer"].options)
    system = parts["system"].info.build(scorer, options=parts["system"].options)
    sampler = parts["sampler"].info.build(system, options=parts["sampler"].options)
    algorithm = parts["algorithm"].info.build(system, options=parts["algorithm"].options)
    evaluator = None
    if with_evaluator and "evaluator" in parts:
        evaluator = parts["evaluator"].info.build(sampler, options=parts["evaluator"].options)
    callbacks = [c.info.build(options=c.options) for c in run.callbacks]
    return BuiltRun(scorer, system, sampler, algorithm, evaluator, callbacks)
