"""The seed's example end to end, and the Python quickstart's code, as written in the docs."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from astra_core import Trainer, TrainingConfiguration
from astra_core.testing.toy import ToySampler, ToyScorer, ToySystem

if TYPE_CHECKING:
    from conftest import Kit

QUICKSTART = Path(__file__).resolve().parent.parent / "docs" / "quickstart.md"


def test_the_seed_example_trains_with_the_configured_batch_size(kit: Kit) -> None:
    system = ToySystem()
    sampler = ToySampler(system, ToyScorer(), 2, 2)
    algorithm = kit.ToyDPO(system, keep_ties=True)

    trainer = Trainer(
        TrainingConfiguration(training_steps=3, num_episodes_per_experience=4, batch_size=5), sampler, algorithm
    )
    history = trainer.train()

    assert trainer.harness is not None and trainer.harness.batch_size == 5
    assert trainer.optimizer is not None and len(trainer.optimizer.param_groups[0]["params"]) > 0
    assert len(history) == 3 and trainer.global_step == 3
    # 4 episodes x 3 sibling groups = 12 pairs per step, batched by 5
    assert algorithm.batch_sizes == [5, 5, 2] * 3


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)


def test_the_python_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(QUICKSTART.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("quickstart")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, "quickstart", module)
    for block in blocks:
        exec(compile(block, str(QUICKSTART), "exec"), module.__dict__)
    assert (tmp_path / "runs" / "resumed" / "checkpoints" / "step-00000006").is_dir()


def test_the_reliability_page_names_only_tests_that_exist() -> None:
    doc = (QUICKSTART.parent / "reliability.md").read_text(encoding="utf-8")
    named = 0
    current = None
    for match in re.finditer(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`", doc):
        current = match.group(1) or current
        name = match.group(2) or match.group(3)
        assert current is not None
        source = (QUICKSTART.parent.parent / current).read_text(encoding="utf-8")
        if name:
            assert f"def {name}(" in source, f"docs/reliability.md names {current}::{name}, which does not exist"
            named += 1
    assert named >= 30
