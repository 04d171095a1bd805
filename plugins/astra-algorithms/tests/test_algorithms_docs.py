"""docs/algorithms.md stays true: its run files build and train, its Python runs, its option
tables list every option with its real default."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from astra_algorithms.options import DPOOptions, GRPOOptions, IPOOptions, PPOOptions
from astra_core import Trainer
from astra_core.build import build, resolve
from astra_core.config import parse_run_config

PAGE = Path(__file__).resolve().parents[3] / "docs" / "algorithms.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)


def run_file() -> dict[str, Any]:
    full = [tomllib.loads(block) for block in blocks("toml") if "[training]" in block]
    assert len(full) == 1, "the page should hold exactly one full run file"
    return full[0]


def train(data: dict[str, Any], steps: int) -> list[dict[str, float]]:
    config = parse_run_config(data, "docs/algorithms.md")
    config.training.training_steps = steps
    run = build(resolve(config), with_evaluator=False)
    return Trainer(config.training, run.sampler, run.algorithm).train()


def test_the_run_file_trains() -> None:
    history = train(run_file(), steps=2)
    assert len(history) == 2 and "dpo/loss" in history[-1]


@pytest.mark.parametrize("name", ["ipo", "ppo", "grpo"])
def test_each_algorithm_table_swaps_into_the_run_file(name: str) -> None:
    tables = [tomllib.loads(b)["algorithm"] for b in blocks("toml") if f'name = "{name}"' in b]
    assert tables, f"no [algorithm] table for {name}"
    data = run_file() | {"algorithm": tables[0]}
    history = train(data, steps=1)
    assert any(key.startswith(f"{name}/") for key in history[-1])


def test_the_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = blocks("python")
    exec(compile(code, str(PAGE), "exec"), {})
    assert "mean reward:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "model"), [("dpo", DPOOptions), ("ipo", IPOOptions), ("ppo", PPOOptions), ("grpo", GRPOOptions)]
)
def test_every_option_is_documented_with_its_default(name: str, model: type[BaseModel]) -> None:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
    for field, info in model.model_fields.items():
        default = info.default
        shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        if isinstance(default, str):
            shown = f'"{default}"'
        assert re.search(rf"\| `{field}`\s*\| `?{re.escape(shown)}`?\s*\|", section), f"{name}.{field} = {shown}"
