"""Conversations as data: the state of a chat-mode system is its messages, not a flat string.

A `Conversation` is an immutable sequence of `Message` (role, content). A system in chat mode
applies a model's chat template where that model reads the conversation; samplers, algorithms
and scorers only pass it along (and scorers that read the context may look at its messages).

>>> talk = Conversation.opening("How was your weekend?").then("assistant", "Quiet, thanks.")
>>> [m.role for m in talk.messages], talk.last_role
(['user', 'assistant'], 'assistant')
>>> talk.as_dicts()[0]
{'role': 'user', 'content': 'How was your weekend?'}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One turn of a conversation: who spoke (`role`) and what they said (`content`)."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """The messages of a conversation so far, oldest first (hashable, never changed in place)."""

    messages: tuple[Message, ...] = ()

    @classmethod
    def opening(cls, text: str) -> Conversation:
        """A conversation that a user opened with `text`."""
        return cls((Message("user", text),))

    def then(self, role: Role, content: str) -> Conversation:
        """This conversation with one more message."""
        return Conversation((*self.messages, Message(role, content)))

    @property
    def last_role(self) -> Role | None:
        """Who spoke last (None for an empty conversation)."""
        return self.messages[-1].role if self.messages else None

    def as_dicts(self) -> list[dict[str, str]]:
        """The ``[{"role": ..., "content": ...}]`` list chat templates and JSON files take."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def merged(self) -> Conversation:
        """Consecutive messages of one role joined into one (a blank line between): some chat
        templates reject two user turns in a row, and a conversation opened by a user prompt
        followed by the user's next message has them.

        >>> Conversation.opening("Hi.").then("user", "Still there?").merged().messages
        (Message(role='user', content='Hi.\\n\\nStill there?'),)
        """
        out: list[Message] = []
        for message in self.messages:
            if out and out[-1].role == message.role:
                out[-1] = Message(message.role, out[-1].content + "\n\n" + message.content)
            else:
                out.append(message)
        return Conversation(tuple(out))

    def transcript(self, user: str = "User", assistant: str = "Assistant") -> str:
        """The conversation as plain text, one ``Name: content`` line per message."""
        names = {"user": user, "assistant": assistant, "system": "System"}
        return "\n".join(f"{names[m.role]}: {m.content}" for m in self.messages)

    def __str__(self) -> str:
        return self.transcript()
