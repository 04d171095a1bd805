"""docs/transformers.md stays true: its Python examples run (the embedded tiny GPT-2, a tiny
random Llama with a chat template, a LoRA tester; nothing is downloaded)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[3] / "docs" / "transformers.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_page_shows_the_typed_chat_wiring() -> None:
    assert any("ASTSampler(system" in block and "ChatTransformersSystem" in block for block in BLOCKS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_examples_run(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "astra_ast" in BLOCKS[index]:
        pytest.importorskip("astra_ast")
        pytest.importorskip("astra_algorithms")
        pytest.importorskip("astra_scorers")
    monkeypatch.chdir(tmp_path)  # anything an example writes lands in a temp dir
    exec(compile(BLOCKS[index], f"docs/transformers.md python block {index}", "exec"), {})
