"""Packed tree passes: one sequence per rollout tree gives the per-row log-probs and gradients.

The models run in float64, so "equal" means equal up to summation order (1e-7: Llama computes its
rotary angles in float32), not up to float32 noise."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from astra_algorithms.dpo import dpo_loss
from astra_algorithms.grpo import grpo_loss
from astra_algorithms.ipo import ipo_loss
from astra_algorithms.ppo import ppo_loss
from astra_transformers import TINY_MODEL_DIR
from astra_transformers.packing import pack, packed_logprobs, packing_is_exact

# Two rollout trees (openers 11.. and 40..), width 2, depth 2, as token ids: turn = probe + response.
OPENER_A = [11, 12, 13, 14, 15, 16]
OPENER_B = [40, 41, 42]
P = {  # probe, response per node
    "a1": ([20, 21, 22], [23, 24]),
    "a2": ([20, 25], [26, 27, 28]),  # shares its first probe token with a1
    "a11": ([30, 31], []),
    "a12": ([32, 33, 34], []),
    "a21": ([30, 35], []),
    "a22": ([36], []),
    "b1": ([50, 51], [52]),
    "b2": ([53, 54, 55], [56]),
    "b11": ([57], []),
    "b12": ([58, 59], []),
}


def _context(opener: list[int], path: list[str]) -> list[int]:
    ids = list(opener)
    for name in path:
        ids += P[name][0] + P[name][1]
    return ids


# Every branching node's (context, chosen, rejected): what DPO and IPO train on.
PAIRS = [
    (_context(OPENER_A, []), P["a1"][0], P["a2"][0]),
    (_context(OPENER_A, ["a1"]), P["a11"][0], P["a12"][0]),
    (_context(OPENER_A, ["a2"]), P["a22"][0], P["a21"][0]),
    (_context(OPENER_B, []), P["b2"][0], P["b1"][0]),
    (_context(OPENER_B, ["b1"]), P["b11"][0], P["b12"][0]),
]
# Every node's (context, probe): what GRPO and PPO train on.
TURNS = [(context, probe) for context, chosen, rejected in PAIRS for probe in (chosen, rejected)]


def _tiny_gpt2(attention: str) -> PreTrainedModel:
    model: Any = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, attn_implementation=attention)
    return cast(PreTrainedModel, model.double().eval())


def _tiny_llama(attention: str) -> PreTrainedModel:
    torch.manual_seed(0)
    config = LlamaConfig(  # type: ignore[call-arg]  # attn_implementation is a PreTrainedConfig keyword
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    model: Any = LlamaForCausalLM(config)
    return cast(PreTrainedModel, model.double().eval())


MODELS: dict[str, Callable[[], PreTrainedModel]] = {
    "gpt2-sdpa": lambda: _tiny_gpt2("sdpa"),
    "gpt2-eager": lambda: _tiny_gpt2("eager"),
    "llama-sdpa": lambda: _tiny_llama("sdpa"),
    "llama-eager": lambda: _tiny_llama("eager"),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return MODELS[request.param]()


def _head(model: PreTrainedModel) -> nn.Module:
    head = cast(Any, model).get_output_embeddings()
    assert isinstance(head, nn.Module)
    return head


def _per_row(model: PreTrainedModel, contexts: list[list[int]], continuations: list[list[int]]) -> torch.Tensor:
    """The plain computation: each row alone, the model's own causal mask and positions."""
    values = []
    for context, continuation in zip(contexts, continuations, strict=True):
        row = torch.tensor([context + continuation])
        logits = model(input_ids=row, use_cache=False).logits[0, len(context) - 1 : -1]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(continuation).unsqueeze(-1))
        values.append(logprobs.sum())
    return torch.stack(values)


def _packed(model: PreTrainedModel, contexts: list[list[int]], continuations: list[list[int]]) -> torch.Tensor:
    rows = [c + x for c, x in zip(contexts, continuations, strict=True)]
    return packed_logprobs(model, _head(model), pack(rows, [len(c) for c in contexts], pad_id=0))


def _grads(model: PreTrainedModel, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))


def _assert_same_gradients(model: PreTrainedModel, packed: torch.Tensor, plain: torch.Tensor) -> None:
    ours, theirs = _grads(model, packed), _grads(model, plain)
    assert any(float(g.abs().sum()) > 0 for g in ours)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_pack_stores_each_shared_prefix_once_and_follows_each_branch() -> None:
    packing = pack([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 1], [3, 4], [2, 7, 8, 9]], [3, 3, 2, 1, 1], pad_id=0)
    assert packing.positions == 12  # 5 6 7 8 9 1, then the other trees' 3 4 and 2 7 8 9
    flat = [
        (int(i), int(p))
        for ids, ps in zip(packing.input_ids, packing.position_ids, strict=True)
        for i, p in zip(ids, ps, strict=True)
    ]
    assert (8, 3) in flat and (9, 3) in flat and (1, 2) in flat  # positions follow each branch
    # The largest tree sets the width; the two small ones share the second sequence: no padding.
    assert packing.input_ids.tolist() == [[5, 6, 7, 8, 9, 1], [2, 7, 8, 9, 3, 4]]
    first, second = packing.allowed[0], packing.allowed[1]
    assert not first[4, 3] and not first[3, 4]  # siblings 8 and 9 never see each other
    assert first[4, 2] and first[5, 1] and not first[5, 2]  # ancestors only
    assert not second[4, 3] and not second[3, 4] and second[5, 4] and not second[5, 0]  # separate trees


def test_pack_rejects_rows_without_a_context() -> None:
    with pytest.raises(ValueError, match="cannot start"):
        pack([[5, 6]], [0], pad_id=0)


def test_packed_logprobs_equal_per_row_logprobs(model: PreTrainedModel) -> None:
    contexts = [c for c, _ in TURNS]
    probes = [p for _, p in TURNS]
    with torch.no_grad():
        torch.testing.assert_close(
            _packed(model, contexts, probes), _per_row(model, contexts, probes), atol=1e-7, rtol=1e-7
        )
    # The packed pass runs each distinct token once: far fewer positions than the rows hold.
    rows = [c + p for c, p in TURNS]
    packing = pack(rows, [len(c) for c in contexts], pad_id=0)
    assert packing.positions < sum(len(r) for r in rows) / 2


def test_packed_pass_without_a_head_reads_the_full_logits(model: PreTrainedModel) -> None:
    contexts = [c for c, _ in TURNS]
    probes = [p for _, p in TURNS]
    rows = [c + p for c, p in TURNS]
    with torch.no_grad():
        full = packed_logprobs(model, None, pack(rows, [len(c) for c in contexts], pad_id=0))
        torch.testing.assert_close(full, _per_row(model, contexts, probes), atol=1e-7, rtol=1e-7)


def _pair_logprobs(
    model: PreTrainedModel, reference: PreTrainedModel, packed: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    contexts = [c for c, _, _ in PAIRS]
    chosen = [w for _, w, _ in PAIRS]
    rejected = [x for _, _, x in PAIRS]
    run = _packed if packed else _per_row
    # Both continuations of every pair in one pass: that is where the sharing is.
    policy = run(model, contexts + contexts, chosen + rejected)
    with torch.no_grad():
        baseline = run(reference, contexts + contexts, chosen + rejected)
    n = len(PAIRS)
    return policy[:n], policy[n:], baseline[:n], baseline[n:]


def _reference(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen baseline that differs from the tester, so the reference terms matter."""
    reference = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.mul_(0.9)
    return reference


@pytest.mark.parametrize("loss_name", ["dpo", "ipo"])
def test_preference_losses_have_the_per_pair_values_and_gradients(model: PreTrainedModel, loss_name: str) -> None:
    reference = _reference(model)

    def loss(packed: bool) -> torch.Tensor:
        logps = _pair_logprobs(model, reference, packed)
        return dpo_loss(*logps, beta=0.5).loss if loss_name == "dpo" else ipo_loss(*logps, beta=0.5).loss

    packed, plain = loss(True), loss(False)
    torch.testing.assert_close(packed, plain, atol=1e-7, rtol=1e-7)
    _assert_same_gradients(model, packed, plain)


@pytest.mark.parametrize("loss_name", ["grpo", "ppo"])
def test_policy_gradient_losses_have_the_per_turn_values_and_gradients(model: PreTrainedModel, loss_name: str) -> None:
    reference = _reference(model)
    contexts = [c for c, _ in TURNS]
    probes = [p for _, p in TURNS]
    advantages = torch.linspace(-1.0, 1.0, len(TURNS), dtype=torch.float64)
    with torch.no_grad():
        baseline = _packed(reference, contexts, probes)
        torch.testing.assert_close(baseline, _per_row(reference, contexts, probes), atol=1e-7, rtol=1e-7)
        old = _per_row(model, contexts, probes) + 0.05  # pi_old a little off, so the ratio is not 1

    def loss(logprobs: torch.Tensor) -> torch.Tensor:
        if loss_name == "grpo":
            return grpo_loss(logprobs, advantages, baseline, kl_coef=0.1).loss
        values = torch.zeros(len(TURNS), dtype=torch.float64)
        return ppo_loss(
            logprobs, old, baseline, advantages, values, advantages, clip_range=0.2, vf_coef=0.5, kl_coef=0.1
        ).loss

    packed, plain = loss(_packed(model, contexts, probes)), loss(_per_row(model, contexts, probes))
    torch.testing.assert_close(packed, plain, atol=1e-7, rtol=1e-7)
    _assert_same_gradients(model, packed, plain)


def test_packing_is_exact_for_masked_attention_models(model: PreTrainedModel) -> None:
    assert packing_is_exact(model, _head(model), start_id=0)


def test_packing_is_not_exact_for_a_model_that_ignores_position_ids() -> None:
    model: Any = _tiny_gpt2("sdpa")
    original = model.transformer.forward

    def forward(*args: object, **kwargs: object) -> object:
        kwargs.pop("position_ids", None)  # positions 0..L-1 whatever the caller asked for
        return original(*args, **kwargs)

    model.transformer.forward = forward
    assert not packing_is_exact(model, None, start_id=0)
