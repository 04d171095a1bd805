"""One generic registry of named components, one instance per component kind.

A `ComponentInfo` describes one registered thing: its kind and name, the plugin that provided it,
a factory and an options model, each either an object or a lazy ``"module:attribute"`` path that
is imported only when the component is validated or built. Config strings resolve only to
registered names here, never to import paths. What each kind's factory is called with, and what
it must return, is in `astra_core.kinds`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypedDict, TypeVar, Unpack

from astra_core.errors import (
    ComponentBuildError,
    DuplicateComponentError,
    OptionsError,
    UnknownComponentError,
)
from astra_core.factories import TypedFactory
from astra_core.kinds import KINDS, KINDS_TABLE, ComponentKind

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "KINDS",
    "ComponentInfo",
    "ComponentKind",
    "Details",
    "Provider",
    "Registrar",
    "Registration",
    "Registries",
    "Registry",
    "import_path",
]


FactoryRef = str | Callable[..., Any] | TypedFactory[ComponentKind]
"""A factory: a lazy ``"module:attribute"`` path, a declaration of `astra_core.factories`, or a callable."""
OptionsRef = str | type["BaseModel"] | None


@dataclass(frozen=True)
class Provider:
    """Who registered a component: the plugin (entry point) name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.plugin} ({' '.join(filter(None, (self.distribution, self.version)))})"


def import_path(path: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not of the form 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ComponentInfo:
    """A registered component: where it comes from, how to build it, what options it takes."""

    kind: ComponentKind
    name: str
    factory: FactoryRef
    options: str | type[BaseModel] | None
    summary: str
    provider: Provider
    aliases: tuple[str, ...] = ()

    def load_factory(self) -> Callable[..., Any]:
        """The factory itself, importing it if it was registered as a path.

        A factory declared with `astra_core.factories` is unwrapped, after checking that it was
        declared for this kind.
        """
        factory = self.factory
        if isinstance(factory, str):
            try:
                factory = import_path(factory)
            except Exception as error:  # any import failure is the plugin's, reported as such
                raise ComponentBuildError(
                    f"{self.kind} {self.name!r} from plugin {self.provider}: cannot import "
                    f"{self.factory!r}: {type(error).__name__}: {error}"
                ) from error
        if isinstance(factory, TypedFactory):
            if factory.kind != self.kind:
                raise ComponentBuildError(
                    f"{self.kind} {self.name!r} from plugin {self.provider}: {self.factory!r} is declared as a "
                    f"{factory.kind} factory (astra_core.factories.{factory.kind}), not a {self.kind} one"
                )
            return factory.factory
        loaded: Callable[..., Any] = factory
        return loaded

    def options_model(self) -> type[BaseModel]:
        """The pydantic model of this component's options (derived from the factory if unset)."""
        from pydantic import BaseModel

        if self.options is None:
            return _model_from_signature(self)
        model = import_path(self.options) if isinstance(self.options, str) else self.options
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ComponentBuildError(
                f"{self.kind} {self.name!r} from plugin {self.provider}: options must be a "
                f"pydantic model, got {model!r}"
            )
        return model

    def validate(self, options: Mapping[str, Any] | None = None) -> BaseModel:
        """Validate options from a config; errors name this component and each bad field."""
        from pydantic import ValidationError

        model = self.options_model()
        given = dict(options or {})
        unknown = sorted(set(given) - set(model.model_fields))
        if unknown:
            known = ", ".join(model.model_fields) or "none"
            raise OptionsError(
                self.kind, self.name, [f"unknown option {key!r} (valid options: {known})" for key in unknown]
            )
        try:
            return model.model_validate(given)
        except ValidationError as error:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in error.errors()]
            raise OptionsError(self.kind, self.name, problems) from None

    def build(self, *dependencies: Any, options: Mapping[str, Any] | BaseModel | None = None, **injected: Any) -> Any:
        """Validate `options` (unless already validated) and call the factory."""
        from pydantic import BaseModel

        validated = options if isinstance(options, BaseModel) else self.validate(options)
        keywords = {key: getattr(validated, key) for key in type(validated).model_fields}
        factory = self.load_factory()
        try:
            return factory(*dependencies, **injected, **keywords)
        except (ComponentBuildError, OptionsError):
            raise
        except Exception as error:
            from astra_core.errors import AstraError

            if isinstance(error, AstraError):
                raise
            raise ComponentBuildError(
                f"building {self.kind} {self.name!r} (plugin {self.provider}) with options "
                f"{keywords} failed: {type(error).__name__}: {error}"
            ) from error


def _model_from_signature(info: ComponentInfo) -> type[BaseModel]:
    from pydantic import ConfigDict, create_model

    factory = info.load_factory()
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameters = list(inspect.signature(target).parameters.values())
    if inspect.isclass(factory):
        parameters = parameters[1:]  # self
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}
    record = KINDS_TABLE[info.kind]
    skip = len(record.dependencies)
    fields: dict[str, Any] = {}
    for index, parameter in enumerate(parameters):
        if index < skip and parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name in record.injected:
            continue
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model: type[BaseModel] = create_model(
        f"{info.name}_options", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    return model


Explainer = Callable[[ComponentKind, str], "str | None"]


@dataclass
class Registry:
    """The registered components of one kind, by name (aliases included)."""

    kind: ComponentKind
    _entries: dict[str, ComponentInfo] = field(default_factory=dict)
    _conflicts: dict[str, list[ComponentInfo]] = field(default_factory=dict)
    explain: Explainer | None = None
    """Says why a name no loaded plugin registered is missing (a disabled plugin has it), or None."""

    def add(self, info: ComponentInfo) -> None:
        """Add a component; a name taken by another plugin becomes a conflict, never overwritten."""
        for name in (info.name, *info.aliases):
            existing = self._entries.get(name)
            if existing is None and name not in self._conflicts:
                self._entries[name] = info
                continue
            if existing is not None:
                self._conflicts[name] = [existing]
                del self._entries[name]
            self._conflicts[name].append(info)

    def clashes(self, info: ComponentInfo) -> list[ComponentInfo]:
        """The components already registered under any of `info`'s names."""
        found = [self._entries[n] for n in (info.name, *info.aliases) if n in self._entries]
        for n in (info.name, *info.aliases):
            found.extend(self._conflicts.get(n, []))
        return found

    def get(self, name: str) -> ComponentInfo:
        """The component called `name`; errors teach the available names."""
        if name in self._conflicts:
            raise DuplicateComponentError(self.kind, name, [str(i.provider) for i in self._conflicts[name]])
        try:
            return self._entries[name]
        except KeyError:
            available = self.names()
            close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
            reason = self.explain(self.kind, name) if self.explain is not None else None
            raise UnknownComponentError(self.kind, name, available, close, reason=reason) from None

    def names(self) -> list[str]:
        """Every usable name, aliases included, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ComponentInfo]:
        """Each registered component once (not once per alias), conflicting ones included."""
        seen: set[int] = set()
        every = [*self._entries.values(), *(i for infos in self._conflicts.values() for i in infos)]
        for info in sorted(every, key=lambda i: (i.name, str(i.provider))):
            if id(info) not in seen:
                seen.add(id(info))
                yield info

    def conflicts(self) -> dict[str, list[ComponentInfo]]:
        """Names registered by more than one plugin."""
        return {name: list(infos) for name, infos in self._conflicts.items()}


class Registries:
    """The registry of every component kind."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}

    def __getitem__(self, kind: ComponentKind) -> Registry:
        return self._by_kind[kind]

    def explain_unknown(self, explain: Explainer) -> None:
        """Let `explain(kind, name)` say why a name is missing (see `Registry.explain`)."""
        for registry in self._by_kind.values():
            registry.explain = explain

    def kind(self, kind: str) -> Registry:
        """The registry for `kind`, given as an unchecked string (from a config or the CLI)."""
        if kind not in self._by_kind:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            raise UnknownComponentError("component kind", kind, list(KINDS), close)
        return self._by_kind[kind]

    def __iter__(self) -> Iterator[Registry]:
        return iter(self._by_kind.values())

    def get(self, kind: ComponentKind, name: str) -> ComponentInfo:
        """Shorthand for ``registries[kind].get(name)``."""
        return self._by_kind[kind].get(name)


class Details(TypedDict, total=False):
    """What a registration may say besides name and factory (all optional)."""

    options: OptionsRef
    """The pydantic model of the component's options, or its ``"module:attribute"`` path."""
    summary: str
    """One line for ``astra plugins``."""
    aliases: Sequence[str]
    """Other names a run file may use."""


K = TypeVar("K", bound=ComponentKind)


class Registration(Generic[K]):
    """``registrar.<kind>(name, factory, options=..., summary=..., aliases=...)``: register one `kind`.

    `factory` is a lazy ``"module:attribute"`` path (imported only when a run builds the
    component), an object declared with `astra_core.factories` (which mypy checks against the
    kind's protocol), or any callable. It is called as `astra_core.kinds` says for the kind
    (``repr(registrar.sampler)`` shows the call). `options` is a pydantic model (or its path)
    of the options a run file may set; without one, it is derived from the factory's signature.
    """

    def __init__(self, registrar: Registrar, kind: K) -> None:
        self.registrar, self.kind = registrar, kind

    def __call__(
        self, name: str, factory: str | Callable[..., Any] | TypedFactory[K], **details: Unpack[Details]
    ) -> None:
        self.registrar.add(self.kind, name, factory, **details)

    def __repr__(self) -> str:
        return f"<registrar.{self.kind}: {KINDS_TABLE[self.kind].call}>"


class Registrar:
    """What a plugin's `astra_register` hook receives: it records that plugin's components.

    One `Registration` per kind (``registrar.algorithm(...)``, ``registrar.sampler(...)``, ...;
    the kinds are `astra_core.kinds`), or `add` with the kind as its first argument.
    Registrations are staged and committed together once the hook returns, so a plugin that
    raises half-way registers nothing.
    """

    # Declared for mypy, filled from the table of kinds in __init__ (a test keeps them equal).
    scorer: Registration[Literal["scorer"]]
    system: Registration[Literal["system"]]
    sampler: Registration[Literal["sampler"]]
    algorithm: Registration[Literal["algorithm"]]
    evaluator: Registration[Literal["evaluator"]]
    optimizer: Registration[Literal["optimizer"]]
    scheduler: Registration[Literal["scheduler"]]
    callback: Registration[Literal["callback"]]

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.staged: list[ComponentInfo] = []
        for kind in KINDS:
            setattr(self, kind, Registration(self, kind))

    def add(self, kind: ComponentKind, name: str, factory: FactoryRef, **details: Unpack[Details]) -> None:
        """Register `factory` as the `kind` called `name` (see `Registration`)."""
        unexpected = sorted(set(details) - Details.__optional_keys__)
        if unexpected:  # mypy catches these; plain Python would otherwise drop them silently
            raise TypeError(
                f"registering {kind} {name!r}: unexpected {', '.join(unexpected)} (expected options, summary, aliases)"
            )
        options, summary = details.get("options"), details.get("summary", "")
        aliases = details.get("aliases", ())
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if not name or ":" in name:
            raise ValueError(f"component name {name!r} must be non-empty and contain no ':'")
        if isinstance(factory, TypedFactory) and factory.kind != kind:
            raise ValueError(f"{kind} {name!r}: the factory is declared as a {factory.kind} factory")
        self.staged.append(ComponentInfo(kind, name, factory, options, summary, self.provider, tuple(aliases)))
