"""Shared fixtures: the embedded tiny model, never the network."""

from __future__ import annotations

import os

# Before transformers is imported anywhere: nothing in these tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from astra_transformers.system import TransformersSystem


@pytest.fixture(scope="module")
def system() -> TransformersSystem:
    """A system over the embedded model with short generations; tests must not train it."""
    from astra_transformers.system import TransformersSystem

    return TransformersSystem(probe_tokens=8, response_tokens=8)
