"""Type variables shared by the protocols, and the JSON alias used for configs and reports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeAlias, TypeVar

StateT = TypeVar("StateT")
"""What a conversation is before a turn (for text: the context string)."""
ActionT = TypeVar("ActionT")
"""What the tester contributes in a turn (for text: the probe string)."""
ExampleT = TypeVar("ExampleT")
"""One training example an algorithm cuts out of an experience's rollout trees."""
BatchT = TypeVar("BatchT")
"""A collated batch of training examples."""

StateT_co = TypeVar("StateT_co", covariant=True)
ActionT_co = TypeVar("ActionT_co", covariant=True)
StateT_contra = TypeVar("StateT_contra", contravariant=True)
ActionT_contra = TypeVar("ActionT_contra", contravariant=True)

JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"


def json_safe(data: Any) -> Any:
    """`data` with NaN and infinities as null, so every JSON reader accepts it (``allow_nan=False``)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, Mapping):
        return {str(k): json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data
