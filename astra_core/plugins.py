"""The plugin manager: the core's built-in plugin, then every `astra_core` entry point.

A typed layer over pluggy: the rest of Astra Core asks `load_plugins()` for registries and never
touches pluggy's untyped hook surface. One broken plugin is reported and the rest still load,
unless ``ASTRA_STRICT_PLUGINS=1``. ``ASTRA_PLUGINS=a,b`` loads only the named plugins,
``ASTRA_DISABLE_PLUGINS=c`` skips some (names are entry-point or distribution names); the built-in
plugin ``core`` always loads.

Loading tells the truth about each plugin: one that fails to import or raises is ``broken``; one
whose hook never ran or that registered nothing (a misspelt hook name, a missing ``@hookimpl``)
is ``empty``, with the reason; an unknown hook next to working ones is reported on the loaded
plugin. Under ``ASTRA_STRICT_PLUGINS=1`` each of these stops the program. A name that only a
disabled plugin provides is reported as such, not as a component to go and install.
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from astra_core.errors import PluginLoadError
from astra_core.hooks import ENTRY_POINT_GROUP, PROJECT_NAME, AstraHookSpecs
from astra_core.kinds import ComponentKind
from astra_core.registry import Provider, Registrar, Registries

BUILTIN_PLUGIN = "core"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin the manager saw: loaded, skipped by the environment, broken, or empty.

    `error` says what is wrong with a broken or empty plugin, or with a loaded one that also
    implements a hook Astra Core does not have.
    """

    name: str
    distribution: str
    version: str
    status: str  # "loaded", "disabled", "broken" or "empty"
    error: str | None = None


@dataclass
class PluginSet:
    """The outcome of loading plugins: the filled registries and what happened to each plugin."""

    registries: Registries
    plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "broken"]

    @property
    def flagged(self) -> list[PluginInfo]:
        """Plugins that loaded but registered nothing, or carry an unknown hook."""
        return [p for p in self.plugins if p.status == "empty" or (p.status == "loaded" and p.error)]


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _denied(name: str, distribution: str) -> bool:
    deny = _env_names("ASTRA_DISABLE_PLUGINS")
    return bool(deny and {name, distribution} & deny)


def _selected(name: str, distribution: str) -> bool:
    allow = _env_names("ASTRA_PLUGINS")
    if _denied(name, distribution):
        return False
    return allow is None or bool({name, distribution} & allow)


def _origin(provider: Provider) -> str:
    return " ".join(filter(None, (provider.distribution, provider.version)))


def _strict() -> bool:
    return os.environ.get("ASTRA_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


class _Loader:
    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(PROJECT_NAME)
        self.manager.add_hookspecs(AstraHookSpecs)
        self.result = PluginSet(Registries())

    def add(self, name: str, provider: Provider, load: Any) -> None:
        """Import (via `load`) and register one plugin; record failure instead of raising."""
        try:
            plugin: ModuleType | object = load()
            self.manager.register(plugin, name=name)
            registrar = Registrar(provider)
            impls = [i for i in self.manager.hook.astra_register.get_hookimpls() if i.plugin_name == name]
            for impl in impls:
                impl.function(registrar=registrar)
            self._commit(registrar)
        except Exception as error:
            if self.manager.has_plugin(name):
                self.manager.unregister(name=name)
            detail = f"{type(error).__name__}: {error}"
            self.result.plugins.append(PluginInfo(name, provider.distribution, provider.version, "broken", detail))
            if _strict():
                raise PluginLoadError(
                    f"plugin {name!r} from {_origin(provider)} failed to "
                    f"load: {detail} (unset ASTRA_STRICT_PLUGINS to load the others anyway)"
                ) from error
            if os.environ.get("ASTRA_DEBUG_PLUGINS"):
                traceback.print_exc()
            return
        problem = self._problem(name, plugin, ran=bool(impls), registered=len(registrar.staged))
        status = "loaded" if registrar.staged else "empty"
        self.result.plugins.append(PluginInfo(name, provider.distribution, provider.version, status, problem))
        if problem and _strict():
            raise PluginLoadError(
                f"plugin {name!r} from {_origin(provider)}: {problem} "
                f"(unset ASTRA_STRICT_PLUGINS to load the others anyway)"
            )

    def _problem(self, name: str, plugin: object, *, ran: bool, registered: int) -> str | None:
        """Why a plugin that loaded is not what its author meant, or None."""
        unknown: list[str] = []
        while True:  # pluggy reports one unknown hook at a time; earlier plugins are already clean
            try:
                self.manager.check_pending()
                break
            except pluggy.PluginValidationError:
                unknown.extend(c.name for c in self.manager.get_hookcallers(plugin) or () if not c.has_spec())
                self.manager.unregister(name=name)
        hooks = ", ".join(repr(h) for h in unknown)
        if unknown and registered:
            return f"implements {hooks}, which is not an Astra Core hook (hooks: astra_register)"
        if unknown:
            close = difflib.get_close_matches(unknown[0], ["astra_register"], n=1)
            hint = "; did you mean 'astra_register'?" if close else " (hooks: astra_register)"
            return f"registered nothing: {hooks} is not an Astra Core hook{hint}"
        if not ran and callable(getattr(plugin, "astra_register", None)):
            return "registered nothing: its astra_register is not marked with @hookimpl (from astra_core)"
        if not ran:
            return "registered nothing: it implements no astra_register hook"
        if not registered:
            return "registered nothing: its astra_register hook ran but registered no components"
        return None

    def _commit(self, registrar: Registrar) -> None:
        registries = self.result.registries
        if _strict():
            for info in registrar.staged:
                clashes = registries[info.kind].clashes(info)
                if clashes:
                    providers = [str(c.provider) for c in clashes] + [str(info.provider)]
                    from astra_core.errors import DuplicateComponentError

                    raise DuplicateComponentError(info.kind, info.name, providers)
        for info in registrar.staged:
            registries[info.kind].add(info)


@dataclass
class _Disabled:
    """The plugins left out by the environment: asked, on a failed lookup, whether they have the name."""

    entry_points: list[tuple[EntryPoint, Provider]] = field(default_factory=list)
    _found: dict[str, Registries] = field(default_factory=dict)

    def explain(self, kind: ComponentKind, name: str) -> str | None:
        for ep, provider in self.entry_points:
            if ep.name not in self._found:
                self._found[ep.name] = _peek(ep, provider)
            if name in self._found[ep.name][kind]:
                variable = "ASTRA_DISABLE_PLUGINS" if _denied(ep.name, provider.distribution) else "ASTRA_PLUGINS"
                how = "which is disabled by" if variable == "ASTRA_DISABLE_PLUGINS" else "which is not selected by"
                return f"it is provided by plugin {provider}, {how} {variable}"
        return None


def _peek(ep: EntryPoint, provider: Provider) -> Registries:
    """What a disabled plugin would register (only on the error path; any failure: nothing)."""
    loader = _Loader()
    with _environment("ASTRA_STRICT_PLUGINS", None):
        loader.add(ep.name, provider, ep.load)
    return loader.result.registries


@contextmanager
def _environment(variable: str, value: str | None) -> Iterator[None]:
    saved = os.environ.pop(variable, None)
    if value is not None:
        os.environ[variable] = value
    try:
        yield
    finally:
        os.environ.pop(variable, None)
        if saved is not None:
            os.environ[variable] = saved


def _entry_points() -> Iterable[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def _core_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("astra-core")
    except PackageNotFoundError:
        return "0+unknown"


def discover(extra: Iterable[tuple[str, object]] = ()) -> PluginSet:
    """Load the built-in plugin, every selected entry point, and `extra` (name, plugin) pairs.

    `extra` lets tests and embedding code add a plugin object without installing a package.
    """
    loader = _Loader()
    disabled = _Disabled()
    loader.result.registries.explain_unknown(disabled.explain)
    core_version = _core_version()

    def load_builtin() -> object:
        from astra_core import builtin

        return builtin

    loader.add(BUILTIN_PLUGIN, Provider(BUILTIN_PLUGIN, "astra-core", core_version), load_builtin)
    for ep in _entry_points():
        distribution = ep.dist.name if ep.dist is not None else "unknown"
        version = ep.dist.version if ep.dist is not None else "unknown"
        if ep.name == BUILTIN_PLUGIN:
            continue
        if not _selected(ep.name, distribution):
            loader.result.plugins.append(PluginInfo(ep.name, distribution, version, "disabled"))
            disabled.entry_points.append((ep, Provider(ep.name, distribution, version)))
            continue
        loader.add(ep.name, Provider(ep.name, distribution, version), ep.load)
    for name, plugin in extra:
        loader.add(name, Provider(name, "in-process", ""), lambda plugin=plugin: plugin)
    return loader.result


@lru_cache(maxsize=1)
def load_plugins() -> PluginSet:
    """The plugins of this process, loaded once (call `load_plugins.cache_clear()` to reload)."""
    return discover()


def registries() -> Registries:
    """The registries filled by every loaded plugin."""
    return load_plugins().registries
