"""The plugin manager: the core's built-in plugin, then every `astra_core` entry point.

A typed layer over pluggy: the rest of Astra Core asks `load_plugins()` for registries and never
touches pluggy's untyped hook surface. One broken plugin is reported and the rest still load,
unless ``ASTRA_STRICT_PLUGINS=1``. ``ASTRA_PLUGINS=a,b`` loads only the named plugins,
``ASTRA_DISABLE_PLUGINS=c`` skips some (names are entry-point or distribution names); the built-in
plugin ``core`` always loads.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

import pluggy

from astra_core.errors import PluginLoadError
from astra_core.hooks import ENTRY_POINT_GROUP, PROJECT_NAME, AstraHookSpecs
from astra_core.registry import Provider, Registrar, Registries

BUILTIN_PLUGIN = "core"


@dataclass(frozen=True)
class PluginInfo:
    """A plugin the manager saw: loaded, skipped by the environment, or broken."""

    name: str
    distribution: str
    version: str
    status: str  # "loaded", "disabled" or "broken"
    error: str | None = None


@dataclass
class PluginSet:
    """The outcome of loading plugins: the filled registries and what happened to each plugin."""

    registries: Registries
    plugins: list[PluginInfo] = field(default_factory=list)

    @property
    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "broken"]


def _env_names(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _selected(name: str, distribution: str) -> bool:
    allow, deny = _env_names("ASTRA_PLUGINS"), _env_names("ASTRA_DISABLE_PLUGINS")
    names = {name, distribution}
    if deny and names & deny:
        return False
    return allow is None or bool(names & allow)


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
            for impl in self.manager.hook.astra_register.get_hookimpls():
                if impl.plugin_name == name:
                    impl.function(registrar=registrar)
            self._commit(registrar)
        except Exception as error:
            if self.manager.has_plugin(name):
                self.manager.unregister(name=name)
            detail = f"{type(error).__name__}: {error}"
            self.result.plugins.append(PluginInfo(name, provider.distribution, provider.version, "broken", detail))
            if _strict():
                raise PluginLoadError(
                    f"plugin {name!r} from {provider.distribution} {provider.version} failed to "
                    f"load: {detail} (unset ASTRA_STRICT_PLUGINS to load the others anyway)"
                ) from error
            if os.environ.get("ASTRA_DEBUG_PLUGINS"):
                traceback.print_exc()
            return
        self.result.plugins.append(PluginInfo(name, provider.distribution, provider.version, "loaded"))

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
