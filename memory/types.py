"""Plain data shared by the memory package and its callers.

Every timestamp is a timezone-aware ``datetime`` in UTC. Message ids are Telegram's: unique per
chat (``(chat_id, message_id)`` is the key everywhere), ``int`` (64-bit).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "CHUNK_ID_MIN",
    "DOC_ID_BASE",
    "MAX_CHUNKS",
    "MIGRATION_SHIFT",
    "ROLE_ASSISTANT",
    "ROLE_USER",
    "USAGE_GROUPINGS",
    "USAGE_KINDS",
    "ChatInfo",
    "CleanupRecord",
    "DocumentChunk",
    "DocumentInfo",
    "MemoryHit",
    "PaymentRecord",
    "StoredMessage",
    "SubscriptionRecord",
    "UsageCount",
    "UsageRecord",
    "UsageTotal",
    "chunk_memory_id",
    "is_chunk_id",
    "migrated_id",
]

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
    thread_id: forum topic / thread id, ``None`` outside threads. imported: brought in by the host
    (``kith import``), not said to the bot: capacity cleanup neither counts nor evicts it.
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
    imported: bool = False


@dataclass(frozen=True, slots=True)
class CleanupRecord:
    """What a capacity cleanup removed from one chat, and why (``memory.cleanup``).

    scope, scope_id: whose limit was passed — ``"chat"`` and the chat's id, or ``"user"`` and the
    user's id (a user's limit counts their messages in every chat). tier: the scope's tier (a name of
    tiers.yaml). limit_name: ``"dialogue_limit"`` (messages deleted from both stores) or
    ``"memory_limit"`` (memories dropped, the messages kept). limit: its value then. messages /
    memories: how many were removed. at: when (tz-aware UTC; the latest one in summaries).
    """

    chat_id: int
    at: datetime
    scope: str
    scope_id: int
    tier: str
    limit_name: str
    limit: int
    messages: int = 0
    memories: int = 0


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A recalled memory: a stored message of one chat and why it was returned.

    score: the fused relevance score (higher is better, not calibrated across queries).
    parts: the score's components by name, e.g. ``{"vector": 0.61, "fts": 7.2, "rrf": 0.032}``,
    for ``/memory`` and ``kith memory search --explain``.
    vector_rank / fts_rank: the row's 1-based rank in the vector / full-text leg (None: that leg did
    not return it). stages: what the recall stages did to it, e.g. ``("neighbour of 41",)``
    (``memory.retrieval``), for ``kith memory search --json``'s ``why``.
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
    source: str | None = None  # documents: the file name the text comes from
    page: int | None = None  # documents: the 1-based page (PDF) the text starts on
    parent: int | None = None  # documents: the message id of the file message the chunk belongs to
    vector_rank: int | None = None
    fts_rank: int | None = None
    stages: tuple[str, ...] = ()

    @property
    def citation(self) -> str | None:
        """``"report.pdf, p. 3"`` (or ``"report.pdf"``) for a document chunk; None for a message."""
        if not self.source:
            return None
        return f"{self.source}, p. {self.page}" if self.page else self.source


# documents' chunks live in vector memory under ids of their own, far above any message id:
# DOC_ID_BASE + (file message id << 16) + chunk index (-2**43 <= file message ids < 2**44,
# ≤ 65,536 chunks); every chunk id is >= CHUNK_ID_MIN, every message id below it
DOC_ID_BASE = 1 << 61
MAX_CHUNKS = 1 << 16
_MAX_DOC_MESSAGE_ID = 1 << 44
_MIN_DOC_MESSAGE_ID = -(1 << 43)
CHUNK_ID_MIN = DOC_ID_BASE + (_MIN_DOC_MESSAGE_ID << 16)

# A basic group upgraded to a supergroup (Telegram's ``migrate_to_chat_id``) moves to the new chat id,
# whose message ids restart at 1: its messages keep their order *before* the supergroup's own by
# becoming ``old id - MIGRATION_SHIFT`` (negative; Telegram's ids are < 2**31, local ones ~2**40).
MIGRATION_SHIFT = 1 << 42


def migrated_id(message_id: int) -> int:
    """The id a message of a basic group takes in the supergroup it was upgraded to (negative)."""
    return message_id - MIGRATION_SHIFT


def is_chunk_id(memory_id: int) -> bool:
    """Whether a vector-memory id is a document chunk's (``chunk_memory_id``), not a message's."""
    return memory_id >= CHUNK_ID_MIN


def chunk_memory_id(message_id: int, index: int) -> int:
    """The vector-memory id of chunk ``index`` of the document sent as message ``message_id``.
    Consecutive chunks get consecutive ids (so recall's neighbouring-turn stage reads the chunks
    around a hit). raises ValueError outside -2**43 <= message_id < 2**44, 0 <= index < 65,536."""
    if not _MIN_DOC_MESSAGE_ID <= message_id < _MAX_DOC_MESSAGE_ID or not 0 <= index < MAX_CHUNKS:
        raise ValueError(f"no chunk id for message {message_id}, chunk {index}")
    return DOC_ID_BASE + (message_id << 16) + index


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """A document (file) sent to a chat and read into its memory.

    message_id: the message that carried the file (stored as ``[file name] caption``). kind: ``pdf``
    | ``docx`` | ``text``. size_bytes: the file's size. pages: PDF pages (0 otherwise). chunks: how
    many chunks are in memory. date: tz-aware UTC, the message's date.
    """

    chat_id: int
    message_id: int
    file_name: str
    mime_type: str | None
    kind: str
    size_bytes: int
    pages: int
    chunks: int
    user_id: int
    user_name: str
    date: datetime


@dataclass(frozen=True, slots=True)
class DocumentChunk:
    """One chunk of a document's text, with its provenance (file, page or section, sender, date).

    message_id: the file message. index: 0-based position in the document. page: 1-based PDF page
    the chunk starts on (None for DOCX and text files). section: the DOCX heading above it, if any.
    """

    chat_id: int
    message_id: int
    index: int
    text: str
    page: int | None
    section: str | None
    file_name: str
    user_id: int
    user_name: str
    date: datetime

    @property
    def memory_id(self) -> int:
        return chunk_memory_id(self.message_id, self.index)


USAGE_KINDS = ("chat", "vision", "transcription", "image", "document", "tool", "memory", "query")


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One billed call, as stored in ``usage``.

    kind: ``"chat"`` (a turn's LLM call) | ``"vision"`` (a photo described by a vision model) |
    ``"transcription"`` (speech to text; ``seconds`` of audio) | ``"image"`` (``images``
    generated) | ``"document"`` (a document read into memory; ``pages``, no model cost) | ``"tool"``
    (one tool call the model made; no tokens, no cost) | ``"memory"`` (a batch of messages read by
    ``memory.memory_model`` for memory entries) | ``"query"`` (a question split into search queries by
    ``memory.query_model``).
    model: the alias used (after fallback), or the image/transcription model; for a tool call, its plugin.
    cost_usd: what the host pays, from litellm's price map; ``None`` when the model has no known price
    (unknown ≠ free); 0 for a chat call made on a member's or group's own API key (``/key``).
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
    seconds: float = 0.0
    images: int = 0
    pages: int = 0


@dataclass(frozen=True, slots=True)
class ChatInfo:
    """A chat known to the store. type: ``private|group|supergroup|channel|unknown`` (``unknown`` when
    messages exist but ``upsert_chat`` was never called). messages: stored message count.
    first_date/last_date: tz-aware UTC dates of the oldest/newest stored message, None if none."""

    chat_id: int
    type: str
    title: str | None
    messages: int
    first_date: datetime | None
    last_date: datetime | None


USAGE_GROUPINGS = ("user", "chat", "model", "day", "kind", "plugin")  # plugin: the tool calls (kind tool) by plugin


@dataclass(frozen=True, slots=True)
class UsageTotal:
    """Sums over the usage records of one group (``UsageStore.totals``).

    key: the group's value as text (a user or chat id, a model alias, a ``YYYY-MM-DD`` UTC day, a
    kind). cost_usd: the sum over the calls with a known price (0.0 when none had one).
    unpriced: calls whose cost is unknown. seconds: audio transcribed. images: generated. pages: read.
    """

    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    unpriced: int
    seconds: float
    images: int
    pages: int


@dataclass(frozen=True, slots=True)
class UsageCount:
    """Usage of one ``(chat, user, model, kind)`` in a time window (``UsageStore.counts``):
    calls, tokens (prompt + completion), images generated, seconds of audio, document pages read."""

    chat_id: int
    user_id: int
    model: str
    kind: str
    calls: int
    tokens: int
    images: int
    seconds: float
    pages: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    """A stored subscription row: ``scope`` ``"user"|"chat"`` and its id hold ``tier`` until
    ``expires_at`` (tz-aware UTC; None = never). source: who set it. updated_at: tz-aware UTC.

    A Telegram Stars subscription (a plan with ``subscription_period``) also has ``charge_id``, the
    ``telegram_payment_charge_id`` of its first payment (what cancelling or resuming it names), and
    ``renews``: True while Telegram renews it, False once the bot cancelled the renewal. None for
    both: not a Telegram subscription (a one-off purchase, a grant)."""

    scope: str
    scope_id: int
    tier: str
    expires_at: datetime | None
    source: str
    updated_at: datetime
    renews: bool | None = None
    charge_id: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A stored payment, keyed by Telegram's ``telegram_payment_charge_id``. amount: in the
    currency's smallest unit (Stars: whole stars). tier '' and days 0 when it matched no plan.
    paid_at: tz-aware UTC."""

    charge_id: str
    user_id: int
    chat_id: int
    plan: str
    tier: str
    days: int
    amount: int
    currency: str
    scope: str
    scope_id: int
    paid_at: datetime
