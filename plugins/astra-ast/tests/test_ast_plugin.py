"""Registration: the entry point, light imports, and the docs page's examples."""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from astra_ast.options import ASTEvaluatorOptions, ASTSamplerOptions
from astra_core.config import parse_run_config

DOCS = Path(__file__).resolve().parents[3] / "docs" / "ast.md"


def test_registration_imports_neither_torch_nor_the_component_modules() -> None:
    code = (
        "import json, sys\n"
        "from astra_core.plugins import discover\n"
        "found = discover()\n"
        "print(json.dumps({'sampler': found.registries['sampler'].get('ast').summary,\n"
        "  'evaluator': found.registries['evaluator'].get('ast').summary,\n"
        "  'heavy': sorted(m for m in ('torch', 'transformers', 'astra_ast.sampler', 'astra_ast.evaluator',\n"
        "                              'astra_ast.reward') if m in sys.modules)}))\n"
    )
    env = {**os.environ, "ASTRA_PLUGINS": "ast"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    found = json.loads(result.stdout)
    assert found["heavy"] == []
    assert "ASTPrompter" in found["sampler"] and "benign-probe attack success" in found["evaluator"]


def test_the_entry_point_names_the_plugin_module() -> None:
    from importlib.metadata import entry_points

    (entry,) = [ep for ep in entry_points(group="astra_core") if ep.name == "ast"]
    assert entry.value == "astra_ast.plugin"
    assert entry.dist is not None and entry.dist.name == "astra-ast"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.skipif(not DOCS.exists(), reason="docs/ast.md is not in this checkout")
def test_the_docs_run_file_validates_the_sampler_and_evaluator_options() -> None:
    (toml,) = _blocks("toml")
    data = tomllib.loads(toml)
    parse_run_config(data, "docs/ast.md")  # a valid run file as a whole
    for table, model in (("sampler", ASTSamplerOptions), ("evaluator", ASTEvaluatorOptions)):
        options = {k: v for k, v in data[table].items() if k != "name"}
        assert data[table]["name"] == "ast"
        model.model_validate(options)


@pytest.mark.skipif(not DOCS.exists(), reason="docs/ast.md is not in this checkout")
def test_the_docs_python_examples_run() -> None:
    for block in _blocks("python"):
        namespace: dict[str, Any] = {}
        exec(compile(block, str(DOCS), "exec"), namespace)


@pytest.mark.parametrize(
    "module", ["astra_ast.metrics", "astra_ast.reward", "astra_ast.prompt_sets", "astra_ast.evaluator"]
)
def test_module_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
