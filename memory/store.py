"""The dialogue store seam: what every store of messages, chats, users, usage and billing promises.

``DialogueStore`` is the protocol the rest of Kith talks to; ``open_dialogue_store`` picks the
implementation from ``storage.dialogue`` (a DuckDB file by default). No caller sends SQL: every
statement lives in an implementation, behind the named methods below.

The contract (every implementation; ``tests/test_store_contract.py`` checks it against each):

- **Idempotent on ``(chat_id, message_id)``.** ``add``/``add_many`` keep the first write of a key; a
  re-delivered update, a replayed transcript or a duplicate inside one batch is stored once. The
  same holds for recalls ``(chat_id, reply_message_id, memory_message_id)``, deliveries, evictions
  and payments (``charge_id``, ``store.billing``).
- **Per-chat order.** Reads return a chat's messages by message id (``recent``: oldest → newest);
  rows of one kind are committed in the order they were queued.
- **Read-your-writes.** A read issued after a write (queued or awaited) in the same process sees it:
  reads of one chat first commit that chat's queued messages, reads across chats commit everything.
- **Batching.** The hot-path writes (``add``, ``add_many``, ``record_usage``, ``record_recall``,
  ``upsert_chat``) do not await: they queue (``memory.write_behind``) and one writer commits batches;
  ``flush()`` waits for the commit. ``note_delivery`` queues too, but is durable when it returns:
  its row is in the store's reserve (a ``kill -9`` finds it there at the next open) or, in a store
  without one, committed. Every other write commits before it returns.
- **Exactly once.** ``answered_ids`` (stored replies and noted deliveries, queued ones included)
  survives a crash of the process (a ``kill -9``) from the moment ``note_delivery`` returns, which a
  reply awaits before its first byte leaves: a message whose reply started to be sent is not
  answered again. (A power cut may lose what the reserve took since the last commit, see
  ``memory.write_behind``.)
- **Nothing lost silently.** A batch that fails on bad data is retried row by row and only the rows
  that can never be stored are dropped (logged, counted in ``stats()["dropped_rows"]``); a failing
  database keeps rows queued and retried (``flush`` raises ``MemoryStoreError`` meanwhile; intake
  raises ``DiskFull`` while the disk is full); rows still unwritten at shutdown are saved to files
  a person can import.
- **Texts** round-trip exactly, except U+0000 (which Telegram never sends), which a store may keep as
  U+FFFD (PostgreSQL's ``text`` cannot hold it).
- **Times** are tz-aware UTC ``datetime`` with microsecond precision; a naive one is taken as UTC.
- **Boundaries.** A chat's reads return only that chat's rows (memory never crosses chats, docs/design.md §4).

Errors: ``MemoryStoreError`` (root), ``StoreLocked`` (another process owns an embedded store),
``DiskFull``.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .api_keys import ApiKeyStore
from .billing_store import BillingStore
from .settings_store import SettingsStore
from .types import (
    CleanupRecord,
    DocumentChunk,
    DocumentInfo,
    MemoryHit,
    StoredMessage,
    UsageCount,
    UsageRecord,
    UsageTotal,
)

__all__ = ["DUCKDB_FILE", "POSTGRES_SCHEMES", "DialogueStore", "open_dialogue_store"]

DUCKDB_FILE = "kith.duckdb"


@runtime_checkable
class DialogueStore(Protocol):
    """A store of dialogue and bookkeeping rows (see the module docstring for the contract).

    Used as an async context manager: entering opens (and migrates) it and starts its writer;
    leaving commits what is queued and closes it.
    """

    async def __aenter__(self) -> DialogueStore: ...
    async def __aexit__(self, *exc: Any) -> bool | None: ...

    # ---------------------------------------------------------------- the write-behind queue
    def add(self, msg: StoredMessage) -> None:
        """Queue one message (no await). raises MemoryStoreError when closed; DiskFull for a member's
        message (intake) while the disk is full — the bot's own reply (a message already sent) is
        accepted then and kept in the store's reserve until a commit succeeds."""
    def add_many(self, msgs: Iterable[StoredMessage]) -> None:
        """Queue many messages (see ``add``)."""
    def record_usage(self, rec: UsageRecord) -> None:
        """Queue one usage record (one billed call)."""
    def record_recall(self, chat_id: int, reply_message_id: int, hits: Sequence[MemoryHit]) -> None:
        """Queue the memories injected into a reply. raises ValueError for a hit of another chat."""
    async def upsert_chat(self, chat_id: int, type: str, title: str | None) -> None:
        """Create or rename a chat (queued; an unchanged chat queues nothing)."""
    async def flush(self) -> None:
        """Return when every row queued before the call is committed. raises MemoryStoreError."""
    async def settle(self) -> None:
        """Return when every row queued before the call survives a crash of the process: at once
        when the store's reserve holds them all (a ``kill -9`` finds them there; the writer commits
        them soon), else as ``flush``. raises MemoryStoreError (only when it flushes)."""
    @property
    def pending(self) -> int:
        """Rows queued and not yet handed to the database."""
    @property
    def writer_lag_s(self) -> float:
        """Seconds the oldest uncommitted row has waited (0.0 when none)."""
    @property
    def disk_full(self) -> Any:
        """The ``DiskFull`` that stops intake, or None."""

    # ---------------------------------------------------------------- messages
    async def recent(self, chat_id: int, limit: int, *, thread_id: int | None = None, before_id: int | None = None,
                     general_only: bool = False) -> list[StoredMessage]:
        """The newest ``limit`` messages of a chat (of one thread, outside threads, below an id), oldest first."""
    async def get_messages(self, chat_id: int, message_ids: Sequence[int]) -> list[StoredMessage]:
        """The stored ones of ``message_ids`` in ``chat_id``, by id."""
    async def around(self, chat_id: int, message_ids: Sequence[int], before: int, after: int) -> dict[int, list[StoredMessage]]:
        """For each stored id: ``before`` messages preceding it, itself, ``after`` following, by id."""
    async def answered_ids(self, chat_id: int) -> set[int]:
        """Ids of the chat's messages the bot replied to (stored replies and noted deliveries)."""
    async def note_delivery(self, chat_id: int, message_id: int) -> None:
        """Durably note that a reply to ``message_id`` is being sent: a ``deliveries`` row, queued and
        committed with the chat's queued messages; on return it is in the store's reserve (no
        database round trip) or, without a reserve, committed. Accepted while the disk is full (the
        reserve's part for what was sent). raises MemoryStoreError when it cannot be kept."""
    async def max_message_id(self, chat_id: int) -> int | None:
        """The highest stored message id of the chat; None when it has none."""
    async def count_messages(self, chat_id: int | None = None, *, user_id: int | None = None,
                             imported: bool | None = None) -> int:
        """Stored messages in one chat and/or by one sender (all when both are None); ``imported``
        True/False: only the host's imports / only what was said in the chat."""
    def iter_messages(self, chat_id: int | None = None, *, batch: int = 5000) -> AsyncIterator[list[StoredMessage]]:
        """Every message (of one chat, or all) in pages of ≤ ``batch``, by ``(chat_id, message_id)``."""
    async def message_keys(self, *, chat_id: int | None = None, user_id: int | None = None,
                           before: datetime | None = None, limit: int | None = None,
                           imported: bool | None = None) -> list[tuple[int, int]]:
        """``(chat_id, message_id)`` of the messages in one chat and/or by one sender (at least one of
        them given), dated before ``before`` if given, oldest first by ``(date, message_id)``, at most
        ``limit``; ``imported`` as in ``count_messages``. raises ValueError when neither ``chat_id``
        nor ``user_id`` is given."""
    async def delete_messages(self, chat_id: int, *, user_id: int | None = None,
                              message_ids: Sequence[int] | None = None) -> list[int]:
        """Delete messages of a chat (all, one sender's, and/or some ids) with their recalls and
        documents; returns the deleted ids, ascending."""
    async def update_text(self, chat_id: int, message_id: int, text: str) -> StoredMessage | None:
        """Replace a message's text (an edit); the message as stored, or None when not stored."""
    async def migrate_chat(self, old: int, new: int, *, title: str | None = None) -> int:
        """Move a basic group to its supergroup in one transaction; returns the messages moved."""

    # ---------------------------------------------------------------- vector-memory bookkeeping
    async def memory_ids(self, chat_id: int | None = None) -> dict[int, set[int]]:
        """Per chat, the ids vector memory should hold (user messages with text, document chunks, minus evictions)."""
    async def note_evictions(self, chat_id: int, message_ids: Sequence[int]) -> None:
        """Record memories dropped on purpose by the capacity cleanup (not embedded again)."""
    async def evicted_ids(self, chat_id: int) -> set[int]:
        """Ids whose memory the capacity cleanup evicted."""
    async def record_cleanup(self, record: CleanupRecord) -> None:
        """Log what one capacity cleanup removed from one chat, and why (committed on return)."""
    async def cleanups(self, chat_id: int | None = None) -> list[CleanupRecord]:
        """What capacity cleanups removed, per chat and reason (scope, tier, limit): the sums of
        ``messages`` and ``memories`` and the latest ``at``; of one chat or of all, by chat id."""

    # ---------------------------------------------------------------- documents
    async def add_document(self, info: DocumentInfo, chunks: Sequence[DocumentChunk]) -> None:
        """Store a document and its chunks (replacing an earlier reading), in one transaction."""
    def has_documents(self, chat_id: int) -> bool:
        """Whether documents were ever read into the chat's memory."""
    async def documents(self, chat_id: int | None = None) -> list[DocumentInfo]:
        """The documents read into memory (of one chat, or all), oldest first."""
    def iter_document_chunks(self, chat_id: int | None = None, *, batch: int = 2000) -> AsyncIterator[list[DocumentChunk]]:
        """Every document chunk in pages of ≤ ``batch``, by ``(chat_id, message_id, chunk)``."""

    # ---------------------------------------------------------------- chats and users
    def knows_chat(self, chat_id: int) -> bool:
        """Whether the chat has a chat row."""

    # ---------------------------------------------------------------- the per-domain stores (memory.domains)
    @property
    def keys(self) -> ApiKeyStore:
        """Members' and groups' own API keys (``memory.api_keys``)."""
    @property
    def billing(self) -> BillingStore:
        """Subscriptions and payments (``memory.billing_store``)."""
    @property
    def settings(self) -> SettingsStore:
        """Chats' and members' settings, and the list of chats (``memory.settings_store``)."""

    # ---------------------------------------------------------------- usage and recalls
    async def usage_rows(self, *, since: datetime | None = None) -> list[UsageRecord]:
        """Usage records (all, or ``ts >= since``), oldest first."""
    async def usage_totals(self, by: str, *, since: datetime | None = None) -> list[UsageTotal]:
        """Usage summed per ``by`` (one of ``types.USAGE_GROUPINGS``; ``plugin``: the tool calls only,
        keyed by plugin), by key. raises ValueError."""
    async def usage_counts(self, start: datetime, end: datetime) -> list[UsageCount]:
        """Usage per ``(chat, user, model, kind)`` with ``start <= ts < end`` (quota counters)."""
    async def recalls_for(self, chat_id: int, reply_message_id: int) -> list[tuple[int, float]]:
        """``(memory_message_id, score)`` injected into a reply, best first."""

    # ---------------------------------------------------------------- operations
    async def stats(self) -> dict:
        """Row counts (chats, users, messages, usage, recalls), ``file_bytes``, ``schema_version``,
        and the writer counters ``commits``, ``rows_written``, ``dropped_rows``, ``pending``."""


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_dialogue_store(data_dir: Path, *, dialogue: str = "duckdb", flush_interval_s: float = 0.05,
                        flush_rows: int = 2000) -> DialogueStore:
    """The dialogue store ``dialogue`` names (``storage.dialogue``), not yet entered:

    - ``"duckdb"``: the DuckDB file ``<data_dir>/kith.duckdb`` (``memory.duckdb_store``), owned by one process;
    - ``"postgresql://…"`` (or ``postgres://``): that PostgreSQL database (``memory.postgres_store``),
      shared by any number of processes; rows it cannot write at shutdown are saved in ``data_dir``.

    raises ValueError for another value; MemoryStoreError subclasses on entering, not here."""
    if dialogue == "duckdb":
        from .duckdb_store import DuckDBStore

        return DuckDBStore(Path(data_dir) / DUCKDB_FILE, flush_interval_s=flush_interval_s, flush_rows=flush_rows)
    if dialogue.startswith(POSTGRES_SCHEMES):
        from .postgres_store import PostgresStore

        return PostgresStore(dialogue, dump_dir=Path(data_dir), flush_interval_s=flush_interval_s, flush_rows=flush_rows)
    raise ValueError(f"storage.dialogue must be 'duckdb' or a postgresql:// URL, not {dialogue!r}")
