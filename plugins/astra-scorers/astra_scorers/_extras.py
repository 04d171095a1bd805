"""The one error every optional-dependency scorer raises when its extra is not installed."""

from __future__ import annotations

from astra_core.errors import ComponentBuildError


def missing_extra(scorer: str, package: str, extra: str) -> ComponentBuildError:
    """The error for `scorer` when `package` is absent: one line naming the pip extra to install."""
    return ComponentBuildError(f"scorer {scorer!r} needs the {package} package: pip install 'astra-scorers[{extra}]'")
