"""Vector memory: the LanceDB table ``memories`` with hybrid (vector + full-text) recall per chat.

``VectorMemory`` is the one object the rest of Kith uses; it is made of three parts, each in its own
module: the table's lifecycle and shared state (``memory.vector_table``: open, indexes, switch,
optimize, the lancedb loop, hot chats), the writes (``memory.vector_writer``) and the searches
(``memory.hybrid_search``, on the stages of ``memory.retrieval``). The table's layout and its rows
are in ``memory.vector_rows``.

LanceDB is derived data (rebuildable from DuckDB): ``kith memory reindex`` rebuilds it.
"""
from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from .hot import HotChats
from .hybrid_search import HybridSearch
from .location import Location
from .retrieval import RetrievalSettings
from .types import MemoryHit
from .vector_rows import DEFAULT_EMBEDDING_MODEL, MemoryRow
from .vector_table import VectorTable
from .vector_writer import VectorWriter

__all__ = ["VectorMemory"]


class VectorMemory:
    """The ``memories`` LanceDB table; use as ``async with VectorMemory(path) as vm: ...``.

    path: the directory of the LanceDB database (``<data_dir>/memory``), created if missing.
    dim, embedding_model: the width (384 for all-MiniLM-L6-v2) and the name of the model whose
    vectors a table created now holds (recorded in its schema metadata). An existing table is opened
    as it is: ``dim`` and ``embedding_model`` then say what it holds (``matches`` compares), except
    an empty table of another model, which is made afresh for this one.
    vector_index_min_rows: ``optimize()`` builds the IVF_SQ vector index once the table has this many
    rows (below it, flat search with the chat pre-filter is fast enough).
    max_index_segments: ``optimize()`` folds new rows into the vector index as delta segments, each
    costing ~1 ms per search; past this many (or once the table doubled) it retrains the index
    (~4 s of CPU at 100k rows, about what embedding 40 messages costs).
    keep_versions_for: ``optimize()`` deletes table versions older than this.
    max_threads: concurrent LanceDB operations (worker threads).
    hot_rows: rows of recently recalled chats held in RAM for ``recall`` (``memory.hot``; ~2 KB
    each; 0 = off, every leg is read from LanceDB).
    table: None opens the table the ``CURRENT`` file names (``memories`` when there is none) and drops
    tables an interrupted reindex left behind; a name creates that table afresh (a reindex builds
    one beside the current table, then ``switch_to`` makes it current).
    language_aware: a table created now gets ``terms`` (language-aware full text); False creates
    the earlier format (English-stemmed ``content`` only) — for benchmarks that compare the two.
    An existing table is opened in the format it has.

    Every method may raise VectorStoreError (a MemoryStoreError); arguments that are wrong by
    construction (bad mode, wrong vector shape) raise ValueError.
    """

    def __init__(
        self,
        path: Path | str | Location,
        *,
        dim: int = 384,
        embedding_model: str = DEFAULT_EMBEDDING_MODEL,
        vector_index_min_rows: int = 4096,
        keep_versions_for: timedelta = timedelta(hours=1),
        max_index_segments: int = 3,
        max_threads: int = 4,
        hot_rows: int = 0,
        table: str | None = None,
        language_aware: bool = True,
    ) -> None:
        self.t = VectorTable(path, dim=dim, embedding_model=embedding_model, vector_index_min_rows=vector_index_min_rows,
                             keep_versions_for=keep_versions_for, max_index_segments=max_index_segments,
                             max_threads=max_threads, hot_rows=hot_rows, table=table, language_aware=language_aware)
        self.writer = VectorWriter(self.t)
        self.searcher = HybridSearch(self.t)
        self._owner: AsyncExitStack | None = None  # holds the open table while the memory is open

    async def __aenter__(self) -> VectorMemory:
        # the table (and its lancedb loop thread) is owned by this object until __aexit__; an open that
        # fails closes what it started (``VectorTable``) before its error propagates
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.t)
            self._owner = stack.pop_all()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            await owner.__aexit__(*exc)

    # ------------------------------------------------------------------ what the table is

    @property
    def location(self) -> Location:
        return self.t.location

    @property
    def path(self) -> Path | None:
        """The local directory of the database; None for an object store."""
        return self.t.path

    @property
    def table(self) -> str:
        """The name of the current table."""
        return self.t.name

    @property
    def dim(self) -> int:
        return self.t.dim

    @property
    def embedding_model(self) -> str:
        return self.t.embedding_model

    @property
    def multilingual(self) -> bool:
        """The table has ``terms`` (language-aware full text)."""
        return self.t.multilingual

    @property
    def hot(self) -> HotChats:
        return self.t.hot

    @property
    def vector_index_min_rows(self) -> int:
        return self.t.vector_index_min_rows

    @property
    def has_vector_index(self) -> bool:
        return self.t.has_vector_index

    @property
    def lance_table(self) -> Any:
        """The open ``lancedb.AsyncTable`` (for maintenance and measurements)."""
        return self.t.lance_table

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run the lancedb coroutine ``fn(*args)`` on the table's loop (``VectorTable.run``)."""
        return await self.t.run(fn, *args)

    # ------------------------------------------------------------------ lifecycle

    async def switch_to(self, table: str) -> None:
        """Make ``table`` (built beside the current one by a reindex) current (``VectorTable.switch_to``)."""
        await self.t.switch_to(table)

    async def optimize(self) -> None:
        """Compact and fold new rows into the indexes (``VectorTable.optimize``)."""
        await self.t.optimize()

    # ------------------------------------------------------------------ writes

    async def add(self, rows: Sequence[MemoryRow]) -> None:
        """Upsert ``rows`` (``VectorWriter.add``)."""
        await self.writer.add(rows)

    async def delete(self, chat_id: int, *, message_ids: Sequence[int] | None = None, user_id: int | None = None) -> int:
        """Delete rows of one chat (``VectorWriter.delete``); how many."""
        return await self.writer.delete(chat_id, message_ids=message_ids, user_id=user_id)

    async def move_chat(self, old: int, new: int, shift: int) -> int:
        """Re-key a basic group's rows to its supergroup (``VectorWriter.move_chat``)."""
        return await self.writer.move_chat(old, new, shift)

    # ------------------------------------------------------------------ reads

    async def count(self, chat_id: int | None = None) -> int:
        """Rows of one chat, or of the whole table."""
        return await self.t.count(chat_id)

    async def message_ids(self, chat_id: int) -> set[int]:
        """The message ids of every row of one chat (any kind)."""
        return await self.t.message_ids(chat_id)

    async def ids_by_chat(self) -> dict[int, set[int]]:
        """Every row's ``message_id``, per chat."""
        return await self.t.ids_by_chat()

    async def speakers(self, chat_id: int) -> frozenset[str]:
        """The sender names of one chat's rows."""
        return await self.t.speakers(chat_id)

    # ------------------------------------------------------------------ searches

    async def search(self, chat_id: int, query_text: str, query_vector: np.ndarray | None, k: int = 10, *, mode: str = "hybrid",
                     exclude_ids: Collection[int] = (), retrieval: RetrievalSettings | None = None) -> list[MemoryHit]:
        """The ``k`` most relevant rows of chat ``chat_id`` only (``HybridSearch.search``)."""
        return await self.searcher.search(chat_id, query_text, query_vector, k, mode=mode, exclude_ids=exclude_ids,
                                          retrieval=retrieval)

    async def recall(self, chat_id: int, query_text: str, query_vector: np.ndarray | Awaitable[np.ndarray | None] | None,
                     k: int = 10, *, settings: RetrievalSettings, exclude_ids: Collection[int] = ()) -> list[MemoryHit]:
        """The staged hybrid recall of ``memory.retrieval`` over one chat (``HybridSearch.recall``)."""
        return await self.searcher.recall(chat_id, query_text, query_vector, k, settings=settings, exclude_ids=exclude_ids)
