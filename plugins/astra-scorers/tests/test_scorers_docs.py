"""docs/scorers.md stays honest: its Python examples run and its run-file snippets validate."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from astra_core.config import parse_run_config
from astra_core.plugins import discover

DOC = Path(__file__).resolve().parents[3] / "docs" / "scorers.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_page_documents_every_registered_scorer() -> None:
    text = DOC.read_text(encoding="utf-8")
    for info in discover().registries["scorer"]:
        if info.provider.distribution == "astra-scorers":
            assert f"## `{info.name}`" in text, f"docs/scorers.md has no section for scorer {info.name!r}"


def test_the_page_documents_every_option_with_its_default() -> None:
    text = DOC.read_text(encoding="utf-8")
    for info in discover().registries["scorer"]:
        if info.provider.distribution == "astra-scorers":
            for field in info.options_model().model_fields:
                assert f"`{field}`" in text, f"option {field!r} of scorer {info.name!r} is undocumented"


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_examples_run(index: int) -> None:
    exec(compile(_blocks("python")[index], f"docs/scorers.md python block {index}", "exec"), {})


@pytest.mark.parametrize("index", range(len(_blocks("toml"))))
def test_run_file_snippets_name_a_scorer_with_valid_options(index: int) -> None:
    config = parse_run_config(tomllib.loads(_blocks("toml")[index]), "docs/scorers.md")
    info = discover().registries.get("scorer", config.scorer.name)
    assert info.provider.distribution == "astra-scorers"
    info.validate(config.scorer.options)


@pytest.mark.parametrize("module", ["astra_scorers.keyword", "astra_scorers.options", "astra_scorers.profanity"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0
