"""One exception type per user mistake. Each message says what was wrong and what to do.

Everything a user can cause derives from `AstraError`; the CLI prints its message as one line and
exits 2. Anything else escaping the CLI is a bug in Astra Core or a plugin.
"""

from __future__ import annotations

from collections.abc import Sequence


class AstraError(Exception):
    """A mistake the user can fix; the message is one line that says how."""


class ConfigError(AstraError):
    """A run file or configuration value is wrong."""


class UnknownComponentError(AstraError, KeyError):
    """A config names a component that no loaded plugin registered.

    `reason`, when known, says why instead of the general advice (the plugin that provides the
    name is disabled).
    """

    def __init__(
        self, kind: str, name: str, available: Sequence[str], close: Sequence[str], *, reason: str | None = None
    ) -> None:
        self.kind, self.name = kind, name
        self.available, self.close = list(available), list(close)
        self.reason = reason
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        names = ", ".join(available) if available else "none"
        if reason:
            message = f"unknown {kind} {name!r}: {reason}"
        else:
            message = (
                f"unknown {kind} {name!r}: {hint}available {kind}s: {names}; "
                f"run `astra plugins` to list plugins, or install the one that provides it"
            )
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DuplicateComponentError(AstraError):
    """Two plugins registered the same name for the same kind of component."""

    def __init__(self, kind: str, name: str, providers: Sequence[str]) -> None:
        self.kind, self.name, self.providers = kind, name, list(providers)
        super().__init__(
            f"{kind} {name!r} is registered by more than one plugin ({' and '.join(providers)}); "
            f"disable one with ASTRA_DISABLE_PLUGINS=<plugin name>"
        )


class OptionsError(AstraError):
    """A component's options do not validate against its declared options model."""

    def __init__(self, kind: str, name: str, problems: Sequence[str]) -> None:
        self.kind, self.name, self.problems = kind, name, list(problems)
        super().__init__(f"bad options for {kind} {name!r}: {'; '.join(problems)}")


class PluginLoadError(AstraError):
    """A plugin failed to import or register (raised only in strict mode)."""


class ComponentBuildError(AstraError):
    """A registered component raised while being built from valid options."""


class ComponentContractError(AstraError):
    """A built component returned output that breaks its protocol (a bug in the plugin)."""


class CheckpointError(AstraError):
    """A checkpoint is missing, incomplete, corrupted or from another run."""


class TrainingError(AstraError):
    """Training cannot go on (for example, too many non-finite losses in a row)."""
