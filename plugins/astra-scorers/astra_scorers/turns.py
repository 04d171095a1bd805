"""What the context-aware scorers read of a turn: its probe, its response, and the conversation before it."""

from __future__ import annotations

from typing import Any

from astra_core.turns import Turn

TurnLike = Turn[Any, str]
"""A turn as the context-aware scorers read it: any context (a string or a `Conversation`), a
text probe, a text response or None."""


def context_messages(context: Any) -> list[dict[str, Any]]:
    """The user and assistant messages of a conversation context (a chat-mode system's
    `Conversation`); a plain-text context (a string the tester continued) holds no turns: []."""
    messages = getattr(context, "messages", None)
    if messages is None:
        return []
    return [{"role": m.role, "content": m.content} for m in messages if m.role in ("user", "assistant")]
