"""Plain data shared by the memory package and its callers.

Every timestamp is a timezone-aware ``datetime`` in UTC. Message ids are Telegram's: unique per
chat (``(chat_id, message_id)`` is the key everywhere), ``int`` (64-bit).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

ROLE_USER = "user"
ROLE_ASSISTANT = "assistant"


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a chat, as kept in the dialogue store.

    chat_id: Telegram chat id (negative for groups/channels). message_id: unique within the chat.
    user_id: the sender's id (the bot's own id for replies; a stable derived id for imported nicks).
    user_name: the sender's display name at the time of sending. role: ``"user"`` or ``"assistant"``.
    text: UTF-8, any length (Telegram caps at 4096 UTF-16 code units; imports may be longer).
    date: timezone-aware UTC. reply_to: the message id it answers, in the same chat.
    thread_id: forum topic / thread id, ``None`` outside threads.
    """

    chat_id: int
    message_id: int
    user_id: int
    user_name: str
    text: str
    date: datetime
    role: str = ROLE_USER
    reply_to: int | None = None
    thread_id: int | None = None


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A recalled memory: a stored message of one chat and why it was returned.

    score: the fused relevance score (higher is better, not calibrated across queries).
    parts: the score's components by name, e.g. ``{"vector": 0.61, "fts": 7.2, "rrf": 0.032}``,
    for ``/memory`` and ``kith memory search --explain``.
    """

    chat_id: int
    message_id: int
    user_id: int
    user_name: str
    text: str
    date: datetime
    score: float
    kind: str = "message"
    parts: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One billed call (a turn's LLM call, an image, a transcription), as stored in ``usage``.

    kind: ``"chat"`` | ``"image"`` | ``"transcription"``. model: the alias used (after fallback).
    cost_usd: from litellm's price map; ``None`` when the model has no known price (unknown ≠ free).
    latency_ms: wall time of the call, first byte to last.
    """

    ts: datetime
    chat_id: int
    user_id: int
    kind: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float
