"""Registration: the entry point, lazy imports, options validated before anything heavy loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from astra_core.errors import OptionsError
from astra_core.plugins import discover

HEAVY = ["torch", "transformers", "sklearn", "profanity_check", "detoxify", "numpy"]

LIGHTNESS_PROBE = """
import json, sys
import astra_scorers.plugin
from astra_core.plugins import discover
plugins = discover()
registry = plugins.registries["scorer"]
for name in ("profanity", "keyword", "detoxify", "llamaguard"):
    registry.get(name).validate({"words": ["x"]} if name == "keyword" else {})
print(json.dumps({
    "heavy": [m for m in %r if m in sys.modules],
    "scorers": registry.names(),
    "broken": [p.name for p in plugins.broken],
}))
"""


def test_registration_and_option_validation_import_nothing_heavy() -> None:
    env = {**os.environ, "ASTRA_PLUGINS": "scorers"}  # other installed plugins are not under test here
    completed = subprocess.run(
        [sys.executable, "-c", LIGHTNESS_PROBE % HEAVY], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert {"profanity", "keyword", "detoxify", "llamaguard"} <= set(result["scorers"])
    assert result["broken"] == []


def test_the_entry_point_registers_every_scorer_under_this_distribution() -> None:
    registry = discover().registries["scorer"]
    for name in ("profanity", "keyword", "detoxify", "llamaguard"):
        info = registry.get(name)
        assert info.provider.plugin == "scorers"
        assert info.provider.distribution == "astra-scorers"
        assert info.summary


def test_profanity_and_keyword_build_through_the_registry() -> None:
    registry = discover().registries["scorer"]
    profanity = registry.get("profanity").build(options={})
    keyword = registry.get("keyword").build(options={"words": ["idiot"], "mode": "fraction"})
    assert profanity.score_texts(["fuck off", "good morning"])[0] > 0.5
    assert keyword.score_texts(["you idiot"]) == [0.5]


@pytest.mark.parametrize("name", ["profanity", "keyword", "detoxify", "llamaguard"])
def test_unknown_options_are_rejected_with_the_component_named(name: str) -> None:
    info = discover().registries.get("scorer", name)
    with pytest.raises(OptionsError, match=rf"scorer '{name}'.*unknown option 'colour'"):
        info.validate({"colour": "red"})


def test_option_defaults_are_filled_in() -> None:
    registry = discover().registries["scorer"]
    keyword = registry.get("keyword").validate({"patterns": ["x+"]})
    assert keyword.model_dump() == {"words": [], "patterns": ["x+"], "case_sensitive": False, "mode": "any"}
    guard = registry.get("llamaguard").validate({})
    assert guard.model_dump()["model"] == "meta-llama/Llama-Guard-3-1B"
    assert registry.get("detoxify").validate({}).model_dump()["label"] == "toxicity"
