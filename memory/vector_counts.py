"""A read-only view of vector memory's row counts and ids, without lancedb: what ``kith memory
stats`` needs when no bot is running.

Why not ``VectorMemory``: importing lancedb takes 1.1–1.5 s here (its REST namespace client builds
hundreds of pydantic models at import), more than the whole 1 s that ``memory stats`` may take. The
table is a Lance dataset (``<memory dir>/<table>.lance``, the layout of a LanceDB directory
connection, which ``lancedb``'s own ``Table.to_lance()`` opens the same way), and pylance — the
Lance format's own Python package, lancedb's ``pylance`` extra — opens it in ~0.2 s. This view opens
the table the ``CURRENT`` file names at open time, never writes, and creates nothing: a data dir with
no memory yet counts zero rows.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .errors import VectorStoreError
from .location import Location, as_location
from .vector_rows import current_table, ids_per_chat

T = TypeVar("T")

__all__ = ["VectorCounts"]


class VectorCounts:
    """``count`` and ``ids_by_chat`` of ``VectorMemory``, read from the table as it was at open.

    Usage: ``async with VectorCounts(path) as counts: n = await counts.count(chat_id)``. Every
    method may raise VectorStoreError (an unreadable table); blocking reads run in worker threads.
    """

    def __init__(self, path: Path | str | Location) -> None:
        self.location = as_location(path)
        self.table = current_table(self.location)
        self._ds: Any = None  # lance.LanceDataset, or None when the table does not exist yet

    async def __aenter__(self) -> VectorCounts:
        self._ds = await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._ds = None

    def _open(self) -> Any:
        name = f"{self.table}.lance"
        if not self.location.has_dir(name):
            return None
        import lance  # deferred: lance (~100 ms), only when counting rows

        uri = self.location.child(name)
        try:
            return lance.dataset(uri, storage_options=self.location.storage_options or None)
        except Exception as exc:
            raise VectorStoreError(f"lance: cannot read {uri}: {type(exc).__name__}: {exc}") from exc

    async def count(self, chat_id: int | None = None) -> int:
        """Number of rows, of one chat or of the whole table (0 when there is no table)."""
        where = None if chat_id is None else f"chat_id = {int(chat_id)}"
        return await self._read(lambda ds: int(ds.count_rows(where)), 0)

    async def ids_by_chat(self) -> dict[int, set[int]]:
        """Every row's ``message_id`` (messages and document chunks), per chat."""
        return await self._read(lambda ds: ids_per_chat(ds.to_table(columns=["chat_id", "message_id"])), {})

    async def _read(self, fn: Callable[[Any], T], empty: T) -> T:
        ds = self._ds
        if ds is None:
            return empty
        try:
            return await anyio.to_thread.run_sync(fn, ds)
        except Exception as exc:
            raise VectorStoreError(f"lance: reading {self.location.child(self.table)}: {type(exc).__name__}: {exc}") from exc
