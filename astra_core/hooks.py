"""The pluggy hook specifications, and the `hookimpl` marker plugin authors decorate with.

A plugin is a module named by an entry point in the `astra_core` group::

    # pyproject.toml
    [project.entry-points.astra_core]
    my_plugin = "my_package.plugin"

    # my_package/plugin.py
    from astra_core import hookimpl, Registrar

    @hookimpl
    def astra_register(registrar: Registrar) -> None:
        registrar.algorithm("my-algo", "my_package.algo:factory",
                            options="my_package.options:MyOptions", summary="...")

    # my_package/algo.py (imported only when a run builds "my-algo")
    factory = astra_core.factories.algorithm(MyAlgorithm)  # mypy checks MyAlgorithm here

The module must stay light: factories and options models are named as ``"module:attribute"``
strings and imported only when a run needs them. The kinds, and what each factory is called
with, are in `astra_core.kinds`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from astra_core.registry import Registrar

PROJECT_NAME = "astra_core"
ENTRY_POINT_GROUP = "astra_core"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class AstraHookSpecs:
    """Every hook a plugin may implement."""

    @hookspec
    def astra_register(self, registrar: Registrar) -> None:
        """Register this plugin's components.

        Called once for each plugin while the plugin manager loads, before any component is
        built. `registrar` records every component under this plugin's name; all of a plugin's
        registrations take effect together, or none do if the hook raises. Do not import heavy
        libraries here: pass factories and options models as ``"module:attribute"`` strings.
        """
