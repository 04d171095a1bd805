"""The examples in the core's module docstrings run (a `>>>` line that no longer works fails here)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "astra_core.assembly",
    "astra_core.distributed",
    "astra_core.testing.toy",
    "astra_core.trainer",
    "astra_core.turns",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
