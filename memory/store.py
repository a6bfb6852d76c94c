"""The dialogue store seam: what every store of messages, chats, users, usage and billing promises.

``DialogueStore`` is the protocol the rest of Kith talks to; ``open_dialogue_store`` picks the
implementation from ``storage.dialogue`` (a DuckDB file by default). No caller sends SQL: every
statement lives in an implementation, behind the named methods below.

The contract (every implementation; ``tests/test_store_contract.py`` checks it against each):

- **Idempotent on ``(chat_id, message_id)``.** ``add``/``add_many`` keep the first write of a key; a
  re-delivered update, a replayed transcript or a duplicate inside one batch is stored once. The
  same holds for recalls ``(chat_id, reply_message_id, memory_message_id)``, deliveries, evictions
  and payments (``charge_id``, ``store.billing``).
- **Per-chat order.** Reads return a chat's messages by message id (``messages.recent``: oldest → newest);
  rows of one kind are committed in the order they were queued.
- **Read-your-writes.** A read issued after a write (queued or awaited) in the same process sees it:
  reads of one chat first commit that chat's queued messages, reads across chats commit everything.
- **Batching.** The hot-path writes (``add``, ``add_many``, ``record_usage``, ``record_recall``,
  ``upsert_chat``) do not await: they queue (``memory.write_behind``) and one writer commits batches;
  ``flush()`` waits for the commit. ``note_delivery`` queues too, but is durable when it returns:
  its row is in the store's reserve (a ``kill -9`` finds it there at the next open) or, in a store
  without one, committed. Every other write commits before it returns.
- **Exactly once.** ``messages.answered_ids`` (stored replies and noted deliveries, queued ones included)
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

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .api_keys import ApiKeyStore
from .billing_store import BillingStore
from .document_store import DocumentStore
from .index_bookkeeping import IndexBookkeeping
from .message_store import MessageStore
from .settings_store import SettingsStore
from .types import (
    MemoryHit,
    StoredMessage,
    UsageRecord,
)
from .usage_store import UsageStore

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
    async def note_delivery(self, chat_id: int, message_id: int) -> None:
        """Durably note that a reply to ``message_id`` is being sent: a ``deliveries`` row, queued and
        committed with the chat's queued messages; on return it is in the store's reserve (no
        database round trip) or, without a reserve, committed. Accepted while the disk is full (the
        reserve's part for what was sent). raises MemoryStoreError when it cannot be kept."""
    async def migrate_chat(self, old: int, new: int, *, title: str | None = None) -> int:
        """Move a basic group to its supergroup in one transaction; returns the messages moved."""


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
    def usage(self) -> UsageStore:
        """Reads of usage records and recalls (``memory.usage_store``: ``rows``, ``totals``,
        ``counts``, ``recalls_for``); written through ``record_usage`` / ``record_recall``."""
    @property
    def documents(self) -> DocumentStore:
        """Documents read into memory and their chunks (``memory.document_store``)."""
    @property
    def index(self) -> IndexBookkeeping:
        """Vector-memory bookkeeping: the ids LanceDB should hold (``memory_ids``), the evictions and
        the capacity cleanups' log (``memory.index_bookkeeping``)."""
    @property
    def messages(self) -> MessageStore:
        """The stored messages: ``recent``, ``get``, ``around``, ``answered_ids``, ``max_id``, ``count``,
        ``iter``, ``keys``, ``update_text``, ``delete`` (``memory.message_store``)."""
    @property
    def settings(self) -> SettingsStore:
        """Chats' and members' settings, and the list of chats (``memory.settings_store``)."""


    # ---------------------------------------------------------------- operations
    async def stats(self) -> dict[str, Any]:
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
        from .duckdb_store import DuckDBStore  # deferred: duckdb (~230 ms), only on the DuckDB backend

        return DuckDBStore(Path(data_dir) / DUCKDB_FILE, flush_interval_s=flush_interval_s, flush_rows=flush_rows)
    if dialogue.startswith(POSTGRES_SCHEMES):
        from .postgres_store import PostgresStore  # deferred: ~6 ms, only on the PostgreSQL backend

        return PostgresStore(dialogue, dump_dir=Path(data_dir), flush_interval_s=flush_interval_s, flush_rows=flush_rows)
    raise ValueError(f"storage.dialogue must be 'duckdb' or a postgresql:// URL, not {dialogue!r}")
