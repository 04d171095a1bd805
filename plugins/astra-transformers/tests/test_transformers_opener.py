"""`opener_tokens`: an episode's opener cut once, so a whole tree fits the model and no later context is cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_core.graph import Graph
from astra_core.testing.toy import ToyScorer
from astra_transformers.system import ChatTransformersSystem, TransformersSystem
from astra_transformers.testing import build_tiny_llama

LONG = " ".join(
    f"Post {i}: I moved to a new city last spring and I still cannot find a decent bakery anywhere near my flat."
    for i in range(12)
)  # about 300 tokens of the embedded model: past its 256 positions
PROBE = RESPONSE = 8
DEPTH = 3


def ids(system: TransformersSystem, text: str) -> list[int]:
    return list(system.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_an_opener_keeps_its_last_tokens_as_its_original_text() -> None:
    system = TransformersSystem(probe_tokens=PROBE, response_tokens=RESPONSE, opener_tokens=40)
    opened = system.opening(LONG)
    assert len(ids(system, LONG)) > 256
    assert LONG.endswith(opened) and 30 <= len(ids(system, opened)) <= 40


def test_a_short_opener_and_an_unset_option_keep_the_whole_prompt() -> None:
    assert TransformersSystem(opener_tokens=40).opening("Hello there.") == "Hello there."
    assert TransformersSystem().opening(LONG) == LONG


def test_a_chat_opener_is_cut_too(tmp_path: Path) -> None:
    llama = build_tiny_llama(tmp_path / "llama")
    system = ChatTransformersSystem(
        model=str(llama), target_chat=True, probe_tokens=6, response_tokens=6, opener_tokens=40
    )
    content = system.opening(LONG).messages[0].content
    assert LONG.endswith(content) and len(content) < len(LONG)


@pytest.mark.parametrize("opener_tokens", [None, 256 - DEPTH * (PROBE + RESPONSE)])
def test_an_opener_cut_to_fit_the_tree_leaves_every_later_context_whole(
    tmp_path: Path, opener_tokens: int | None
) -> None:
    ast = pytest.importorskip("astra_ast.sampler")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([LONG]), encoding="utf-8")
    system = TransformersSystem(probe_tokens=PROBE, response_tokens=RESPONSE, opener_tokens=opener_tokens)
    sampler = ast.ASTSampler(system, ToyScorer(), tree_width=2, tree_depth=DEPTH, prompts=str(prompts))
    graphs: list[Graph[str, str]] = sampler.rollouts(2)
    nodes = [node for graph in graphs for node in graph.nodes()]
    cut = [
        node
        for node in nodes
        if len(ids(system, node.context)) > system.tester_context_tokens
        or len(ids(system, node.context + node.probe)) > system.target_context_tokens
    ]
    if opener_tokens is None:
        assert cut  # sliding windows: deep contexts lose their oldest tokens, every turn other ones
    else:
        assert not cut  # every context extends its parent's whole: packed passes share them
