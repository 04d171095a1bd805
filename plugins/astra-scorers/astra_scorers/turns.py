"""What the context-aware scorers read of a turn: its probe, its response, and the conversation before it."""

from __future__ import annotations

from typing import Any, Protocol


class TurnLike(Protocol):
    """A turn to score (`astra_core.turns.Turn` is one): context, probe, response or None."""

    @property
    def context(self) -> Any: ...

    @property
    def probe(self) -> str: ...

    @property
    def response(self) -> str | None: ...


def context_messages(context: Any) -> list[dict[str, Any]]:
    """The user and assistant messages of a conversation context (a chat-mode system's
    `Conversation`); a plain-text context (a string the tester continued) holds no turns: []."""
    messages = getattr(context, "messages", None)
    if messages is None:
        return []
    return [{"role": m.role, "content": m.content} for m in messages if m.role in ("user", "assistant")]
