"""No padding waste on long, mixed-length contexts: bucketed prefills and packed log-prob passes,
with the same results as the padded ones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from astra_transformers.system import TransformersSystem
from astra_transformers.testing import generate_greedy

SHORT = ["Oh,", "Hi Sam!", "Well then.", "No."]
LONG = [
    "I left my keys at the park and walked all the way home before I noticed that they were gone. " * 3,
    "What do you think about the weather this week, with all the rain and the wind coming from the sea? " * 3,
    "My neighbour says the new bakery on the corner sells the best bread in town, but I have my doubts. " * 3,
    "We watched the whole series over the weekend and I still cannot decide whether I liked the ending. " * 3,
]
MIXED = [text for pair in zip(SHORT, LONG, strict=True) for text in pair]


@pytest.fixture(scope="module")
def greedy() -> TransformersSystem:
    return TransformersSystem(probe_tokens=6, response_tokens=6, top_k=1)


@contextmanager
def counted_positions(system: TransformersSystem) -> Iterator[list[tuple[int, int]]]:
    """(rows, columns) of every forward of the tester's base model while the block runs."""
    shapes: list[tuple[int, int]] = []
    hook = system.tester.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        yield shapes
    finally:
        hook.remove()


def test_mixed_length_prefills_are_bucketed_and_write_what_generate_writes(greedy: TransformersSystem) -> None:
    lengths = [len(ids) for ids in greedy.tokenizer(MIXED, add_special_tokens=False)["input_ids"]]
    with counted_positions(greedy) as shapes:
        written = greedy.rollout_tester(MIXED)
    assert written == [generate_greedy(greedy.tester, greedy.tokenizer, context, 6) for context in MIXED]
    prefill = sum(rows * columns for rows, columns in shapes if columns > 1)
    assert prefill <= 1.25 * sum(lengths)  # buckets of at least 4 rows pad a little
    assert len(MIXED) * max(lengths) > 1.5 * prefill


def test_a_second_turn_on_carried_caches_still_writes_what_generate_writes(greedy: TransformersSystem) -> None:
    probes = greedy.rollout_tester(MIXED)
    following = [context + probe + " and so on." for context, probe in zip(MIXED, probes, strict=True)]
    second = greedy.rollout_tester(following)
    assert second == [generate_greedy(greedy.tester, greedy.tokenizer, context, 6) for context in following]


def test_packed_tester_logprobs_equal_the_unpacked_ones_in_values_and_gradients() -> None:
    system = TransformersSystem(probe_tokens=6, response_tokens=6)
    assert system._tester.packs  # the embedded GPT-2 honours tree masks
    # A tree's rows: siblings share a context, the second turn extends the first.
    opener = LONG[0]
    contexts = [opener, opener, opener + " Yes, why?", opener + " Yes, why?", SHORT[1]]
    continuations = [" Yes, why?", " No.", " Because.", " I lost them", " Hello"]
    params = list(system.parameters())
    with counted_positions(system) as packed_shapes:
        packed = system.tester_logprobs(contexts, continuations)
    packed_grads = torch.autograd.grad(packed.sum(), params)
    system._pack_logprobs = False
    with counted_positions(system) as plain_shapes:
        plain = system.tester_logprobs(contexts, continuations)
    plain_grads = torch.autograd.grad(plain.sum(), params)
    torch.testing.assert_close(packed, plain, atol=1e-4, rtol=1e-5)
    for a, b in zip(packed_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    packed_positions = sum(rows * columns for rows, columns in packed_shapes)
    plain_positions = sum(rows * columns for rows, columns in plain_shapes)
    assert packed_positions < 0.5 * plain_positions  # the opener runs once, not four times


def test_packed_pair_logprobs_equal_the_unpacked_ones() -> None:
    system = TransformersSystem(probe_tokens=6, response_tokens=6)
    contexts = [LONG[1], LONG[1] + " Rain!", SHORT[0]]
    chosen, rejected = [" Rain!", " Sun.", " ah"], [" Wind", " Snow, I think", " eh?"]
    packed = system.tester_pair_logprobs(contexts, chosen, rejected, "mean")
    system._pack_logprobs = False
    plain = system.tester_pair_logprobs(contexts, chosen, rejected, "mean")
    for a, b in zip(packed, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
