"""Fixed-shape decoding (static KV cache, no host sync per token) and transformers' generate with
a static cache, checked token for token against the lean loop with greedy decoding; the vLLM
target backend's option error (and the backend itself where vllm and a GPU exist)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from astra_transformers.decoding import sample_generate, sample_static
from astra_transformers.generation import Sampling, sample
from astra_transformers.large_options import installed
from astra_transformers.options import TransformersOptions
from astra_transformers.system import TransformersSystem

# Two copies of one context (a shared prefill), lengths that need padding, rows that stop early.
TEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,", "Oh,", "I"]
GREEDY = Sampling(top_k=1)


def build(**options: object) -> TransformersSystem:
    return TransformersSystem(probe_tokens=8, response_tokens=12, **options)


@pytest.fixture(scope="module")
def system() -> TransformersSystem:
    return build()


def _rows(system: TransformersSystem) -> list[list[int]]:
    return system._tester_view.contexts(TEXTS, 200)[1]


def test_static_decoding_gives_the_lean_loops_greedy_tokens_and_prompt_tails(system: TransformersSystem) -> None:
    model = system._tester
    decoder = system._decoder(model)
    rows = _rows(system)
    with torch.inference_mode():
        stops = sorted(model.stop_ids)
        lean = sample(decoder, rows, 24, GREEDY, model.device, tail=6, stop_ids=stops)
        static = sample_static(decoder, rows, 24, GREEDY, model.device, tail=6, stop_ids=stops)
    assert static.new_ids == lean.new_ids
    # Some rows finished early (eos, then pad): the finished-row handling was exercised.
    assert any(row[-1] == model.pad_id for row in lean.new_ids)
    assert lean.prompt_tails is not None and static.prompt_tails is not None
    for got, want in zip(static.prompt_tails, lean.prompt_tails, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_generate_with_a_static_cache_gives_the_lean_loops_greedy_tokens(system: TransformersSystem) -> None:
    model = system._tester
    rows = _rows(system)
    with torch.inference_mode():
        stops = sorted(model.stop_ids)
        lean = sample(system._decoder(model), rows, 24, GREEDY, model.device, stop_ids=stops)
        generated = sample_generate(model.module, rows, 24, GREEDY, model.device, model.pad_id, stops)
    assert generated.new_ids == lean.new_ids


def test_sampled_static_decoding_repeats_under_a_seed_and_respects_the_budget(system: TransformersSystem) -> None:
    model = system._tester
    rows = _rows(system)
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        with torch.inference_mode():
            draws.append(
                sample_static(
                    system._decoder(model), rows, 10, Sampling(), model.device, stop_ids=sorted(model.stop_ids)
                ).new_ids
            )
    assert draws[0] == draws[1]
    assert all(1 <= len(row) <= 10 for row in draws[0]) and len(draws[0]) == len(rows)
    assert all(row[0] not in model.stop_ids for row in draws[0])  # at least one real token first


@pytest.mark.parametrize("decoding", ["static", "generate"])
def test_a_system_decoding_another_way_gives_the_same_greedy_rollouts(
    system: TransformersSystem, decoding: str
) -> None:
    lean = build(top_k=1)
    fast = build(top_k=1, decoding=decoding)
    probes = fast.rollout_tester(TEXTS)
    assert probes == lean.rollout_tester(TEXTS)
    joined = [t + p for t, p in zip(TEXTS, probes, strict=True)]
    assert fast.rollout_target(joined) == lean.rollout_target(joined)
    # The static prefill fills the target's log-prob memo as the lean one does; generate's does not,
    # and the log-probs come from a forward: the values agree either way.
    torch.testing.assert_close(fast.target_logprobs(TEXTS, probes), lean.target_logprobs(TEXTS, probes))


def test_compile_decoding_needs_static_decoding() -> None:
    with pytest.raises(ValidationError, match="set decoding = 'static'"):
        TransformersOptions(compile_decoding=True)
    TransformersOptions(compile_decoding=True, decoding="static")


# -- vLLM -----------------------------------------------------------------------------------


@pytest.mark.skipif(installed("vllm") and torch.cuda.is_available(), reason="vllm can run here")
def test_the_vllm_backend_without_vllm_or_a_gpu_is_a_one_line_error() -> None:
    with pytest.raises(ValidationError) as caught:
        TransformersOptions(target_backend="vllm", device="cuda")
    (error,) = caught.value.errors()
    message = str(error["msg"])
    assert "\n" not in message and "target_backend='vllm' needs" in message
    if not installed("vllm"):
        assert "the vllm package" in message and "astra-transformers[vllm]" in message


@pytest.mark.skipif(not installed("vllm"), reason="vllm is not installed (pip install 'astra-transformers[vllm]')")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="vllm needs a CUDA device")
def test_vllm_target_matches_the_hf_target_greedily() -> None:
    hf = build(top_k=1, device="cuda", dtype="float32")
    vllm = build(top_k=1, device="cuda", dtype="float32", target_backend="vllm")
    probes = hf.rollout_tester(TEXTS)
    joined = [t + p for t, p in zip(TEXTS, probes, strict=True)]
    assert vllm.rollout_target(joined) == hf.rollout_target(joined)
