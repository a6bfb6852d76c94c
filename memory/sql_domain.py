"""What the per-domain stores share (API keys, subscriptions and payments, usage, documents,
reminders, the credit ledger, memory entries …): the backend they run on (``SqlBackend``:
``DuckDBStore`` or ``PostgresStore``), its ``Dialect`` (the two spellings the engines do not share:
a time parameter and a time column as microseconds), one statement or one transaction of statements
with ``?`` placeholders, and a base (``SqlDomainStore``) that names the domain in errors and creates
its own tables once at ``open``.

Each domain's SQL is written once: the same text runs on DuckDB and PostgreSQL, with a time written
``{ts}`` (a ``?`` parameter of microseconds since the epoch, UTC) and read through ``dialect.us(col)``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Self, overload

from .errors import MemoryStoreError
from .schema import from_us, to_us

__all__ = ["DUCKDB", "POSTGRESQL", "Dialect", "SqlBackend", "SqlDomainStore", "no_nul", "transaction"]


@dataclass(frozen=True, slots=True)
class Dialect:
    """The spellings one engine needs where the SQL standard leaves the engines apart.

    ``ts``: a ``?`` parameter of microseconds since the epoch (BIGINT, UTC) as a TIMESTAMPTZ
    (``ts_of(expr)``: the same for another BIGINT expression, e.g. a column of an Arrow batch);
    ``us(expr)``: a TIMESTAMPTZ expression as microseconds since the epoch (BIGINT). Times cross the
    driver as integers in both engines, so they round-trip with microsecond precision. ``json``: the
    type of a JSON column, for ``CAST(? AS <json>)`` of a parameter of JSON text (DuckDB's ``JSON``,
    PostgreSQL's ``JSONB``, which takes no text parameter uncast); a read returns the text (DuckDB) or
    the decoded object (psycopg)."""

    name: str
    ts_template: str
    us_template: str
    json: str = "JSON"

    @property
    def ts(self) -> str:
        """A ``?`` parameter (µs since the epoch) as a TIMESTAMPTZ."""
        return self.ts_template.format("?")

    def ts_of(self, expr: str) -> str:
        """``expr`` (BIGINT microseconds since the epoch) as a TIMESTAMPTZ."""
        return self.ts_template.format(expr)

    def us(self, expr: str) -> str:
        """``expr`` (a TIMESTAMPTZ) as BIGINT microseconds since the epoch."""
        return self.us_template.format(expr)


DUCKDB = Dialect("duckdb", "make_timestamp({}) AT TIME ZONE 'UTC'", "epoch_us({})")
POSTGRESQL = Dialect("postgresql", "(TIMESTAMPTZ 'epoch' + {} * INTERVAL '1 microsecond')",
                     "(extract(epoch FROM {}) * 1000000)::bigint", json="JSONB")


class SqlBackend(Protocol):
    """What a per-domain store needs of the dialogue store (``DuckDBStore``, ``PostgresStore``)."""

    @property
    def local_dir(self) -> Path: ...

    @property
    def dialect(self) -> Dialect: ...

    async def sync(self) -> None:
        """Read-your-writes: commit the rows the write-behind queue holds, if any (usage, recalls)."""

    async def sql_query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders), committed on return; its rows ([] for none)."""

    async def sql_transaction(self, statements: Sequence[tuple[str, Sequence[Any]]], *,
                              lock: str | None = None) -> list[list[tuple[Any, ...]]]: ...


async def transaction(backend: SqlBackend, domain: str, statements: Sequence[tuple[str, Sequence[Any]]], *,
                      lock: str | None = None) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` (one SQL text each, ``?`` placeholders) in one transaction of ``backend``;
    the rows each returned. ``lock``: a name held for the transaction across processes (PostgreSQL's
    advisory lock). A driver's own error (duckdb.Error, psycopg.Error) becomes a MemoryStoreError
    naming ``domain`` ("reminders", "credits")."""
    with _driver_errors(domain):
        return await backend.sql_transaction(statements, lock=lock) if lock is not None else await backend.sql_transaction(statements)


@contextmanager
def _driver_errors(domain: str) -> Iterator[None]:
    """A driver's own error (duckdb.Error, psycopg.Error) inside as a MemoryStoreError naming
    ``domain``; a MemoryStoreError (DiskFull, a failing server) passes as it is."""
    try:
        yield
    except MemoryStoreError:
        raise
    except Exception as exc:
        raise MemoryStoreError(f"{domain}: the database failed: {exc}") from exc


class SqlDomainStore:
    """A per-domain store over ``backend``: ``DOMAIN`` names it in errors ("reminders", "credits"),
    ``DDL`` creates its tables (``IF NOT EXISTS``), run by the first ``open`` (a domain whose tables
    the dialogue store's schema versions create has none, and needs no ``open``)."""

    DOMAIN = "store"
    DDL: tuple[str, ...] = ()

    def __init__(self, backend: SqlBackend) -> None:
        self.backend = backend
        self._opened = False

    def _sql(self, text: str) -> str:
        """``text`` with ``{ts}`` (a time parameter: microseconds since the epoch) spelled for the
        backend's dialect; a time column is read through ``_us``."""
        return text.replace("{ts}", self.backend.dialect.ts)

    def _us(self, expr: str) -> str:
        """``expr`` (a TIMESTAMPTZ) read as BIGINT microseconds since the epoch."""
        return self.backend.dialect.us(expr)

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``{ts}`` spelled for the dialect), committed on return; its rows. A
        driver's error becomes a MemoryStoreError naming the domain."""
        with _driver_errors(self.DOMAIN):
            return await self.backend.sql_query(self._sql(sql), params)

    async def _tx(self, *statements: tuple[str, Sequence[Any]], lock: str | None = None) -> list[list[tuple[Any, ...]]]:
        return await transaction(self.backend, self.DOMAIN, [(self._sql(q), p) for q, p in statements], lock=lock)

    async def open(self) -> Self:
        """Create the tables when missing (once per object); returns self."""
        if not self._opened:
            await self._tx(*((sql, ()) for sql in self.DDL))
            self._opened = True
        return self


def no_nul(text: str | None) -> str | None:
    """``text`` with U+0000 as U+FFFD: PostgreSQL's ``text`` and ``jsonb`` cannot hold U+0000 (which
    Telegram never sends); the store contract allows the replacement on every engine."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


@overload
def us(t: datetime) -> int: ...


@overload
def us(t: None) -> None: ...


def us(t: datetime | None) -> int | None:
    """A tz-aware time (naive: UTC) as microseconds since the epoch, for a ``{ts}`` parameter; None stays None."""
    return None if t is None else to_us(t)


@overload
def ts(v: int) -> datetime: ...


@overload
def ts(v: None) -> None: ...


def ts(v: int | None) -> datetime | None:
    """Microseconds since the epoch (a column read through ``_us``) as a tz-aware UTC time; None stays None."""
    return None if v is None else from_us(int(v))
