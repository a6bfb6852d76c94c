"""What the small per-domain stores beside the dialogue store share (reminders, the credit ledger,
memory entries): the backend they run on (``SqlBackend``: ``DuckDBStore`` or ``PostgresStore``), one
transaction of statements with ``?`` placeholders (``transaction``), and a base (``SqlDomainStore``)
that names the domain in errors and creates its tables once at ``open``."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, Self

from .errors import MemoryStoreError

__all__ = ["SqlBackend", "SqlDomainStore", "transaction"]


class SqlBackend(Protocol):
    """What a per-domain store needs of the dialogue store (``DuckDBStore``, ``PostgresStore``)."""

    @property
    def local_dir(self) -> Path: ...

    async def sql_transaction(self, statements: Sequence[tuple[str, Sequence[Any]]], *,
                              lock: str | None = None) -> list[list[tuple]]: ...


async def transaction(backend: SqlBackend, domain: str, statements: Sequence[tuple[str, Sequence[Any]]], *,
                      lock: str | None = None) -> list[list[tuple]]:
    """Run ``statements`` (one SQL text each, ``?`` placeholders) in one transaction of ``backend``;
    the rows each returned. ``lock``: a name held for the transaction across processes (PostgreSQL's
    advisory lock). A driver's own error (duckdb.Error, psycopg.Error) becomes a MemoryStoreError
    naming ``domain`` ("reminders", "credits")."""
    try:
        return await backend.sql_transaction(statements, lock=lock) if lock is not None else await backend.sql_transaction(statements)
    except MemoryStoreError:
        raise
    except Exception as exc:  # the driver's own errors (duckdb.Error, psycopg.Error)
        raise MemoryStoreError(f"{domain}: the database failed: {exc}") from exc


class SqlDomainStore:
    """A per-domain store over ``backend``: ``DOMAIN`` names it in errors ("reminders", "credits"),
    ``DDL`` creates its tables (``IF NOT EXISTS``), run by the first ``open``."""

    DOMAIN = "store"
    DDL: tuple[str, ...] = ()

    def __init__(self, backend: SqlBackend) -> None:
        self.backend = backend
        self._opened = False

    async def _tx(self, *statements: tuple[str, Sequence[Any]], lock: str | None = None) -> list[list[tuple]]:
        return await transaction(self.backend, self.DOMAIN, statements, lock=lock)

    async def open(self) -> Self:
        """Create the tables when missing (once per object); returns self."""
        if not self._opened:
            await self._tx(*((sql, ()) for sql in self.DDL))
            self._opened = True
        return self
