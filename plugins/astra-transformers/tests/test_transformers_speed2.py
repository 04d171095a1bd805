"""Speed levers, second round: a DPO pair's shared context, and finished rows leaving the decode batch."""

from __future__ import annotations

import pytest
import torch

from astra_core.protocols import Reduction
from astra_core.testing.toy import ToyScorer
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
    _, starts_w = system._rows(system._tester, system.tester_context_tokens, [context], [" ok"])
    _, starts_l = system._rows(system._tester, system.tester_context_tokens, [context], [long_probe])
    assert starts_w != starts_l  # the two contexts really are cut differently
    chosen, rejected = system.tester_pair_logprobs([context, "Hi."], [" ok", " yes"], [long_probe, " no"])
    torch.testing.assert_close(chosen, system.tester_logprobs([context, "Hi."], [" ok", " yes"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        rejected, system.tester_logprobs([context, "Hi."], [long_probe, " no"]), atol=1e-5, rtol=0
    )


def test_dpo_uses_the_pair_pass_with_the_plain_path_values_and_gradients(system: TransformersSystem) -> None:
    from astra_algorithms.dpo import DPO, PairLogprobSystem
    from astra_algorithms.preference import PreferenceAlgorithm, PreferenceBatch

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
    rows = [ids for ids in system.tokenizer([CONTEXTS[0], "I left my keys at the park."], add_special_tokens=False)["input_ids"]]
    greedy = Sampling(top_k=1)
    pad = int(system.tokenizer.eos_token_id)
    with torch.inference_mode():
        free = sample(Decoder(module, output_head(module), pad, None), rows, 6, greedy, torch.device("cpu")).new_ids
    # Make one of row 0's tokens (after the first) the "eos", one row 1 never writes: row 0 stops there.
    at = next(k for k in range(1, 5) if free[0][k] not in free[1] and free[0][k] not in free[0][:k])
    stop = free[0][at]
    batch_sizes: list[int] = []
    hook = module.base_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: batch_sizes.append(int(kwargs["input_ids"].shape[0])), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            decoded = sample(Decoder(module, output_head(module), pad, stop), rows, 6, greedy, torch.device("cpu"))
    finally:
        hook.remove()
    assert decoded.new_ids[0] == free[0][: at + 1] + [pad] * (5 - at)
    assert decoded.new_ids[1] == free[1]
    assert batch_sizes == [2] * (at + 1) + [1] * (5 - at)  # prefill and decodes of both, then row 1 alone
