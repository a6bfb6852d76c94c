"""PostgreSQL schema of the dialogue store: DDL as forward migrations, applied under an advisory lock.

The same tables as the DuckDB store (``memory.schema``), in PostgreSQL's types: ids ``BIGINT``,
timestamps ``TIMESTAMPTZ``, texts ``TEXT``, settings ``JSONB``, key tokens ``BYTEA``. ``MIGRATIONS[i]``
upgrades version ``i`` to ``i + 1``; never edit a released step, append one. Several processes may
start at once against one database: ``migrate`` takes a transaction-scoped advisory lock, so exactly
one of them applies each step and the others see it applied.
"""
from __future__ import annotations

from typing import Any

from .errors import MemoryStoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

_V1 = (
    """
    CREATE TABLE chats (
        chat_id     BIGINT PRIMARY KEY,
        type        TEXT NOT NULL,               -- private | group | supergroup | channel | unknown
        title       TEXT,
        settings    JSONB NOT NULL DEFAULT '{}',
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE users (
        user_id     BIGINT PRIMARY KEY,
        username    TEXT,
        name        TEXT,
        settings    JSONB NOT NULL DEFAULT '{}',
        created_at  TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE messages (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        thread_id   BIGINT,
        user_id     BIGINT NOT NULL,
        user_name   TEXT NOT NULL,
        role        TEXT NOT NULL,               -- user | assistant
        text        TEXT NOT NULL,
        reply_to    BIGINT,
        date        TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
    "CREATE INDEX messages_by_user ON messages (user_id, date)",
    """
    CREATE TABLE usage (
        ts                 TIMESTAMPTZ NOT NULL,
        chat_id            BIGINT NOT NULL,
        user_id            BIGINT NOT NULL,
        kind               TEXT NOT NULL,        -- chat | vision | transcription | image | document
        model              TEXT NOT NULL,
        prompt_tokens      BIGINT NOT NULL,
        completion_tokens  BIGINT NOT NULL,
        cost_usd           DOUBLE PRECISION,     -- NULL = unknown price (not free)
        latency_ms         DOUBLE PRECISION NOT NULL,
        seconds            DOUBLE PRECISION NOT NULL DEFAULT 0,
        images             INTEGER NOT NULL DEFAULT 0,
        pages              INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX usage_by_ts ON usage (ts)",
    """
    CREATE TABLE recalls (
        chat_id            BIGINT NOT NULL,
        reply_message_id   BIGINT NOT NULL,
        memory_message_id  BIGINT NOT NULL,
        score              DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (chat_id, reply_message_id, memory_message_id)
    )
    """,
    """
    CREATE TABLE subscriptions (
        scope       TEXT NOT NULL CHECK (scope IN ('user', 'chat')),
        scope_id    BIGINT NOT NULL,
        tier        TEXT NOT NULL,
        expires_at  TIMESTAMPTZ,                 -- NULL = never expires
        source      TEXT NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (scope, scope_id)
    )
    """,
    """
    CREATE TABLE payments (
        charge_id   TEXT PRIMARY KEY,            -- telegram_payment_charge_id
        user_id     BIGINT NOT NULL,
        chat_id     BIGINT NOT NULL,
        plan        TEXT NOT NULL,
        tier        TEXT NOT NULL,
        days        INTEGER NOT NULL,
        amount      BIGINT NOT NULL,
        currency    TEXT NOT NULL,
        scope       TEXT NOT NULL,
        scope_id    BIGINT NOT NULL,
        paid_at     TIMESTAMPTZ NOT NULL
    )
    """,
    "CREATE INDEX payments_by_user ON payments (user_id)",
    """
    CREATE TABLE documents (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        file_name   TEXT NOT NULL,
        mime_type   TEXT,
        kind        TEXT NOT NULL,
        size_bytes  BIGINT NOT NULL,
        pages       INTEGER NOT NULL,
        chunks      INTEGER NOT NULL,
        user_id     BIGINT NOT NULL,
        user_name   TEXT NOT NULL,
        date        TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
    """
    CREATE TABLE document_chunks (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        chunk       INTEGER NOT NULL,
        page        INTEGER,
        section     TEXT,
        text        TEXT NOT NULL,
        PRIMARY KEY (chat_id, message_id, chunk)
    )
    """,
    """
    CREATE TABLE deliveries (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        sent_at     TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
    """
    CREATE TABLE api_keys (
        scope       TEXT NOT NULL CHECK (scope IN ('user', 'chat')),
        scope_id    BIGINT NOT NULL,
        provider    TEXT NOT NULL,
        token       BYTEA NOT NULL,
        hint        TEXT NOT NULL,
        updated_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (scope, scope_id, provider)
    )
    """,
    """
    CREATE TABLE memory_evictions (
        chat_id     BIGINT NOT NULL,
        message_id  BIGINT NOT NULL,
        evicted_at  TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (chat_id, message_id)
    )
    """,
)

_V2 = (
    "ALTER TABLE messages ADD COLUMN imported BOOLEAN NOT NULL DEFAULT false",
    """
    CREATE TABLE cleanups (
        chat_id     BIGINT NOT NULL,
        cleaned_at  TIMESTAMPTZ NOT NULL,       -- ("at" is a reserved word in DuckDB)
        scope       TEXT NOT NULL,
        scope_id    BIGINT NOT NULL,
        tier        TEXT NOT NULL,
        limit_name  TEXT NOT NULL,
        limit_value BIGINT NOT NULL,
        messages    BIGINT NOT NULL,
        memories    BIGINT NOT NULL
    )
    """,
    "CREATE INDEX cleanups_by_chat ON cleanups (chat_id)",
)

_V3 = (
    "ALTER TABLE subscriptions ADD COLUMN renews BOOLEAN",  # a Telegram Stars subscription: renews (true) or cancelled (false)
    "ALTER TABLE subscriptions ADD COLUMN charge_id TEXT",  # its first payment's telegram_payment_charge_id
)

MIGRATIONS: list[tuple[str, ...]] = [
    _V1,  # the DuckDB store's schema version 4, in PostgreSQL's types, with indexes for its by-user reads
    _V2,  # version 5: messages.imported, the capacity cleanups' log
    _V3,  # version 6: subscriptions.renews, subscriptions.charge_id (Telegram Stars subscriptions)
]

SCHEMA_VERSION = len(MIGRATIONS)

# pg_advisory_xact_lock key: "kith" as an integer, so unrelated applications sharing the database
# do not collide with it by accident
_LOCK_KEY = int.from_bytes(b"kith-sch", "big") & 0x7FFF_FFFF_FFFF_FFFF


async def migrate(con: Any) -> int:
    """Bring the database of ``con`` (a psycopg ``AsyncConnection`` in autocommit mode) to
    ``SCHEMA_VERSION``; returns the version it is at. Each step runs in one transaction with the
    ``schema_version`` row that records it. raises MemoryStoreError when the database is newer than
    this code."""
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)")
        cur = await con.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise MemoryStoreError(
                f"the PostgreSQL dialogue store is at schema version {version}, newer than this Kith "
                f"({SCHEMA_VERSION}); upgrade Kith")
        for v in range(version, SCHEMA_VERSION):
            for stmt in MIGRATIONS[v]:
                await con.execute(stmt)
            await con.execute("INSERT INTO schema_version VALUES (%s, now())", [v + 1])
    return SCHEMA_VERSION
