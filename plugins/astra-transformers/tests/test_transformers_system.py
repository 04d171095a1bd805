"""The transformers system's contract on the embedded tiny model: generation, log-probs, features."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from astra_transformers.system import TransformersSystem

CONTEXTS = ["Hi Sam! How are you?", "What do you think about the weather?", "Oh,", "I left my keys at the park."]
CONTINUATIONS = [" I'm fine, thanks.", " It's so cold.", " shut up.", " Damn"]


def ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def hand_logprob(model: PreTrainedModel, context: list[int], continuation: list[int], reduction: str) -> float:
    """A plain full forward over the concatenated ids, log-softmax over every position."""
    input_ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = model(input_ids).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = [logprobs[len(context) + j - 1, token] for j, token in enumerate(continuation)]
    total = torch.stack(picked).sum()
    return float(total / len(continuation) if reduction == "mean" else total)


def test_join_and_advance_concatenate_text(system: TransformersSystem) -> None:
    assert system.join("Hi.", " Hello") == "Hi. Hello"
    assert system.advance("Hi.", " Hello", " there") == "Hi. Hello there"


def test_rollout_returns_one_string_per_context_in_one_generate_call(system: TransformersSystem) -> None:
    before = system.generate_calls
    probes = system.rollout_tester(CONTEXTS)
    responses = system.rollout_target([system.join(c, p) for c, p in zip(CONTEXTS, probes, strict=True)])
    assert len(probes) == len(responses) == len(CONTEXTS)
    assert all(isinstance(text, str) and text for text in probes + responses)
    assert system.generate_calls == before + 2
    assert system.rollout_tester([]) == []


def test_generation_is_reproducible_under_the_global_seed(system: TransformersSystem) -> None:
    torch.manual_seed(7)
    first = system.rollout_tester(CONTEXTS) + system.rollout_target(CONTEXTS)
    torch.manual_seed(7)
    second = system.rollout_tester(CONTEXTS) + system.rollout_target(CONTEXTS)
    torch.manual_seed(8)
    other = system.rollout_tester(CONTEXTS) + system.rollout_target(CONTEXTS)
    assert first == second
    assert first != other


def test_continuation_is_the_decoded_ids_after_the_prompt(system: TransformersSystem) -> None:
    context = "Did you see the movie last ni"  # ends mid-word: a character cut would misplace the seam
    torch.manual_seed(3)
    (probe,) = system.rollout_tester([context])
    prompt = torch.tensor([ids(system.tokenizer, context)])
    torch.manual_seed(3)
    with torch.no_grad():
        out = system.tester.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=8,
            min_new_tokens=1,
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            pad_token_id=system.tokenizer.eos_token_id,
        )
    new_ids = out[0, prompt.shape[1] :]
    assert probe == system.tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_left_padded_batch_generates_what_each_context_alone_does() -> None:
    greedy = TransformersSystem(probe_tokens=6, top_k=1)  # top_k=1: deterministic sampling
    batched = greedy.rollout_tester(CONTEXTS)
    alone = [greedy.rollout_tester([context])[0] for context in CONTEXTS]
    assert batched == alone


def test_no_special_token_is_inserted_between_context_and_continuation(system: TransformersSystem) -> None:
    context, continuation = "Hello there.", " Nice day."
    joined = ids(system.tokenizer, context) + ids(system.tokenizer, continuation)
    special = set(system.tokenizer.all_special_ids)
    assert not special & set(joined)
    expected = hand_logprob(system.baseline, ids(system.tokenizer, context), ids(system.tokenizer, continuation), "sum")
    got = system.baseline_logprobs([context], [continuation])
    assert abs(float(got[0]) - expected) < 1e-4


def test_logprobs_equal_a_full_forward_by_hand(system: TransformersSystem) -> None:
    for reduction in ("sum", "mean"):
        got = system.tester_logprobs(CONTEXTS, CONTINUATIONS, reduction=reduction)
        expected = [
            hand_logprob(system.tester, ids(system.tokenizer, c), ids(system.tokenizer, k), reduction)
            for c, k in zip(CONTEXTS, CONTINUATIONS, strict=True)
        ]
        assert got.shape == (len(CONTEXTS),)
        assert torch.allclose(got.detach(), torch.tensor(expected), atol=1e-4), (reduction, got, expected)


def test_padding_does_not_change_logprobs(system: TransformersSystem) -> None:
    batched = system.target_logprobs(CONTEXTS, CONTINUATIONS)
    alone = torch.cat([system.target_logprobs([c], [k]) for c, k in zip(CONTEXTS, CONTINUATIONS, strict=True)])
    assert torch.allclose(batched, alone, atol=1e-5)
    mean_batched = system.tester_logprobs(CONTEXTS, CONTINUATIONS, reduction="mean").detach()
    pairs = zip(CONTEXTS, CONTINUATIONS, strict=True)
    mean_alone = torch.cat([system.tester_logprobs([c], [k], reduction="mean").detach() for c, k in pairs])
    assert torch.allclose(mean_batched, mean_alone, atol=1e-5)


def test_empty_context_and_empty_continuation_are_handled(system: TransformersSystem) -> None:
    values = system.tester_logprobs(["", "Hi."], [" Hello", ""])
    assert values.requires_grad
    assert values.detach().tolist()[0] < 0 and values.detach().tolist()[1] == 0.0
    values.sum().backward()  # still part of the tester's graph
    assert system.rollout_tester([""])[0]


def test_long_contexts_are_left_truncated_to_the_most_recent_tokens(system: TransformersSystem) -> None:
    n_positions = system.tester.config.n_positions
    recent = " What do you think about the traffic? I think it is awful." * 20
    long_a = "Good morning! " * 200 + recent
    long_b = "Let me know when you get home. " * 150 + recent
    assert len(ids(system.tokenizer, long_a)) > 2 * n_positions
    continuation = " Yeah."
    a = system.tester_logprobs([long_a], [continuation]).detach()
    b = system.tester_logprobs([long_b], [continuation]).detach()
    assert torch.allclose(a, b, atol=1e-5)  # only the oldest tokens differ, and they were cut
    kept = ids(system.tokenizer, long_a)[-system.tester_context_tokens :]
    expected = hand_logprob(system.tester, kept, ids(system.tokenizer, continuation), "sum")
    assert abs(float(a[0]) - expected) < 1e-4
    torch.manual_seed(0)
    probes = system.rollout_tester([long_a, "Hi."])
    responses = system.rollout_target([long_b + p for p in probes])
    assert len(responses) == 2
    assert system.state_features([long_a]).shape == (1, system.tester.config.n_embd)


def test_frozen_models_have_no_grad_and_the_tester_has(system: TransformersSystem) -> None:
    assert system.target is system.baseline  # same source: one copy in memory
    assert system.tester is not system.baseline
    assert not any(p.requires_grad for p in system.baseline.parameters())
    assert not system.baseline.training
    assert all(p.requires_grad for p in system.parameters())
    assert system.tester_logprobs(CONTEXTS[:2], CONTINUATIONS[:2]).requires_grad
    assert not system.baseline_logprobs(CONTEXTS[:2], CONTINUATIONS[:2]).requires_grad
    assert not system.target_logprobs(CONTEXTS[:2], CONTINUATIONS[:2]).requires_grad


def test_frozen_logprobs_can_be_saved_for_backward(system: TransformersSystem) -> None:
    # A loss that multiplies by a frozen log-prob must not trip over inference-mode tensors.
    reference = system.baseline_logprobs(CONTEXTS[:2], CONTINUATIONS[:2])
    loss = (system.tester_logprobs(CONTEXTS[:2], CONTINUATIONS[:2]) * reference).sum()
    loss.backward()
    assert any(p.grad is not None for p in system.parameters())
    system.tester.zero_grad(set_to_none=True)


def test_baseline_keeps_the_starting_weights_when_the_tester_trains() -> None:
    trained = TransformersSystem(probe_tokens=4, response_tokens=4)
    baseline_before = trained.baseline_logprobs(CONTEXTS, CONTINUATIONS)
    tester_before = trained.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()
    assert torch.allclose(baseline_before, tester_before, atol=1e-5)
    optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3)
    (-trained.tester_logprobs(CONTEXTS, CONTINUATIONS).sum()).backward()
    optimizer.step()
    tester_after = trained.tester_logprobs(CONTEXTS, CONTINUATIONS).detach()
    assert float(tester_after.sum()) > float(tester_before.sum())  # the tester moved
    assert torch.equal(trained.baseline_logprobs(CONTEXTS, CONTINUATIONS), baseline_before)
    assert torch.equal(trained.target_logprobs(CONTEXTS, CONTINUATIONS), baseline_before)


def test_state_features_are_the_last_hidden_state_at_the_last_context_token(system: TransformersSystem) -> None:
    features = system.state_features(CONTEXTS)
    assert features.shape == (len(CONTEXTS), system.tester.config.n_embd)
    assert not features.requires_grad
    for row, context in zip(features, CONTEXTS, strict=True):
        with torch.no_grad():
            hidden = system.tester(torch.tensor([ids(system.tokenizer, context)]), output_hidden_states=True)
        assert torch.allclose(row, hidden.hidden_states[-1][0, -1], atol=1e-5)
