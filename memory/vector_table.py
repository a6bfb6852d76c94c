"""Vector memory's table: its lifecycle on LanceDB — open (or create, or upgrade), indexes, the switch
to a table a reindex built, optimize — the private loop lancedb's async API runs on, and the state the
writer (``memory.vector_writer``) and the search (``memory.hybrid_search``) share: the hot chats
(``memory.hot``) with their write epochs, and the sender names per chat.

LanceDB is derived data (rebuildable from DuckDB). Every LanceDB operation is a coroutine of lancedb's
async API run on a private loop thread, waited for from a worker thread (``anyio.to_thread``) behind
a capacity limiter, so nothing blocks the event loop; writes (add/delete/optimize) are serialised by
a lock. Searches never wait for writes.

Notes on lancedb 0.40 that shaped this module (measured here, 2 shared cores, 100k rows/100 chats):

* FTS and vector search also scan rows that are not in an index yet (flat, over the unindexed
  fragments), so appended rows are found at once; ``optimize()`` folds them into the indexes
  (``fast_search`` is never used). The unindexed tail costs ~1 ms per 1000 rows per search.
* Flat vector search with the BTree pre-filter costs one random read per row of the chat (~17 us
  each): ~18 ms for a chat of 1k rows spread over a 100k-row table. An IVF_SQ index (cosine,
  minimum 20 probes, unlimited maximum, refine_factor 2) with the same pre-filter: ~5-10 ms at
  recall@10 = 1.0 against exact search, so ``optimize()`` builds one from ``vector_index_min_rows``.
* Each ``optimize()`` adds a delta segment to the vector index (+~1 ms per search each); there is no
  merge option in the Python API, so the index is retrained past ``max_index_segments``.
* The sync API makes ~6 blocking round trips to lancedb's background loop per query (~3 ms per
  search); the async API makes one, and runs the two hybrid legs concurrently.
* A select list without ``_distance`` / ``_score`` logs a Lance deprecation WARN on every query.
* ``merge_insert`` on ``id`` (with a BTree index on ``id``) is the idempotent append: one transaction,
  ~11 ms per 256 rows at 100k rows (plain ``add`` ~4 ms; delete-then-add ~11-15 ms in two commits).
* ``DeleteResult`` of the async API carries ``num_deleted_rows`` (the stub says only ``version``).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pyarrow as pa

from .errors import DiskFull, MemoryStoreError, VectorStoreError, is_disk_full
from .hot import HotChats
from .lance_loop import LanceLoop
from .location import Location, as_location
from .vector_rows import (
    DEFAULT_EMBEDDING_MODEL,
    DOCUMENT_FIELDS,
    MODEL_KEY,
    TABLE,
    current_table,
    ids_per_chat,
    made_with,
    schema,
    write_current,
)

T = TypeVar("T")

__all__ = ["VectorTable"]

log = logging.getLogger(__name__)


class VectorTable:
    """The current ``memories`` table of a LanceDB database; use as ``async with``. The arguments are
    ``VectorMemory``'s (see there). Every method may raise VectorStoreError (a MemoryStoreError)."""

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
        self.location = as_location(path)
        self.path = self.location.path  # the local directory; None for an object store
        self._language_aware = language_aware
        self.name = table or current_table(self.location)
        self._fresh = table is not None  # a table named by the caller is built from scratch (reindex)
        self.dim = dim
        self.embedding_model = embedding_model
        self.vector_index_min_rows = vector_index_min_rows
        self.keep_versions_for = keep_versions_for
        self.max_index_segments = max_index_segments
        self.limiter = anyio.CapacityLimiter(max_threads)
        self.write_lock = anyio.Lock()
        self.lance: LanceLoop | None = None
        self._db: Any = None  # lancedb.AsyncConnection once open
        self._tbl: Any = None  # lancedb.AsyncTable once open
        self.has_vector_index = False
        self.multilingual = True  # the table has ``terms`` (language-aware full text); set at open
        self._vector_index_rows = 0  # table size when the vector index was (re)built or first seen
        # sender names per chat, for recall (``speakers``): loaded once per chat, plus every name added since
        self._speakers_loaded: dict[int, frozenset[str]] = {}
        self.speakers_added: dict[int, set[str]] = {}
        # hot chats (memory.hot), touched only on the lance loop; a chat's epoch is bumped before and
        # after every write to it, so a load that overlapped a write is seen and discarded
        self.hot = HotChats(hot_rows)
        self.hot_epoch: dict[int, int] = {}
        self.too_big: dict[int, int] = {}  # chat -> rows when it was found too large to hold

    async def __aenter__(self) -> VectorTable:
        self.lance = LanceLoop()
        try:
            await self.run(self._open)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Wait (up to 30 s) for a running write or optimize, then close the table and its loop."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(30):
                async with self.write_lock:
                    pass
        self._tbl = None
        self._db = None
        lance, self.lance = self.lance, None
        if lance is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lance.close)

    async def _open(self) -> None:
        import lancedb  # deferred: lancedb (~1.3 s); `kith memory stats` imports this module without it

        self.location.prepare()
        self._db = await lancedb.connect_async(self.location.uri, storage_options=self.location.storage_options or None)
        tables = (await self._db.list_tables()).tables
        if self._fresh and self.name in tables:
            await self._db.drop_table(self.name)
        elif not self._fresh:
            for stale in tables:  # left by a reindex that was interrupted before its switch
                if stale != self.name and (stale == TABLE or stale.startswith(f"{TABLE}_")):
                    log.info("vector memory: dropping %s, left by an interrupted reindex", stale)
                    await self._db.drop_table(stale)
        wanted = (self.embedding_model, self.dim)
        tbl = None
        if not self._fresh and self.name in tables:
            tbl = await self._db.open_table(self.name)
            if made_with(await tbl.schema()) != wanted and await tbl.count_rows() == 0:
                log.info("vector memory: the empty table %s is made afresh for %s (%d dimensions)", self.name, *wanted)
                await self._db.drop_table(self.name)
                tbl = None
        if tbl is None:
            made = schema(self.dim, terms=self._language_aware).with_metadata({MODEL_KEY: self.embedding_model.encode()})
            tbl = await self._db.create_table(self.name, schema=made, exist_ok=True)
        have = await tbl.schema()
        self.embedding_model, self.dim = made_with(have)
        missing = [pa.field(name, typ) for name, typ in DOCUMENT_FIELDS if name not in have.names]
        if missing and "vector" in have.names:  # written before documents: add the columns (null)
            await tbl.add_columns(missing)
            have = await tbl.schema()
        self.multilingual = "terms" in have.names
        want = schema(self.dim, terms=self.multilingual)  # made before language-aware search: its English-only index stays
        if not self.multilingual and self._language_aware:
            log.warning("vector memory %s predates language-aware full-text search (Russian, Ukrainian, German, "
                        "Spanish, French): `kith memory reindex` rebuilds it with it", self.location)
        if have.field("vector").type != want.field("vector").type or set(have.names) != set(want.names):
            raise VectorStoreError(
                f"{self.location}/{self.name} has schema {have} but {want} is expected; rebuild it (kith memory reindex)"
            )
        self._tbl = tbl
        await self._ensure_indexes()

    async def _ensure_indexes(self) -> None:
        from lancedb.index import FTS, BTree  # deferred: lancedb (~1.3 s)

        tbl = self.lance_table
        names = {ix.name: ix for ix in await tbl.list_indices()}
        if "chat_id_idx" not in names:
            await tbl.create_index("chat_id", config=BTree(), replace=False)
        if "id_idx" not in names:
            await tbl.create_index("id", config=BTree(), replace=False)
        if self.multilingual and "terms_idx" not in names:
            # the words are already reduced (providers.language): split on spaces, drop English stop words
            # (Snowball's list, after stemming, as the English index did), fold accents; no stemming
            await tbl.create_index("terms", config=FTS(base_tokenizer="whitespace", stem=False, remove_stop_words=True,
                                                       language="English", lower_case=True, ascii_folding=True),
                                   replace=False)
        elif not self.multilingual and "content_idx" not in names:
            await tbl.create_index("content", config=FTS(), replace=False)
        vix = names.get("vector_idx")
        self.has_vector_index = vix is not None
        if vix is not None:
            self._vector_index_rows = int(getattr(vix, "num_indexed_rows", 0) or 0)

    @property
    def is_open(self) -> bool:
        return self.lance is not None and self._tbl is not None

    @property
    def lance_table(self) -> Any:
        """The open ``lancedb.AsyncTable``. raises VectorStoreError when the table is not open."""
        if self._tbl is None:
            raise VectorStoreError("VectorMemory is not open (use `async with VectorMemory(path) as vm`)")
        return self._tbl

    async def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run the lancedb coroutine ``fn(*args)`` on the lance loop, waiting in a worker thread."""
        lance = self.lance
        if lance is None:
            raise VectorStoreError("VectorMemory is not open (use `async with VectorMemory(path) as vm`)")
        try:
            return await anyio.to_thread.run_sync(lambda: lance.run(fn(*args)), limiter=self.limiter)
        except MemoryStoreError:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise self.disk_full() from exc
            raise VectorStoreError(f"lancedb: {type(exc).__name__}: {exc}") from exc

    def disk_full(self) -> DiskFull:
        free = self.location.free_bytes() or 0
        # a compaction rewrites fragments: room for a good part of the table, at least 32 MB
        return DiskFull(self.location, free, max(32 * 2**20, self.location.size_bytes() // 2))

    async def switch_to(self, table: str) -> None:
        """Make ``table`` (built beside the current one, e.g. by ``kith memory reindex``) the current
        table: the ``CURRENT`` file is replaced atomically, then the old table is dropped. An
        interruption before the replace keeps the old table; after it, the new one."""
        async with self.write_lock:
            await anyio.to_thread.run_sync(write_current, self.location, table)
            old, self.name = self.name, table
            await self.run(self._reopen, old)
        self.hot = HotChats(self.hot.max_rows)
        self.hot_epoch.clear()
        self.too_big.clear()
        self._speakers_loaded.clear()
        self.speakers_added.clear()

    async def _reopen(self, old: str) -> None:
        self._tbl = await self._db.open_table(self.name)
        have = await self._tbl.schema()
        self.multilingual = "terms" in have.names  # a reindex upgrades an old table
        self.embedding_model, self.dim = made_with(have)  # ... and may change the model
        await self._ensure_indexes()
        if old != self.name:
            await self._db.drop_table(old)

    def bump(self, chats: Iterable[int]) -> None:
        for c in chats:
            self.hot_epoch[c] = self.hot_epoch.get(c, 0) + 1

    async def optimize(self) -> None:
        """Compact fragments, fold new rows into every index, drop old versions (``tbl.optimize()``).

        Also builds the vector index once the table has ``vector_index_min_rows`` rows, and retrains it
        when it has more than ``max_index_segments`` segments or the table doubled since. Takes
        ~0.5-1 s (plus ~4 s for an index build) at 100k rows; writes wait meanwhile, searches do not.
        """
        async with self.write_lock:
            await self.run(self._optimize)

    async def _optimize(self) -> None:
        from lancedb.index import IvfSq  # deferred: lancedb (~1.3 s)

        tbl = self.lance_table
        await tbl.optimize(cleanup_older_than=self.keep_versions_for)
        rows = await tbl.count_rows()
        if rows < self.vector_index_min_rows:
            return
        vix = next((ix for ix in await tbl.list_indices() if ix.name == "vector_idx"), None)
        segments = int(getattr(vix, "num_segments", 1) or 1) if vix is not None else 0
        if vix is None or segments > self.max_index_segments or rows >= 2 * max(self._vector_index_rows, 1):
            # each optimize() adds a delta segment to the IVF index (~1 ms more per search each) and
            # the partitions were trained on the rows of the time: retrain from scratch
            log.info("building the vector index on %d rows (%d segments before)", rows, segments)
            await tbl.create_index("vector", config=IvfSq(distance_type="cosine"), replace=True, name="vector_idx")
            self.has_vector_index = True
            self._vector_index_rows = rows

    async def count(self, chat_id: int | None = None) -> int:
        """Number of rows, of one chat or of the whole table."""
        where = None if chat_id is None else f"chat_id = {int(chat_id)}"
        return await self.run(self.lance_table.count_rows, where)

    async def message_ids(self, chat_id: int) -> set[int]:
        """The message ids of every row of one chat (any kind)."""
        return await self.run(self._message_ids, int(chat_id))

    async def _message_ids(self, chat_id: int) -> set[int]:
        tbl = await self.lance_table.query().where(f"chat_id = {chat_id}").select(["message_id"]).to_arrow()
        return set(tbl.column("message_id").to_pylist())

    async def ids_by_chat(self) -> dict[int, set[int]]:
        """Every row's ``message_id`` (messages and document chunks), per chat: one scan of two
        int64 columns (~10 ms per 100k rows)."""
        return await self.run(self._ids_by_chat)

    async def _ids_by_chat(self) -> dict[int, set[int]]:
        return ids_per_chat(await self.lance_table.query().select(["chat_id", "message_id"]).to_arrow())

    async def speakers(self, chat_id: int) -> frozenset[str]:
        """The sender names (``user_name``) of chat ``chat_id``'s rows. Read from the table once per
        chat, then kept up to date by ``add`` (a delete makes the next call read again)."""
        chat_id = int(chat_id)
        loaded = self._speakers_loaded.get(chat_id)
        if loaded is None:
            loaded = await self.run(self._distinct_speakers, chat_id)
            self._speakers_loaded[chat_id] = loaded
        added = self.speakers_added.get(chat_id)
        return loaded | added if added else loaded

    async def _distinct_speakers(self, chat_id: int) -> frozenset[str]:
        import pyarrow.compute as pc  # deferred: pyarrow.compute (~40 ms); `kith memory stats` must not

        tbl = await self.lance_table.query().where(f"chat_id = {chat_id}").select(["user_name"]).to_arrow()
        return frozenset(n for n in pc.unique(tbl.column("user_name")).to_pylist() if n)

    def forget_speakers(self, chat_id: int) -> None:
        self._speakers_loaded.pop(chat_id, None)
        self.speakers_added.pop(chat_id, None)
