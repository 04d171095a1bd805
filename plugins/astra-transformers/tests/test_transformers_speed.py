"""The speed levers keep results exact: the lean decode loop, its shared prefills, and the log-prob memo."""

from __future__ import annotations

from typing import cast

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from astra_core.protocols import Reduction
from astra_core.testing.toy import ToyScorer
from astra_transformers.generation import Decoder, Sampling, make_room, process_scores
from astra_transformers.logprobs import LogprobMemo, length_buckets
from astra_transformers.system import TransformersSystem
from astra_transformers.testing import generate_greedy

CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,", "I left my keys at the park."]


@pytest.fixture(scope="module")
def greedy() -> TransformersSystem:
    return TransformersSystem(probe_tokens=6, response_tokens=6, top_k=1)


def test_lean_loop_greedy_writes_what_generate_writes(greedy: TransformersSystem) -> None:
    batched = greedy.rollout_tester(CONTEXTS)  # left-padded batch of mixed lengths
    alone = [generate_greedy(greedy.tester, greedy.tokenizer, context, 6) for context in CONTEXTS]
    assert batched == alone
    responses = greedy.rollout_target(CONTEXTS)
    assert responses == [generate_greedy(greedy.target, greedy.target_tokenizer, c, 6) for c in CONTEXTS]


def test_shared_contexts_are_prefilled_once_and_give_each_copy_its_own_sample(greedy: TransformersSystem) -> None:
    repeated = [CONTEXTS[0], CONTEXTS[0], CONTEXTS[2], CONTEXTS[0], CONTEXTS[2]]
    distinct = greedy.rollout_tester([CONTEXTS[0], CONTEXTS[2]])
    assert greedy.rollout_tester(repeated) == [distinct[0], distinct[0], distinct[1], distinct[0], distinct[1]]
    prefill_rows: list[int] = []
    hook = greedy.tester.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_rows.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    try:
        greedy.rollout_tester(repeated)
    finally:
        hook.remove()
    assert prefill_rows[0] == 2  # two distinct contexts prefilled...
    assert set(prefill_rows[1:]) == {5}  # ...then every copy decodes


def test_sampling_with_shared_contexts_repeats_under_the_seed(system: TransformersSystem) -> None:
    siblings = [context for context in CONTEXTS for _ in range(2)]
    torch.manual_seed(11)
    first = system.rollout_tester(siblings)
    torch.manual_seed(11)
    second = system.rollout_tester(siblings)
    assert first == second
    assert len(set(first)) > len(CONTEXTS)  # siblings share a prefill but sample apart


@pytest.mark.parametrize(
    "sampling", [Sampling(), Sampling(0.7, 0, 1.0), Sampling(1.0, 5, 1.0), Sampling(1.3, 50, 0.9), Sampling(1, 0, 0.5)]
)
def test_warpers_match_generate_s_processors(sampling: Sampling) -> None:
    scores = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    eos = 4
    for first in (True, False):
        processors = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(1 if first else 0, 1, eos)])
        if sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
        expected = processors(cast(torch.LongTensor, torch.zeros((3, 1), dtype=torch.long)), scores.clone())
        assert torch.equal(process_scores(scores, sampling, torch.tensor([eos]), first), expected)


def test_generation_with_top_p_temperature_and_top_k_repeats_under_the_seed() -> None:
    warped = TransformersSystem(probe_tokens=5, temperature=0.8, top_k=20, top_p=0.9)
    torch.manual_seed(5)
    first = warped.rollout_tester(CONTEXTS)
    torch.manual_seed(5)
    assert warped.rollout_tester(CONTEXTS) == first


def fresh(
    system: TransformersSystem, role: str, contexts: list[str], probes: list[str], reduction: Reduction
) -> torch.Tensor:
    """What the role's log-prob call computes with an empty memo."""
    saved = system._memos
    system._memos = {}
    try:
        method = system.target_logprobs if role == "target" else system.baseline_logprobs
        return method(contexts, probes, reduction)
    finally:
        system._memos = saved


def test_the_target_s_prefill_serves_target_and_baseline_logprobs_exactly() -> None:
    system = TransformersSystem(probe_tokens=8, response_tokens=8)
    # A context longer than the model and an empty one are cut and started differently when
    # answered and when scored: they miss the memo and are computed fresh.
    long_context = "word " * 400
    contexts = [*CONTEXTS, long_context, ""]
    torch.manual_seed(0)
    probes = system.rollout_tester(contexts)
    system.rollout_target([system.join(c, p) for c, p in zip(contexts, probes, strict=True)])
    memo = system._memos[id(system._target)]
    forwards: list[int] = []
    hook = system.target.base_model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        hits = memo.hits
        system.target_logprobs(CONTEXTS, probes[:4], "mean")
        assert memo.hits - hits == 4
        assert not forwards  # no target forward: every value came from the rollout's prefill
        hits, misses = memo.hits, memo.misses
        from_memo = system.target_logprobs(contexts, probes, "mean")
        reference = system.baseline_logprobs(contexts, probes, "sum")  # the baseline is the target: memo too
        assert (memo.hits - hits, memo.misses - misses) == (8, 4)
    finally:
        hook.remove()
    assert torch.allclose(from_memo, fresh(system, "target", contexts, probes, "mean"), atol=1e-5, rtol=0)
    assert torch.allclose(reference, fresh(system, "baseline", contexts, probes, "sum"), atol=1e-5, rtol=0)


def test_a_memo_entry_serves_only_the_exact_token_ids_it_was_recorded_with() -> None:
    system = TransformersSystem(probe_tokens=4, response_tokens=4)
    context, probe = "The movie was", " great"
    system.rollout_target([system.join(context, probe)])
    memo = system._memos[id(system._target)]
    hits, misses = memo.hits, memo.misses
    # A different split of the same text gives other token ids: computed fresh, not from the memo.
    system.target_logprobs(["The movie w"], ["as great"])
    assert (memo.hits, memo.misses) == (hits, misses + 1)
    assert torch.allclose(
        system.target_logprobs([context], [probe]), fresh(system, "target", [context], [probe], "sum"), atol=1e-5
    )
    assert memo.hits == hits + 1
    # The tester trains, so its log-probs never come from a memo.
    assert system.tester_logprobs([context], [probe]).requires_grad


def test_a_probe_that_tokenises_longer_than_it_was_generated_is_still_served_by_the_memo() -> None:
    # Generated tokens decoded and tokenised again can come back as more tokens than the budget
    # (a random-weight model's 32 came back as up to 47): the prefill keeps enough of them.
    system = TransformersSystem(probe_tokens=4, response_tokens=4)
    context, probe = "The movie was", " great, really great, and so very great, yes"
    assert len(system.tokenizer(probe)["input_ids"]) > system.options.probe_tokens + 8
    system.rollout_target([system.join(context, probe)])
    memo = system._memos[id(system._target)]
    hits = memo.hits
    served = system.target_logprobs([context], [probe])
    assert memo.hits == hits + 1
    assert torch.allclose(served, fresh(system, "target", [context], [probe], "sum"), atol=1e-5)


def _decode_steps(room: int, steps: int) -> tuple[list[torch.Tensor], object]:
    """The tiny model's keys after a prefill and `steps` one-token forwards, with `room` columns made."""
    from transformers import AutoModelForCausalLM

    from astra_transformers import TINY_MODEL_DIR

    # The tiny model has no dropout: its training mode computes what eval mode does.
    decoder = Decoder(AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR), None, 0)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    with torch.inference_mode():
        _, cache = decoder.run(ids, None, torch.arange(5).expand(2, 5), None)
        make_room(cache, room)
        for step in range(steps):
            token = torch.tensor([[10 + step], [20 + step]])
            if step == 1:
                cache.batch_select_indices(torch.tensor([1, 0]))  # rows reordered, as finished rows leave
                token = token.flip(0)
            _, cache = decoder.run(token, None, torch.full((2, 1), 5 + step), cache)
    return [layer.keys.clone() for layer in cache.layers], cache


def test_a_cache_with_room_writes_decode_steps_in_place_and_equals_the_growing_one() -> None:
    plain, _ = _decode_steps(0, 4)
    roomy, cache = _decode_steps(3, 4)
    layers = cache.layers  # type: ignore[attr-defined]
    # Three steps fit the room and are written in place; the fourth outgrows it and concatenates.
    assert all(type(layer).__name__ == "_RoomyLayer" and not layer._roomy for layer in layers)
    for a, b in zip(plain, roomy, strict=True):
        assert torch.equal(a, b)
    fitting, cache = _decode_steps(4, 4)
    layer = cache.layers[0]  # type: ignore[attr-defined]
    assert layer._roomy and layer.keys.data_ptr() == layer._key_buffer.data_ptr()
    for a, b in zip(plain, fitting, strict=True):
        assert torch.equal(a, b)


def test_no_room_is_made_where_autograd_records() -> None:
    from transformers import AutoModelForCausalLM

    from astra_transformers import TINY_MODEL_DIR

    decoder = Decoder(AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR), None, 0)
    _, cache = decoder.run(torch.tensor([[5, 6, 7]]), None, torch.arange(3)[None], None)
    make_room(cache, 8)
    assert all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)


def test_memo_is_a_bounded_lru() -> None:
    memo = LogprobMemo(capacity=2)
    for key in "abc":
        memo.record(key, [1, 2], torch.tensor([-0.5]))
    assert len(memo) == 2
    assert memo.lookup("a", [1, 2], 1) is None
    assert memo.lookup("c", [1, 2], 1) == -0.5
    assert memo.lookup("c", [1, 2], 2) is None  # more tokens than were kept


def test_length_buckets_cover_every_row_once_and_keep_padding_small() -> None:
    lengths = [50, 200, 52, 190, 51, 205, 100, 53]
    buckets = length_buckets(lengths, max_waste=0.1, min_size=2)
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    assert [lengths[i] for i in buckets[0]] == [50, 51, 52, 53]
    assert len(buckets) > 1


def test_bucketed_logprobs_equal_one_padded_batch(system: TransformersSystem) -> None:
    contexts = [CONTEXTS[i % 4] * (1 + 3 * (i % 3)) for i in range(12)]
    continuations = [" yes", " no way", " maybe so"] * 4
    bucketed = system.tester_logprobs(contexts, continuations)
    system._bucket_logprobs = False
    try:
        padded = system.tester_logprobs(contexts, continuations)
    finally:
        system._bucket_logprobs = True
    assert torch.allclose(bucketed, padded, atol=1e-5)


def test_an_experience_costs_two_generation_calls_per_level_and_no_extra_target_forward() -> None:
    ast = pytest.importorskip("astra_ast.sampler")
    system = TransformersSystem(probe_tokens=6, response_tokens=6)
    sampler = ast.ASTSampler(system, ToyScorer(), tree_width=2, tree_depth=3, prompts="builtin:train")
    memo = system._memos[id(system._target)]
    before, misses = system.generate_calls, memo.misses
    graphs = sampler.rollouts(3)
    assert system.generate_calls - before == 2 * 3
    assert memo.misses == misses  # every reward likelihood came from the target's prefill
    nodes = [node for graph in graphs for node in graph.nodes()]
    assert len(nodes) == 3 * (2 + 4 + 8)
