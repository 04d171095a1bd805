"""How each role reads a state: the token ids a model sees, and where a continuation sits in them.

A *view* turns states into what one role's model reads, batch by batch:

- `TextView` (plain-text mode, states are strings): the context's ids, oldest tokens cut to the
  budget, then the continuation's ids (each text tokenised without special tokens).
- `ChatView` (chat mode, states are `Conversation`): the model's own chat template with
  ``add_generation_prompt=True``, optionally after a system prompt, tokenised exactly as
  ``apply_chat_template(..., tokenize=True)`` does. A probe the target reads is a user message
  inside the template, so its tokens are located by character offsets (the template may follow
  it with an end-of-turn token and the assistant's header). Too long a conversation loses its
  oldest whole turns; the system prompt stays.
- `TranscriptView` (a base LM writing the user's next message): the conversation as a
  ``User: ... / Assistant: ...`` transcript ending in ``User:``, which the model continues.
- `InstructView` (an instruct model writing the user's next message): one user message holding
  a red-teaming instruction and the transcript, through the model's chat template.

Each view also says which tokens end a generation (`stop_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from transformers import PreTrainedTokenizerBase

from astra_core.chat import Conversation, Message
from astra_core.errors import ConfigError

S_contra = TypeVar("S_contra", contravariant=True)
_SENTINEL = "\ue000astra-probe\ue001"
"""A placeholder content no real text holds (private-use code points), to find where a message's
text lands in a rendered template."""


@dataclass
class Rows:
    """Token rows of (context, continuation) pairs: the continuation of row i is
    ``ids[i][starts[i] : len(ids[i]) - tails[i]]``; `keys` name each row's text (memo keys)."""

    keys: list[str]
    ids: list[list[int]]
    starts: list[int]
    tails: list[int]


class View(Protocol[S_contra]):
    """One role's reading of states of type `S_contra` (see the module doc)."""

    stop_ids: frozenset[int]
    """Tokens that end a generation (the first generated token is never one of them)."""
    suffix_tokens: int
    """How many tokens at most follow a continuation in a pair's row (0: it ends the row)."""

    def contexts(self, states: Sequence[S_contra], budget: int) -> tuple[list[str], list[list[int]]]:
        """Each state's key text and the ids the model reads before writing, within `budget` tokens."""
        ...

    def pairs(self, states: Sequence[S_contra], continuations: Sequence[str], budget: int) -> Rows:
        """The rows whose continuation spans a log-prob is taken over."""
        ...


def checked_conversation(state: Conversation) -> Conversation:
    """`state`, checked: chat mode reads conversations only (a prompt's text is not one: an
    episode opens with ``system.opening(text)``). mypy catches a wrong state in typed code; this
    gives untyped callers a sentence instead of an attribute error deep in a view."""
    if not isinstance(state, Conversation):
        raise TypeError(
            f"a chat-mode state must be an astra_core.chat.Conversation, not {type(state).__name__} "
            f"{str(state)[:40]!r}; open an episode with system.opening(text)"
        )
    return state


def _encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    # verbose=False: contexts longer than the model are expected here; they are truncated after.
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [list(row) for row in encoded]


def eos_ids(tokenizer: PreTrainedTokenizerBase, generation_config: Any) -> set[int]:
    """The end-of-sequence ids: the tokenizer's, and every id of ``generation_config.eos_token_id``
    (an int or a list)."""
    ids: set[int] = set()
    if isinstance(tokenizer.eos_token_id, int):
        ids.add(tokenizer.eos_token_id)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(i for i in configured if isinstance(i, int))
    return ids


class TextView:
    """Plain text: ``context`` then ``continuation``, tokenised separately, oldest tokens cut first."""

    suffix_tokens = 0

    def __init__(self, tokenizer: PreTrainedTokenizerBase, n_positions: int, start_id: int, stop_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.n_positions = n_positions
        self.start_id = start_id
        self.stop_ids = frozenset(stop_ids)

    def truncate(self, ids: list[int], keep: int) -> list[int]:
        """The latest `keep` tokens; an empty context becomes the start token, so the first
        continuation token has something to be predicted from."""
        ids = ids[-keep:] if keep > 0 else []
        return ids or [self.start_id]

    def contexts(self, states: Sequence[str], budget: int) -> tuple[list[str], list[list[int]]]:
        """The texts themselves as keys, their ids cut to `budget`."""
        return list(states), [self.truncate(ids, budget) for ids in _encode(self.tokenizer, states)]

    def pairs(self, states: Sequence[str], continuations: Sequence[str], budget: int) -> Rows:
        """Context ids (cut to leave room for the continuation) followed by the continuation's ids."""
        rows = Rows([], [], [], [])
        for state, continuation, context_ids, continuation_ids in zip(
            states, continuations, _encode(self.tokenizer, states), _encode(self.tokenizer, continuations), strict=True
        ):
            context_ids = self.truncate(context_ids, min(budget, _room(self.n_positions, continuation_ids)))
            rows.keys.append(state + continuation)
            rows.ids.append(context_ids + continuation_ids)
            rows.starts.append(len(context_ids))
            rows.tails.append(0)
        return rows


def _room(n_positions: int, continuation_ids: Sequence[int]) -> int:
    room = n_positions - len(continuation_ids)
    if room < 1:
        raise ValueError(f"a continuation of {len(continuation_ids)} tokens does not fit n_positions={n_positions}")
    return room


class ChatTemplate:
    """A tokenizer's chat template: rendering, exact tokenisation and its end-of-turn token."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, source: str, role: str) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                f"{role} {source!r} has no chat template in its tokenizer, so it cannot run in chat mode; "
                f"turn chat mode off for the {role} or use a model with a chat template"
            )
        self.tokenizer = tokenizer
        self.source = source
        self.end_of_turn = self._end_of_turn()

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = True) -> str:
        """The template's text for `messages` (with the assistant's header after them)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return str(text)

    def encode(self, text: str) -> list[int]:
        """Ids of a rendered template, as ``apply_chat_template(..., tokenize=True)`` gives them: the
        template writes BOS and every special token itself."""
        return _encode(self.tokenizer, [text])[0]

    def _end_of_turn(self) -> int | None:
        # The first special token the template writes after an assistant message's content.
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
        try:
            text = self.render(messages, generation_prompt=False)
        except Exception:  # a template that cannot end on an assistant turn: stop on eos alone
            return None
        after = text[text.find(_SENTINEL) + len(_SENTINEL) :] if _SENTINEL in text else ""
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        for token in _encode(self.tokenizer, [after])[0] if after else []:
            if token in special:
                return token
            if str(self.tokenizer.decode([token])).strip():
                break
        return None


class ChatView:
    """The target's chat template over a conversation (see the module doc)."""

    def __init__(
        self,
        template: ChatTemplate,
        system_prompt: str | None,
        stop_ids: set[int],
        probe_tokens: int,
    ) -> None:
        self.template = template
        self.system_prompt = system_prompt
        eot = template.end_of_turn
        self.stop_ids = frozenset(stop_ids | ({eot} if eot is not None else set()))
        self.suffix_tokens = self._suffix_tokens()
        self.probe_tokens = probe_tokens

    def _messages(self, turns: Sequence[Message]) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return head + Conversation(tuple(turns)).merged().as_dicts()

    def _suffix_tokens(self) -> int:
        text = self.template.render(self._messages([Message("user", _SENTINEL)]))
        return len(self.template.encode(text[text.find(_SENTINEL) + len(_SENTINEL) :])) + 2

    def fit(self, conversation: Conversation, budget: int) -> tuple[list[Message], str, list[int]]:
        """The latest whole turns that fit `budget` tokens with the system prompt, rendered and
        tokenised. The last message always stays; if it alone is too long, its oldest characters go."""
        turns = list(checked_conversation(conversation).messages)
        while True:
            text = self.template.render(self._messages(turns))
            ids = self.template.encode(text)
            if len(ids) <= budget:
                return turns, text, ids
            if len(turns) > 1:
                turns = turns[1:]
                continue
            last = turns[0]
            excess = len(ids) - budget
            kept = last.content[max(1, excess * 2) :] if len(last.content) > 1 else ""
            if kept == last.content or not last.content:
                raise ValueError(
                    f"the chat template of {self.template.source!r} alone takes {len(ids)} tokens, over the "
                    f"budget of {budget}; shorten the system prompt or raise max_context_tokens"
                )
            turns = [Message(last.role, kept)]

    def contexts(self, states: Sequence[Conversation], budget: int) -> tuple[list[str], list[list[int]]]:
        """The rendered template (generation prompt included) as key, and its ids."""
        keys: list[str] = []
        rows: list[list[int]] = []
        for state in states:
            _, text, ids = self.fit(state, budget)
            keys.append(text)
            rows.append(ids)
        return keys, rows

    def pairs(self, states: Sequence[Conversation], continuations: Sequence[str], budget: int) -> Rows:
        """Each probe as the user's next message: the row is exactly what the target reads to
        answer it, and the probe's span the tokens its characters fall in."""
        rows = Rows([], [], [], [])
        for state, probe in zip(states, continuations, strict=True):
            turns, text, ids = self.fit(checked_conversation(state).then("user", probe), budget)
            start, end = self._span(turns, text, probe)
            rows.keys.append(text)
            rows.ids.append(ids)
            rows.starts.append(start)
            rows.tails.append(len(ids) - end)
        return rows

    def _span(self, turns: list[Message], text: str, probe: str) -> tuple[int, int]:
        """Token positions [start, end) covering the probe, the end of the last message (which
        may hold an opening user message before it, or only the probe's end after truncation)."""
        last = turns[-1]
        kept = len(probe) if last.content.endswith(probe) else len(last.content)
        marked = [*turns[:-1], Message(last.role, last.content[: len(last.content) - kept] + _SENTINEL)]
        marked_text = self.template.render(self._messages(marked))
        at = marked_text.find(_SENTINEL)
        before, after = marked_text[:at], marked_text[at + len(_SENTINEL) :]
        encoded = self.template.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets: list[tuple[int, int]] = [(int(a), int(b)) for a, b in encoded["offset_mapping"]]
        if at < 0 or not text.startswith(before) or not text.endswith(after) or len(before) + len(after) > len(text):
            if not probe.strip():  # a blank probe the template trimmed away: nothing to score
                return len(offsets), len(offsets)
            raise ValueError(
                f"the chat template of {self.template.source!r} changes message text beyond trimming; "
                f"it cannot be used in chat mode"
            )
        first_char, end_char = len(before), len(text) - len(after)
        covering = [i for i, (a, b) in enumerate(offsets) if a < end_char and b > first_char]
        if not covering:  # an empty probe: an empty span where it would start
            position = next((i for i, (a, _) in enumerate(offsets) if a >= first_char), len(offsets))
            return position, position
        return covering[0], covering[-1] + 1


def transcript(messages: Sequence[Message]) -> str:
    """``User: ...`` and ``Assistant: ...`` lines, one per message (system messages left out)."""
    lines = []
    for m in messages:
        if m.role == "system":
            continue
        name = "User" if m.role == "user" else "Assistant"
        # A line a model continued after "Name:" already starts with its own space.
        lines.append(f"{name}:{m.content}\n" if m.content[:1].isspace() else f"{name}: {m.content}\n")
    return "".join(lines)


class TranscriptView:
    """A base LM continuing a ``User: / Assistant:`` transcript: it writes `speaker`'s next line
    (the tester speaks as the user, a target without chat mode as the assistant)."""

    suffix_tokens = 0

    def __init__(self, text: TextView, newline_ids: set[int], speaker: str = "User") -> None:
        self.text = text
        self.speaker = speaker
        # A transcript line ends at a newline: the next line is someone else's turn.
        self.stop_ids = frozenset(text.stop_ids | newline_ids)

    def render(self, messages: Sequence[Message], speaker: str | None = None) -> str:
        """The transcript of `messages`, ending with the speaker's name for the model to continue."""
        return transcript(messages) + f"{speaker or self.speaker}:"

    def _fit(self, conversation: Conversation, budget: int, speaker: str | None = None) -> tuple[str, list[int]]:
        turns = [m for m in checked_conversation(conversation).messages if m.role != "system"]
        while True:
            text = self.render(turns, speaker)
            ids = _encode(self.text.tokenizer, [text])[0]
            if len(ids) <= budget or not turns:
                return text, self.text.truncate(ids, budget)
            turns = turns[1:]

    def contexts(self, states: Sequence[Conversation], budget: int) -> tuple[list[str], list[list[int]]]:
        """The transcripts as keys, their ids within `budget` (oldest whole turns dropped)."""
        fitted = [self._fit(state, budget) for state in states]
        return [text for text, _ in fitted], [ids for _, ids in fitted]

    def pairs(self, states: Sequence[Conversation], continuations: Sequence[str], budget: int) -> Rows:
        """The transcript's ids up to ``User:``, then the probe's (a probe is always the user's line)."""
        rows = Rows([], [], [], [])
        for state, continuation, continuation_ids in zip(
            states, continuations, _encode(self.text.tokenizer, continuations), strict=True
        ):
            text, ids = self._fit(state, min(budget, _room(self.text.n_positions, continuation_ids)), "User")
            rows.keys.append(text + continuation)
            rows.ids.append(ids + continuation_ids)
            rows.starts.append(len(ids))
            rows.tails.append(0)
        return rows


class InstructView:
    """An instruct model asked, through its chat template, to write the user's next message."""

    suffix_tokens = 0

    def __init__(self, template: ChatTemplate, instruction: str, stop_ids: set[int], n_positions: int) -> None:
        self.template = template
        self.instruction = instruction
        eot = template.end_of_turn
        self.stop_ids = frozenset(stop_ids | ({eot} if eot is not None else set()))
        self.n_positions = n_positions

    def render(self, messages: Sequence[Message]) -> str:
        """The template around one user message: the instruction, then the transcript so far."""
        request = f"{self.instruction}\n\nConversation:\n{transcript(messages) or '(none yet)'}"
        return self.template.render([{"role": "user", "content": request}])

    def _fit(self, conversation: Conversation, budget: int) -> tuple[str, list[int]]:
        turns = [m for m in checked_conversation(conversation).messages if m.role != "system"]
        while True:
            text = self.render(turns)
            ids = self.template.encode(text)
            if len(ids) <= budget:
                return text, ids
            if not turns:
                raise ValueError(
                    f"the tester's instruction alone takes {len(ids)} tokens, over its budget of {budget}; "
                    f"shorten tester_instruction"
                )
            turns = turns[1:]

    def contexts(self, states: Sequence[Conversation], budget: int) -> tuple[list[str], list[list[int]]]:
        """The rendered requests as keys, their ids (oldest whole turns dropped to fit)."""
        fitted = [self._fit(state, budget) for state in states]
        return [text for text, _ in fitted], [ids for _, ids in fitted]

    def pairs(self, states: Sequence[Conversation], continuations: Sequence[str], budget: int) -> Rows:
        """The request's ids, then the probe's (tokenised alone, as it was generated)."""
        rows = Rows([], [], [], [])
        for state, continuation, continuation_ids in zip(
            states, continuations, _encode(self.template.tokenizer, continuations), strict=True
        ):
            text, ids = self._fit(state, min(budget, _room(self.n_positions, continuation_ids)))
            rows.keys.append(text + continuation)
            rows.ids.append(ids + continuation_ids)
            rows.starts.append(len(ids))
            rows.tails.append(0)
        return rows


def newline_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every vocabulary id whose text holds a line break (where a transcript line ends)."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    ids = list(vocab.values())
    texts = tokenizer.batch_decode([[i] for i in ids])
    return {i for i, text in zip(ids, texts, strict=True) if "\n" in text}
