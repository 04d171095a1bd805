"""The detoxify scorer without its extra: a one-line error naming what to install."""

from __future__ import annotations

import sys

import pytest

from astra_core.errors import ComponentBuildError
from astra_core.plugins import discover
from astra_scorers.detoxify_scorer import DetoxifyScorer


def test_missing_detoxify_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detoxify", None)  # makes `import detoxify` fail even where installed
    with pytest.raises(ComponentBuildError) as caught:
        DetoxifyScorer(allow_pickle_weights=True)
    assert str(caught.value) == "scorer 'detoxify' needs the detoxify package: pip install 'astra-scorers[detoxify]'"


def test_building_through_the_registry_keeps_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "detoxify", None)
    info = discover().registries.get("scorer", "detoxify")
    with pytest.raises(ComponentBuildError, match=r"pip install 'astra-scorers\[detoxify\]'"):
        info.build(options={"checkpoint": "/nowhere/model.ckpt", "allow_pickle_weights": True})


def test_detoxify_refuses_its_pickle_checkpoints_without_the_opt_in() -> None:
    from astra_core.errors import ConfigError

    with pytest.raises(ConfigError, match="set allow_pickle_weights = true only for a checkpoint you trust"):
        DetoxifyScorer(checkpoint="/nowhere/model.ckpt")
