"""Speed levers, second round: a DPO pair's shared context, and finished rows leaving the decode batch."""

from __future__ import annotations

import pytest
import torch

from astra_core.protocols import Reduction
from astra_transformers.system import TransformersSystem

CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "", "I left my keys at the park. " * 3]
CHOSEN = [" I am fine.", " Nice and sunny", " Hello", " Oh no!"]
REJECTED = [" Go away, you fool!", "", " Hi there, how is it going?", " Sad"]


def _grads(system: TransformersSystem, loss: torch.Tensor) -> list[torch.Tensor]:
    params = list(system.parameters())
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_pair_logprobs_match_two_plain_calls_in_values_and_gradients(
    system: TransformersSystem, reduction: Reduction
) -> None:
    chosen, rejected = system.tester_pair_logprobs(CONTEXTS, CHOSEN, REJECTED, reduction)
    plain_chosen = system.tester_logprobs(CONTEXTS, CHOSEN, reduction)
    plain_rejected = system.tester_logprobs(CONTEXTS, REJECTED, reduction)
    torch.testing.assert_close(chosen, plain_chosen, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rejected, plain_rejected, atol=1e-5, rtol=1e-5)
    weights = torch.arange(1.0, len(CONTEXTS) + 1)
    shared = _grads(system, (weights * chosen).sum() - (weights * rejected).sum() * 0.5)
    plain = _grads(system, (weights * plain_chosen).sum() - (weights * plain_rejected).sum() * 0.5)
    assert any(float(g.abs().sum()) > 0 for g in shared)
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pair_logprobs_handle_empty_batches_and_mismatched_lengths(system: TransformersSystem) -> None:
    chosen, rejected = system.tester_pair_logprobs([], [], [])
    assert chosen.shape == rejected.shape == (0,)
    with pytest.raises(ValueError, match="contexts"):
        system.tester_pair_logprobs(["a"], ["b"], [])


def test_pair_logprobs_fall_back_when_truncation_differs(system: TransformersSystem) -> None:
    # 256 positions: the long rejected probe leaves less room for the context than the chosen one.
    context = "word " * 300
    long_probe = " and" * 40
    starts_w = system._tester_view.pairs([context], [" ok"], system.tester_context_tokens).starts
    starts_l = system._tester_view.pairs([context], [long_probe], system.tester_context_tokens).starts
    assert starts_w != starts_l  # the two contexts really are cut differently
    chosen, rejected = system.tester_pair_logprobs([context, "Hi."], [" ok", " yes"], [long_probe, " no"])
    torch.testing.assert_close(chosen, system.tester_logprobs([context, "Hi."], [" ok", " yes"]), atol=1e-5, rtol=0)
    # A sum over 80 tokens near -320: float32's spacing there is 3e-5, so allow a few ulps.
    torch.testing.assert_close(
        rejected, system.tester_logprobs([context, "Hi."], [long_probe, " no"]), atol=1e-5, rtol=1e-6
    )


def test_dpo_uses_the_pair_pass_with_the_plain_path_values_and_gradients(system: TransformersSystem) -> None:
    from astra_algorithms.dpo import DPO
    from astra_algorithms.preference import PreferenceAlgorithm, PreferenceBatch
    from astra_core.protocols import PairLogprobSystem

    assert isinstance(system, PairLogprobSystem)
    algorithm: DPO[str, str] = DPO(system, beta=0.5)
    rewards = torch.zeros(len(CONTEXTS))
    batch = PreferenceBatch(list(CONTEXTS), list(CHOSEN), list(REJECTED), rewards + 1, rewards)
    calls: list[int] = []
    original = system.tester_pair_logprobs

    def counted(*args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    system.tester_pair_logprobs = counted  # type: ignore[method-assign]
    try:
        shared = algorithm.logprobs(batch, "sum")
    finally:
        del system.tester_pair_logprobs
    assert calls == [1]
    plain = PreferenceAlgorithm.logprobs(algorithm, batch, "sum")  # one concatenated call
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    loss_shared = (shared[0] - shared[1]).sum()
    loss_plain = (plain[0] - plain[1]).sum()
    for a, b in zip(_grads(system, loss_shared), _grads(system, loss_plain), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_finished_rows_leave_the_decode_batch_and_the_rest_write_the_same_tokens(system: TransformersSystem) -> None:
    from astra_transformers.generation import Decoder, Sampling, sample
    from astra_transformers.system import output_head

    module = system.tester
    texts = [CONTEXTS[0], "What time is it?"]  # two contexts the embedded model continues differently
    rows = [list(ids) for ids in system.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    greedy = Sampling(top_k=1)
    pad = int(system.tokenizer.eos_token_id)
    with torch.inference_mode():
        free = sample(Decoder(module, output_head(module), pad), rows, 6, greedy, torch.device("cpu")).new_ids
    # Make one of row 0's tokens (after the first) the "eos", one row 1 never writes: row 0 stops there.
    at = next((k for k in range(1, 5) if free[0][k] not in free[1] and free[0][k] not in free[0][:k]), None)
    assert at is not None, f"pick contexts whose greedy continuations differ: {free}"
    stop = free[0][at]
    batch_sizes: list[int] = []
    hook = module.base_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: batch_sizes.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            decoder = Decoder(module, output_head(module), pad)
            decoded = sample(decoder, rows, 6, greedy, torch.device("cpu"), stop_ids=[stop])
    finally:
        hook.remove()
    assert decoded.new_ids[0] == free[0][: at + 1] + [pad] * (5 - at)
    assert decoded.new_ids[1] == free[1]
    assert batch_sizes == [2] * (at + 1) + [1] * (5 - at)  # prefill and decodes of both, then row 1 alone


def _turns(system: TransformersSystem, contexts: list[str], turns: int) -> list[list[str]]:
    """`turns` rounds of tester probe then target response, each context advanced in place."""
    texts: list[list[str]] = []
    for _ in range(turns):
        probes = system.rollout_tester(contexts)
        asked = [system.join(c, p) for c, p in zip(contexts, probes, strict=True)]
        responses = system.rollout_target(asked)
        texts.append(probes + responses)
        contexts = [system.advance(c, p, r) for c, p, r in zip(contexts, probes, responses, strict=True)]
    return texts


def test_caches_carried_across_turns_give_what_full_prefills_give() -> None:
    carried = TransformersSystem(probe_tokens=6, response_tokens=6, top_k=1)
    contexts = [CONTEXTS[0], CONTEXTS[0], CONTEXTS[1], "A"]
    prefill_positions: list[int] = []

    def count(_m: object, _a: object, kwargs: dict[str, torch.Tensor]) -> None:
        if kwargs["input_ids"].shape[1] > 1:
            prefill_positions.append(int(kwargs["input_ids"].numel()))

    hook = carried.target.base_model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        with_stores = _turns(carried, contexts, 3)
    finally:
        hook.remove()
    assert len(carried._prefix_stores[id(carried._target)]) > 0
    fresh = TransformersSystem(probe_tokens=6, response_tokens=6, top_k=1)
    fresh._prefix_stores.clear()  # no store: every turn prefills its whole context
    hook = fresh.target.base_model.register_forward_pre_hook(count, with_kwargs=True)
    full_positions = len(prefill_positions)
    try:
        assert _turns(fresh, contexts, 3) == with_stores
    finally:
        hook.remove()
    carried_total, full_total = sum(prefill_positions[:full_positions]), sum(prefill_positions[full_positions:])
    assert carried_total < full_total  # later turns prefilled only their new tokens (and the memo's tail)


def test_memo_values_from_a_carried_cache_equal_fresh_forwards() -> None:
    system = TransformersSystem(probe_tokens=6, response_tokens=6)
    contexts = [CONTEXTS[0], CONTEXTS[1], CONTEXTS[3]]
    for _ in range(3):
        probes = system.rollout_tester(contexts)
        responses = system.rollout_target([c + p for c, p in zip(contexts, probes, strict=True)])
        memo_values = system.target_logprobs(contexts, probes)
        system._bucket_logprobs = False
        memo = system._memos[id(system._target)]
        hits = memo.hits
        system._memos.pop(id(system._target))
        try:
            fresh = system.target_logprobs(contexts, probes)
        finally:
            system._memos[id(system._target)] = memo
        assert memo.hits == hits
        torch.testing.assert_close(memo_values, fresh, atol=1e-5, rtol=1e-5)
        contexts = [c + p + r for c, p, r in zip(contexts, probes, responses, strict=True)]


def test_the_stores_are_cleared_when_the_tester_weights_change() -> None:
    system = TransformersSystem(probe_tokens=4, response_tokens=4)
    probes = system.rollout_tester(["Hello there."])
    system.rollout_target(["Hello there." + probes[0]])
    stores = [system._prefix_stores[id(system._tester)], system._prefix_stores[id(system._target)]]
    assert [len(store) for store in stores] == [1, 1]
    assert system._prefix_store(system._tester) is stores[0] and len(stores[0]) == 1  # unchanged weights
    with torch.no_grad():
        next(system.parameters()).add_(0.0)  # an in-place update, as an optimizer step makes
    assert system._prefix_store(system._tester) is stores[0] and len(stores[0]) == 0
    assert system._prefix_store(system._target) is stores[1] and len(stores[1]) == 0


def test_num_threads_option_sets_torch_threads() -> None:
    before = torch.get_num_threads()
    try:
        system = TransformersSystem(probe_tokens=4, response_tokens=4, num_threads=2)
        assert system.num_threads == torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    from astra_core.errors import OptionsError

    with pytest.raises(OptionsError, match="num_threads"):
        TransformersSystem(num_threads=0)
