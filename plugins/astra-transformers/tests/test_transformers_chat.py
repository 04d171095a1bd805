"""Chat mode on a tiny random Llama-architecture model with a Llama 3 style chat template."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from astra_core.chat import Conversation, Message
from astra_core.errors import ConfigError, OptionsError
from astra_transformers.system import ChatTransformersSystem, TransformersSystem, transformers_system
from astra_transformers.testing import build_tiny_llama

SYSTEM_PROMPT = "You are a helpful assistant. Answer safely."
OPENING = Conversation.opening("Hello there, how are you today?")
TALK = OPENING.then("user", " Tell me a story").then("assistant", "A dragon learned to bake bread.")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llama"))


def chat_system(llama: Path, **options: Any) -> ChatTransformersSystem:
    settings: dict[str, Any] = {
        "model": str(llama),
        "target_chat": True,
        "system_prompt": SYSTEM_PROMPT,
        "probe_tokens": 6,
        "response_tokens": 6,
    }
    settings.update(options)
    system = transformers_system(**settings)
    assert isinstance(system, ChatTransformersSystem)
    return system


@pytest.fixture(scope="module")
def chat(llama: Path) -> ChatTransformersSystem:
    return chat_system(llama)


def template_ids(system: ChatTransformersSystem, messages: list[dict[str, str]]) -> list[int]:
    tokenizer: Any = system.target_tokenizer
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded  # transformers 5 returns a BatchEncoding
    return [int(i) for i in ids]


def with_system(conversation: Conversation) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, *conversation.as_dicts()]


def test_the_factory_builds_chat_mode_only_when_asked(llama: Path) -> None:
    assert isinstance(transformers_system(probe_tokens=4), TransformersSystem)
    assert isinstance(chat_system(llama), ChatTransformersSystem)


def test_the_target_reads_exactly_apply_chat_template_with_bos_and_system_prompt(
    chat: ChatTransformersSystem,
) -> None:
    conversation = TALK.then("user", "What is the capital of France?")
    keys, rows = chat._target_view.contexts([conversation], chat.target_context_tokens)
    # Two user messages in a row are one turn (a blank line between) as the template reads them.
    messages = with_system(conversation)
    merged = [messages[0], {"role": "user", "content": messages[1]["content"] + "\n\n" + messages[2]["content"]}]
    merged += messages[3:]
    assert rows[0] == template_ids(chat, merged)
    tokenizer: Any = chat.target_tokenizer
    assert rows[0][0] == tokenizer.bos_token_id
    assert rows[0].count(tokenizer.convert_tokens_to_ids("<|eot_id|>")) == 4  # system, user, assistant, user
    assert keys[0].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_PROMPT)
    assert keys[0].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_stop_tokens_are_the_generation_config_list_and_the_end_of_turn(chat: ChatTransformersSystem) -> None:
    tokenizer = chat.target_tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert chat._target_view.stop_ids == {tokenizer.eos_token_id, eot}
    assert chat._target.stop_ids == set(chat.target.generation_config.eos_token_id)


def test_the_target_stops_at_its_end_of_turn_token(llama: Path) -> None:
    system = chat_system(llama, response_tokens=8)
    eot = system.target_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    head: Any = cast(Any, system.target).get_output_embeddings()

    def favour_end_of_turn(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., eot] += 1e4
        return output

    hook = head.register_forward_hook(favour_end_of_turn)
    try:
        torch.manual_seed(0)
        responses = system.rollout_target([system.join(OPENING, " hi")])
    finally:
        hook.remove()
    # The first token may not end the turn; the second is the end of turn, which is not text.
    assert len(system.target_tokenizer(responses[0], add_special_tokens=False)["input_ids"]) == 1


def test_the_probe_s_target_logprob_is_taken_over_its_tokens_inside_the_template(
    chat: ChatTransformersSystem,
) -> None:
    probe = "Tell me about the weather"
    rows = chat._target_view.pairs([TALK], [probe], chat.target_context_tokens)
    ids, start, end = rows.ids[0], rows.starts[0], len(rows.ids[0]) - rows.tails[0]
    messages = with_system(TALK.then("user", probe))
    assert ids == template_ids(
        chat,
        [
            *messages[:1],
            {"role": "user", "content": messages[1]["content"] + "\n\n" + messages[2]["content"]},
            *messages[3:],
        ],
    )
    assert chat.target_tokenizer.decode(ids[start:end]) == probe
    # By hand: one forward over the whole templated row, the probe's tokens summed.
    with torch.no_grad():
        logits = chat.target(input_ids=torch.tensor([ids])).logits[0].float()
    expected = (
        torch.log_softmax(logits[start - 1 : end - 1], -1).gather(-1, torch.tensor(ids[start:end])[:, None]).sum()
    )
    assert torch.allclose(chat.target_logprobs([TALK], [probe]), expected.reshape(1), atol=1e-5)


def fresh(system: ChatTransformersSystem, contexts: list[Conversation], probes: list[str]) -> torch.Tensor:
    saved = system._memos
    system._memos = {}
    try:
        return system.target_logprobs(contexts, probes, "mean")
    finally:
        system._memos = saved


def test_the_target_s_prefill_serves_its_logprobs_exactly(llama: Path) -> None:
    system = chat_system(llama)
    contexts = [OPENING, TALK, Conversation()]
    torch.manual_seed(0)
    probes = system.rollout_tester(contexts)
    system.rollout_target([system.join(c, p) for c, p in zip(contexts, probes, strict=True)])
    memo = system._memos[id(system._target)]
    forwards: list[int] = []
    hook = system.target.base_model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        hits = memo.hits
        cached = system.target_logprobs(contexts, probes, "mean")
        assert memo.hits - hits == 3
        assert not forwards
    finally:
        hook.remove()
    assert torch.allclose(cached, fresh(system, contexts, probes), atol=1e-5, rtol=0)


def test_truncation_keeps_the_system_prompt_and_the_latest_whole_turns(llama: Path) -> None:
    system = chat_system(llama, max_context_tokens=120)
    long_talk = OPENING
    for i in range(12):
        long_talk = long_talk.then("user", f"Question {i} about the weather?").then("assistant", f"Answer {i}.")
    _, rows = system._target_view.contexts([long_talk], system.target_context_tokens)
    assert len(rows[0]) <= 120
    kept = None
    for k in range(len(long_talk.messages)):
        tail = Conversation(long_talk.messages[k:])
        if template_ids(system, with_system(tail)) == rows[0]:
            kept = k
            break
    assert kept is not None and kept > 0  # some oldest turns went, whole, and the system prompt stayed
    assert system.target_tokenizer.decode(rows[0]).count(SYSTEM_PROMPT) == 1


def test_a_transcript_tester_continues_user_lines_and_its_logprobs_match_a_forward(
    chat: ChatTransformersSystem,
) -> None:
    keys, rows = chat._tester_view.contexts([TALK], chat.tester_context_tokens)
    assert keys[0] == (
        "User: Hello there, how are you today?\nUser: Tell me a story\n"
        "Assistant: A dragon learned to bake bread.\nUser:"
    )
    assert rows[0] == chat.tokenizer(keys[0], add_special_tokens=False)["input_ids"]
    newline = chat.tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    assert newline in chat._tester_view.stop_ids
    probe = " what are you doing?"
    ids = rows[0] + chat.tokenizer(probe, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = chat.tester(input_ids=torch.tensor([ids])).logits[0].float()
    start = len(rows[0])
    expected = torch.log_softmax(logits[start - 1 : -1], -1).gather(-1, torch.tensor(ids[start:])[:, None]).sum()
    assert torch.allclose(chat.tester_logprobs([TALK], [probe]).detach(), expected.reshape(1), atol=1e-5)


def test_an_instruct_tester_reads_its_instruction_through_its_template(llama: Path) -> None:
    system = chat_system(llama, tester_chat=True, tester_instruction="Write the next user message.")
    _, rows = system._tester_view.contexts([TALK], system.tester_context_tokens)
    request = (
        "Write the next user message.\n\nConversation:\nUser: Hello there, how are you today?\n"
        "User: Tell me a story\nAssistant: A dragon learned to bake bread.\n"
    )
    assert rows[0] == template_ids(system, [{"role": "user", "content": request}])
    eot = system.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert eot in system._tester_view.stop_ids
    torch.manual_seed(1)
    probes = system.rollout_tester([TALK, OPENING])
    assert len(probes) == 2
    chosen, rejected = system.tester_pair_logprobs([TALK, OPENING], probes, ["no", "yes"])
    torch.testing.assert_close(chosen, system.tester_logprobs([TALK, OPENING], probes), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rejected, system.tester_logprobs([TALK, OPENING], ["no", "yes"]), atol=1e-5, rtol=1e-4)


def test_join_advance_and_opening_build_messages(chat: ChatTransformersSystem) -> None:
    start = chat.opening("Hi.")
    assert start == Conversation((Message("user", "Hi."),))
    assert chat.join(start, "More?").messages[-1] == Message("user", "More?")
    assert [m.role for m in chat.advance(start, "More?", "Sure.").messages] == ["user", "user", "assistant"]


def test_chat_mode_without_a_chat_template_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="no chat template") as error:
        transformers_system(target_chat=True, probe_tokens=4)
    assert "\n" not in str(error.value)


def test_chat_options_without_chat_mode_are_rejected() -> None:
    with pytest.raises(OptionsError, match="system_prompt needs target_chat"):
        transformers_system(system_prompt="Be nice.")


def test_the_ast_sampler_grows_conversations_through_the_chat_system(chat: ChatTransformersSystem) -> None:
    sampler_module = pytest.importorskip("astra_ast.sampler")
    from astra_core.turns import TextScorer

    class Recording(TextScorer):
        def __init__(self) -> None:
            self.texts: list[str] = []

        def score_texts(self, texts: Sequence[str]) -> list[float]:
            self.texts.extend(texts)
            return [0.0] * len(texts)

    scorer = Recording()
    sampler = sampler_module.ASTSampler(chat, scorer, tree_width=2, tree_depth=2, reward="astprompter")
    torch.manual_seed(0)
    graphs = sampler.rollouts(2)
    for graph in graphs:
        assert graph.context == chat.opening(graph.context.messages[0].content)
        for node in graph.nodes():
            assert isinstance(node.context, Conversation)
            following = chat.advance(node.context, node.probe, node.response)
            assert all(child.context == following for child in node.children)
    nodes = [node for graph in graphs for node in graph.nodes()]
    # The combined term reads the system's text of each turn: probe and response on two lines.
    assert {f"{n.probe}\n{n.response}" for n in nodes} <= set(scorer.texts)
    assert chat.turn_text("Hi?", "Hello.") == "Hi?\nHello."


def test_a_text_state_handed_to_a_chat_system_is_a_one_line_type_error(chat: ChatTransformersSystem) -> None:
    untyped: Any = chat  # mypy rejects these calls; an untyped caller gets a sentence
    calls = [
        lambda: untyped.rollout_tester(["Hi."]),
        lambda: untyped.rollout_target(["Hi."]),
        lambda: untyped.target_logprobs(["Hi."], [" More?"]),
        lambda: untyped.tester_logprobs(["Hi."], [" More?"]),
        lambda: untyped.join("Hi.", " More?"),
        lambda: untyped.advance("Hi.", " More?", "Sure."),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"must be an astra_core\.chat\.Conversation, not str") as error:
            call()
        assert "system.opening(text)" in str(error.value) and "\n" not in str(error.value)
