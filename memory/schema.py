"""DuckDB schema of the dialogue store: DDL as forward migrations, and the code that applies them.

``MIGRATIONS[i]`` upgrades a database from version ``i`` to version ``i + 1``; it is a tuple of SQL
statements run in one transaction together with the ``schema_version`` row that records it. Never edit
a released step: append a new one (``ALTER TABLE …``, ``CREATE TABLE …``, data fixes) instead.
``SCHEMA_VERSION`` is the version this code writes and expects (``len(MIGRATIONS)``).

Conventions: ids are ``BIGINT`` (Telegram ids are 64-bit); timestamps are ``TIMESTAMPTZ`` (the store
writes and reads them as UTC microseconds, see ``memory.duckdb_store``); settings are ``JSON`` objects.

Step 2 adds ``subscriptions`` and ``payments`` (docs/design.md §7; used by the ``tiers`` package). Step 3 adds
the usage columns of media (``seconds``, ``images``, ``pages``) and ``documents`` / ``document_chunks``
(the text of documents read into memory: vector memory is rebuilt from them too). Step 4 adds
``deliveries`` (the durable "a reply to this message is being sent" record that keeps a restart from
answering twice), ``api_keys`` (users' and groups' own API keys, encrypted) and ``memory_evictions`` (messages whose memory the capacity cleanup dropped on purpose:
the start-up gap check and ``kith memory reindex`` leave them unembedded). Step 5 marks the messages
the host imported (``messages.imported``: capacity cleanup neither counts nor evicts them) and logs
what each capacity cleanup removed and why (``cleanups``: ``/memory`` and ``kith memory stats`` show it).
Step 6 gives a subscription bought as a Telegram Stars subscription its first charge id and whether it
renews (``subscriptions.charge_id``, ``subscriptions.renews``; NULL for the others).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .errors import MemoryStoreError

if TYPE_CHECKING:  # types only: the module runs on a connection it is given
    import duckdb

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "current_version", "from_us", "migrate", "to_us"]

# ---------------------------------------------------------------- migrations

_V1 = (
    """
    CREATE TABLE chats (
        chat_id     BIGINT PRIMARY KEY,
        type        VARCHAR NOT NULL,            -- private | group | supergroup | channel | unknown
        title       VARCHAR,
        settings    JSON NOT NULL DEFAULT '{}',
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE users (
        user_id     BIGINT PRIMARY KEY,
        username    VARCHAR,
        name        VARCHAR,
        settings    JSON NOT NULL DEFAULT '{}',
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE messages (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        thread_id   BIGINT,
        user_id     BIGINT NOT NULL,
        user_name   VARCHAR NOT NULL,
        role        VARCHAR NOT NULL,            -- user | assistant
        text        VARCHAR NOT NULL,
        reply_to    BIGINT,
        date        TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
    """
    CREATE TABLE usage (
        ts                 TIMESTAMPTZ NOT NULL,
        chat_id            BIGINT NOT NULL,
        user_id            BIGINT NOT NULL,
        kind               VARCHAR NOT NULL,     -- chat | image | transcription
        model              VARCHAR NOT NULL,
        prompt_tokens      BIGINT NOT NULL,
        completion_tokens  BIGINT NOT NULL,
        cost_usd           DOUBLE,               -- NULL = unknown price (not free)
        latency_ms         DOUBLE NOT NULL
    )
    """,
    """
    CREATE TABLE recalls (
        chat_id            BIGINT NOT NULL,
        reply_message_id   BIGINT NOT NULL,      -- the bot's reply the memories were injected into
        memory_message_id  BIGINT NOT NULL,      -- the recalled message, same chat
        score              DOUBLE NOT NULL,
        PRIMARY KEY (chat_id, reply_message_id, memory_message_id)
    )
    """,
)

_V2 = (
    """
    CREATE TABLE subscriptions (
        scope       VARCHAR NOT NULL CHECK (scope IN ('user', 'chat')),
        scope_id    BIGINT NOT NULL,             -- a user id or a chat id
        tier        VARCHAR NOT NULL,            -- a tier name of tiers.yaml
        expires_at  TIMESTAMPTZ,                 -- NULL = never expires
        source      VARCHAR NOT NULL,            -- cli | payment:<charge id> | ...
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (scope, scope_id)
    )
    """,
    """
    CREATE TABLE payments (
        charge_id   VARCHAR PRIMARY KEY,         -- telegram_payment_charge_id: one row per payment
        user_id     BIGINT NOT NULL,             -- who paid
        chat_id     BIGINT NOT NULL,             -- where
        plan        VARCHAR NOT NULL,
        tier        VARCHAR NOT NULL,
        days        INTEGER NOT NULL,
        amount      BIGINT NOT NULL,             -- in the currency's smallest unit (XTR: Stars)
        currency    VARCHAR NOT NULL,
        scope       VARCHAR NOT NULL,            -- what was paid for: user | chat
        scope_id    BIGINT NOT NULL,
        paid_at     TIMESTAMPTZ NOT NULL         -- ("at" is a reserved word in DuckDB)
    )
    """,
)

_V3 = (
    "ALTER TABLE usage ADD COLUMN seconds DOUBLE DEFAULT 0",   # audio seconds transcribed
    "ALTER TABLE usage ADD COLUMN images INTEGER DEFAULT 0",   # images generated
    "ALTER TABLE usage ADD COLUMN pages INTEGER DEFAULT 0",    # document pages read
    """
    CREATE TABLE documents (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,             -- the message that carried the file
        file_name   VARCHAR NOT NULL,
        mime_type   VARCHAR,
        kind        VARCHAR NOT NULL,            -- pdf | docx | text
        size_bytes  BIGINT NOT NULL,
        pages       INTEGER NOT NULL,            -- PDF pages, 0 otherwise
        chunks      INTEGER NOT NULL,
        user_id     BIGINT NOT NULL,
        user_name   VARCHAR NOT NULL,
        date        TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
    """
    CREATE TABLE document_chunks (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        chunk       INTEGER NOT NULL,            -- 0-based position in the document
        page        INTEGER,                     -- 1-based PDF page the chunk starts on
        section     VARCHAR,                     -- DOCX heading above it
        text        VARCHAR NOT NULL,
        PRIMARY KEY (chat_id, message_id, chunk)
    )
    """,
)

_V4 = (
    """
    CREATE TABLE deliveries (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,             -- the message a reply was sent to
        sent_at     TIMESTAMPTZ NOT NULL,        -- noted (reserve, then commit) before the reply's first byte left
        PRIMARY KEY (chat_id, message_id)
    )
    """,
    """
    CREATE TABLE api_keys (
        scope       VARCHAR NOT NULL CHECK (scope IN ('user', 'chat')),
        scope_id    BIGINT NOT NULL,
        provider    VARCHAR NOT NULL,            -- litellm provider: openai, anthropic, ...
        token       BLOB NOT NULL,               -- Fernet token of the key (providers.keys)
        hint        VARCHAR NOT NULL,            -- the key's last four characters, to show which is set
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (scope, scope_id, provider)
    )
    """,
    """
    CREATE TABLE memory_evictions (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,             -- its memory (and its document's) left vector memory
        evicted_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
)

_V5 = (
    "ALTER TABLE messages ADD COLUMN imported BOOLEAN DEFAULT false",  # kith import: the host's, never cleaned up
    """
    CREATE TABLE cleanups (
        chat_id     BIGINT NOT NULL,             -- the chat something was removed from
        cleaned_at  TIMESTAMPTZ NOT NULL,       -- ("at" is a reserved word in DuckDB)
        scope       VARCHAR NOT NULL,            -- whose limit was passed: chat | user
        scope_id    BIGINT NOT NULL,
        tier        VARCHAR NOT NULL,            -- the scope's tier then
        limit_name  VARCHAR NOT NULL,            -- dialogue_limit | memory_limit
        limit_value BIGINT NOT NULL,
        messages    BIGINT NOT NULL,             -- messages deleted (both stores)
        memories    BIGINT NOT NULL              -- memories dropped (the messages kept)
    )
    """,
)

_V6 = (
    "ALTER TABLE subscriptions ADD COLUMN renews BOOLEAN",    # a Telegram Stars subscription: renews (true) or cancelled (false)
    "ALTER TABLE subscriptions ADD COLUMN charge_id VARCHAR",  # its first payment's telegram_payment_charge_id
)

MIGRATIONS: list[tuple[str, ...]] = [
    _V1,
    _V2,  # subscriptions, payments
    _V3,  # usage by kind (seconds, images, pages); documents and their chunks
    _V4,  # deliveries (exactly-once replies), api keys (encrypted), memory evictions (capacity cleanup)
    _V5,  # messages.imported (the host's history, kept whatever the tier), the capacity cleanups' log
    _V6,  # subscriptions.renews, subscriptions.charge_id (Telegram Stars subscriptions)
]

SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL
)
"""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch of ``ts``; a naive ``ts`` is taken as UTC."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _ONE_US


def from_us(us: int) -> datetime:
    """The tz-aware UTC datetime of ``us`` microseconds since the Unix epoch."""
    return _EPOCH + timedelta(microseconds=us)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open DuckDB connection (0 for an empty database). Blocking."""
    con.execute(_VERSION_TABLE)
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(con: duckdb.DuckDBPyConnection, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> tuple[int, int]:
    """Bring the database on ``con`` up to ``SCHEMA_VERSION``; return ``(from_version, to_version)``.

    Blocking (call it in a worker thread). Each step runs in its own transaction, so a failure leaves
    the database at the last complete version. raises MemoryStoreError when the file was written by a
    newer Kith (its version is above ``SCHEMA_VERSION``) or a step fails.
    """
    start = current_version(con)
    if start > SCHEMA_VERSION:
        raise MemoryStoreError(
            f"the database is at schema version {start}, newer than this Kith understands ({SCHEMA_VERSION}); "
            "upgrade Kith"
        )
    for version in range(start + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            for stmt in MIGRATIONS[version - 1]:
                con.execute(stmt)
            con.execute(
                "INSERT INTO schema_version VALUES (?, make_timestamp(?) AT TIME ZONE 'UTC')",
                [version, to_us(clock())],
            )
            con.execute("COMMIT")
        except Exception as exc:
            con.execute("ROLLBACK")
            raise MemoryStoreError(f"schema migration to version {version} failed: {exc}") from exc
    return start, SCHEMA_VERSION
