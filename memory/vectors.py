"""Vector memory: the LanceDB table ``memories`` with hybrid (vector + full-text) recall per chat.

One table at ``<data_dir>/memory/`` (``memories``, or the table the ``CURRENT`` file there names after
a ``kith memory reindex`` built a new one beside it), one row per remembered item::

    id          string     "{chat_id}:{kind}:{message_id}"  (the upsert key)
    chat_id     int64      BTree index; every search is pre-filtered to exactly one chat
    message_id  int64
    user_id     int64
    user_name   string
    kind        string     "message" (later "document")
    text        string     the original text
    content     string     "{user_name} {d Month yyyy}: {text}" — the text the full-text search covers
                           (sender and day are searchable: "what did Caroline say in May 2023"); its
                           words, reduced per language, are ``terms``, which the FTS index reads
                           Rows written before this format hold "{user_name}: {text}": they are
                           still found; ``kith memory reindex`` rewrites them (the schema is unchanged)
    terms       string     ``content``'s words as the full-text index reads them: lower-cased and
                           stemmed in the text's language (``memory.language``: Russian, Ukrainian,
                           English, German, Spanish, French, Arabic; Chinese and Japanese cut into
                           characters and bigrams), space-separated. Tables made before it existed
                           search ``content`` as before (English stemming only) until
                           ``kith memory reindex`` rebuilds them with it (said once at open); rows
                           written before a change of the reduction keep their terms until then
    date        timestamp[us, UTC]
    vector      fixed_size_list<float32>[384]   L2-normalised, cosine distance
    source      string     documents: the file name (null for messages)
    page        int32      documents: the 1-based PDF page the chunk starts on
    parent      int64      documents: the id of the file message; deleting it deletes the chunks

A document chunk's ``message_id`` is its own id (``memory.types.chunk_memory_id``: far above any
message id, consecutive within a document) and its ``content`` is prefixed with the file name and
page. Tables written before the document columns existed get them (all null) when opened.

Recall (``search(..., retrieval=...)`` / ``recall``) runs the stages of ``memory.retrieval`` on top
of the two legs: see there. For a chat recalled recently (a *hot* chat, ``memory.hot``; opt-in with
``hot_rows``) only the full-text leg reads LanceDB: the vector leg, the neighbouring turns and the
vectors of the full-text hits come from RAM.

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

import asyncio
import functools
import inspect
import logging
import math
import re
import threading
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import pyarrow as pa

from .errors import DiskFull, MemoryStoreError, is_disk_full
from .location import Location, as_location
from .hot import COLUMNS as _HOT_COLUMNS
from .hot import ChatRows, HotChats
from .language import detect, index_terms, query_words, would_load
from .language import query_terms as language_query_terms
from .types import MemoryHit

if TYPE_CHECKING:
    from .retrieval import RetrievalSettings

log = logging.getLogger(__name__)

TABLE = "memories"
KIND_MESSAGE = "message"
KIND_DOCUMENT = "document"

MODES = ("hybrid", "vector", "fts")
RRF_K = 60  # reciprocal-rank-fusion constant: score = sum over legs of 1 / (RRF_K + rank)
MAX_QUERY_CHARS = 4000  # full-text queries read at most this much of the user's text
MAX_QUERY_TERMS = 64  # ... and at most this many distinct terms
_TERM_RE = re.compile(r"\w+", re.UNICODE)
_ADD_CHUNK = 8192  # rows per merge_insert transaction (bounds memory on a reindex)

_RESULT_COLUMNS = ["chat_id", "message_id", "user_id", "user_name", "kind", "text", "date", "source", "page", "parent"]
_DOCUMENT_FIELDS = (("source", pa.string()), ("page", pa.int32()), ("parent", pa.int64()))


class VectorStoreError(MemoryStoreError):
    """LanceDB failed (I/O, corrupt table, schema mismatch). The table can be rebuilt from DuckDB."""


class EmbeddingModelChanged(VectorStoreError):
    """The table holds another model's vectors than the embedding model in use: they cannot be
    compared. ``kith memory reindex`` re-embeds every stored message with the model in use."""

    def __init__(self, path: object, held: tuple[str, int], wanted: tuple[str, int]) -> None:
        self.held, self.wanted = held, wanted
        super().__init__(
            f"vector memory {path} holds {held[0]} embeddings ({held[1]} dimensions) but the embedding model is "
            f"{wanted[0]} ({wanted[1]} dimensions; memory.embedding_model): run `kith memory reindex` to re-embed "
            "every stored message with it (the dialogue store is kept), or set memory.embedding_model back")


DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # what a table without the model in its metadata was made with
_MODEL_KEY = b"kith.embedding_model"  # the table schema's metadata: the model that made its vectors


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """One row to remember. ``vector``: float32[dim], L2-normalised (from ``Embedder.embed``).

    ``date`` is timezone-aware (converted to UTC; a naive datetime is taken as UTC).
    ``(chat_id, kind, message_id)`` is the key: adding a row with an existing key replaces it.
    """

    chat_id: int
    message_id: int
    user_id: int
    user_name: str
    text: str
    date: datetime
    vector: np.ndarray
    kind: str = KIND_MESSAGE
    source: str | None = None  # documents: file name
    page: int | None = None  # documents: 1-based PDF page
    parent: int | None = None  # documents: the file message's id

    @property
    def id(self) -> str:
        return row_id(self.chat_id, self.kind, self.message_id)


def row_id(chat_id: int, kind: str, message_id: int) -> str:
    """The table's key: ``"{chat_id}:{kind}:{message_id}"``."""
    return f"{int(chat_id)}:{kind}:{int(message_id)}"


_CURRENT = "CURRENT"  # names the current table (written by ``switch_to``); absent: TABLE


def current_table(where: Location | Path | str) -> str:
    """The name of the current memories table of the LanceDB database at ``where`` (a directory or
    an object-store URI). Blocking."""
    name = (as_location(where).read_text(_CURRENT) or "").strip()
    return name or TABLE


def _made_with(have: pa.Schema) -> tuple[str, int]:
    """(model name, vector width) of a table's schema; a table made before models were recorded
    holds all-MiniLM-L6-v2's vectors."""
    model = (have.metadata or {}).get(_MODEL_KEY)
    return (model.decode() if model else DEFAULT_EMBEDDING_MODEL), int(have.field("vector").type.list_size)


def ids_per_chat(tbl: pa.Table) -> dict[int, set[int]]:
    """``{chat_id: {message_id, …}}`` of a table with int64 columns ``chat_id`` and ``message_id``."""
    out: dict[int, set[int]] = {}
    for chat_id, mid in zip(tbl.column("chat_id").to_pylist(), tbl.column("message_id").to_pylist(), strict=True):
        out.setdefault(chat_id, set()).add(mid)
    return out


def _write_current(where: Location | Path | str, table: str) -> None:
    as_location(where).write_text(_CURRENT, table + "\n")


def schema(dim: int = 384, *, terms: bool = True) -> pa.Schema:
    """The Arrow schema of the ``memories`` table; ``terms=False``: the format before language-aware
    full text (no ``terms`` column)."""
    full = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("chat_id", pa.int64(), nullable=False),
            pa.field("message_id", pa.int64(), nullable=False),
            pa.field("user_id", pa.int64()),
            pa.field("user_name", pa.string()),
            pa.field("kind", pa.string()),
            pa.field("text", pa.string()),
            pa.field("content", pa.string()),
            pa.field("terms", pa.string()),
            pa.field("date", pa.timestamp("us", tz="UTC")),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            *(pa.field(name, typ) for name, typ in _DOCUMENT_FIELDS),
        ]
    )
    return full if terms else pa.schema([f for f in full if f.name != "terms"])


def fts_terms(text: str) -> list[str]:
    """Reduce any user text to at most ``MAX_QUERY_TERMS`` distinct lower-cased word terms.

    Punctuation, quotes, operators and emoji are dropped (``\\w+`` runs are kept, in any script), so
    the result can never be a query-syntax error. Returns ``[]`` when nothing searchable is left.
    """
    seen: dict[str, None] = {}
    for m in _TERM_RE.finditer(text[:MAX_QUERY_CHARS] if text else ""):
        term = m.group(0).lower().strip("_")
        if term and term not in seen:
            seen[term] = None
            if len(seen) >= MAX_QUERY_TERMS:
                break
    return list(seen)


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def content_text(user_name: str, text: str, date: datetime | None, source: str | None = None, page: int | None = None) -> str:
    """What the full-text index reads for a row: ``"Caroline 8 May 2023: text"`` (sender, UTC day,
    text). The sender and the date make "what did X say about Y" and "in May" searchable; the date
    also evens out BM25's length normalisation, which otherwise favours one-word messages. A
    document chunk also names its file and page: ``"Anna 8 May 2023 report.pdf p. 3: text"``."""
    where = f" {source}" + (f" p. {page}" if page else "") if source else ""
    if date is None:
        return f"{user_name or ''}{where}: {text}"
    d = _utc(date)
    return f"{user_name or ''} {d.day} {_MONTHS[d.month - 1]} {d.year}{where}: {text}"


def _utc(d: datetime) -> datetime:
    return d.replace(tzinfo=timezone.utc) if d.tzinfo is None else d.astimezone(timezone.utc)


def _chat_filter(chat_id: int, exclude_ids: Collection[int] = ()) -> str:
    where = f"chat_id = {int(chat_id)}"
    if exclude_ids:
        where += " AND message_id NOT IN (" + ", ".join(str(int(i)) for i in sorted(set(exclude_ids))) + ")"
    return where


class _LanceLoop:
    """A private asyncio loop in a daemon thread that runs lancedb's async API.

    lancedb's sync API is a wrapper that makes ~6 blocking round trips to its own background loop per
    query (~3 ms each search on this machine); driving the async API directly makes one round trip per
    operation and lets the two legs of a hybrid search run concurrently inside Lance.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lancedb-loop", daemon=True)
        self.thread.start()

    def run(self, coro):
        """Run ``coro`` on the loop and wait for it (blocking: call from a worker thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        """Cancel whatever still runs on the loop (its waiters get an error), stop it, join the thread."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=30)
        except Exception:  # noqa: BLE001 - best effort on shutdown
            log.warning("lancedb loop did not shut down cleanly", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


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
        self.location = as_location(path)
        self.path = self.location.path  # the local directory; None for an object store
        self._language_aware = language_aware
        self.table = table or current_table(self.location)
        self._fresh = table is not None  # a table named by the caller is built from scratch (reindex)
        self.dim = dim
        self.embedding_model = embedding_model
        self.vector_index_min_rows = vector_index_min_rows
        self.keep_versions_for = keep_versions_for
        self.max_index_segments = max_index_segments
        self._limiter = anyio.CapacityLimiter(max_threads)
        self._write_lock = anyio.Lock()
        self._lance: _LanceLoop | None = None
        self._db: Any = None  # lancedb.AsyncConnection once open
        self._tbl: Any = None  # lancedb.AsyncTable once open
        self._has_vector_index = False
        self.multilingual = True  # the table has ``terms`` (language-aware full text); set at open
        self._vector_index_rows = 0  # table size when the vector index was (re)built or first seen
        # sender names per chat, for recall (``speakers``): loaded once per chat, plus every name added since
        self._speakers_loaded: dict[int, frozenset[str]] = {}
        self._speakers_added: dict[int, set[str]] = {}
        # hot chats (memory.hot), touched only on the lance loop; a chat's epoch is bumped before and
        # after every write to it, so a load that overlapped a write is seen and discarded
        self.hot = HotChats(hot_rows)
        self._hot_epoch: dict[int, int] = {}
        self._too_big: dict[int, int] = {}  # chat -> rows when it was found too large to hold

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "VectorMemory":
        self._lance = _LanceLoop()
        try:
            await self._run(self._open)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        """Wait (up to 30 s) for a running write or optimize, then close the table and its loop."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(30):
                async with self._write_lock:
                    pass
        self._tbl = None
        self._db = None
        lance, self._lance = self._lance, None
        if lance is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lance.close)

    async def _open(self) -> None:
        import lancedb

        self.location.prepare()
        self._db = await lancedb.connect_async(self.location.uri, storage_options=self.location.storage_options or None)
        tables = (await self._db.list_tables()).tables
        if self._fresh and self.table in tables:
            await self._db.drop_table(self.table)
        elif not self._fresh:
            for stale in tables:  # left by a reindex that was interrupted before its switch
                if stale != self.table and (stale == TABLE or stale.startswith(f"{TABLE}_")):
                    log.info("vector memory: dropping %s, left by an interrupted reindex", stale)
                    await self._db.drop_table(stale)
        wanted = (self.embedding_model, self.dim)
        tbl = None
        if not self._fresh and self.table in tables:
            tbl = await self._db.open_table(self.table)
            if _made_with(await tbl.schema()) != wanted and await tbl.count_rows() == 0:
                log.info("vector memory: the empty table %s is made afresh for %s (%d dimensions)", self.table, *wanted)
                await self._db.drop_table(self.table)
                tbl = None
        if tbl is None:
            made = schema(self.dim, terms=self._language_aware).with_metadata({_MODEL_KEY: self.embedding_model.encode()})
            tbl = await self._db.create_table(self.table, schema=made, exist_ok=True)
        have = await tbl.schema()
        self.embedding_model, self.dim = _made_with(have)
        missing = [pa.field(name, typ) for name, typ in _DOCUMENT_FIELDS if name not in have.names]
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
                f"{self.location}/{self.table} has schema {have} but {want} is expected; rebuild it (kith memory reindex)"
            )
        self._tbl = tbl
        await self._ensure_indexes()

    async def _ensure_indexes(self) -> None:
        from lancedb.index import FTS, BTree

        tbl = self._table
        names = {ix.name: ix for ix in await tbl.list_indices()}
        if "chat_id_idx" not in names:
            await tbl.create_index("chat_id", config=BTree(), replace=False)
        if "id_idx" not in names:
            await tbl.create_index("id", config=BTree(), replace=False)
        if self.multilingual and "terms_idx" not in names:
            # the words are already reduced (memory.language): split on spaces, drop English stop words
            # (Snowball's list, after stemming, as the English index did), fold accents; no stemming
            await tbl.create_index("terms", config=FTS(base_tokenizer="whitespace", stem=False, remove_stop_words=True,
                                                       language="English", lower_case=True, ascii_folding=True),
                                   replace=False)
        elif not self.multilingual and "content_idx" not in names:
            await tbl.create_index("content", config=FTS(), replace=False)
        vix = names.get("vector_idx")
        self._has_vector_index = vix is not None
        if vix is not None:
            self._vector_index_rows = int(getattr(vix, "num_indexed_rows", 0) or 0)

    @property
    def _table(self):
        if self._tbl is None:
            raise VectorStoreError("VectorMemory is not open (use `async with VectorMemory(path) as vm`)")
        return self._tbl

    async def _run(self, fn, *args):
        """Run the lancedb coroutine ``fn(*args)`` on the lance loop, waiting in a worker thread."""
        lance = self._lance
        if lance is None:
            raise VectorStoreError("VectorMemory is not open (use `async with VectorMemory(path) as vm`)")
        try:
            return await anyio.to_thread.run_sync(lambda: lance.run(fn(*args)), limiter=self._limiter)
        except MemoryStoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - lancedb raises plain ValueError/RuntimeError/OSError/...
            if is_disk_full(exc):
                raise self._disk_full() from exc
            raise VectorStoreError(f"lancedb: {type(exc).__name__}: {exc}") from exc

    def _disk_full(self) -> DiskFull:
        free = self.location.free_bytes() or 0
        # a compaction rewrites fragments: room for a good part of the table, at least 32 MB
        return DiskFull(self.location, free, max(32 * 2**20, self.location.size_bytes() // 2))

    async def switch_to(self, table: str) -> None:
        """Make ``table`` (built beside the current one, e.g. by ``kith memory reindex``) the current
        table: the ``CURRENT`` file is replaced atomically, then the old table is dropped. An
        interruption before the replace keeps the old table; after it, the new one."""
        async with self._write_lock:
            await anyio.to_thread.run_sync(_write_current, self.location, table)
            old, self.table = self.table, table
            await self._run(self._reopen, old)
        self.hot = HotChats(self.hot.max_rows)
        self._hot_epoch.clear()
        self._too_big.clear()
        self._speakers_loaded.clear()
        self._speakers_added.clear()

    async def _reopen(self, old: str) -> None:
        self._tbl = await self._db.open_table(self.table)
        have = await self._tbl.schema()
        self.multilingual = "terms" in have.names  # a reindex upgrades an old table
        self.embedding_model, self.dim = _made_with(have)  # ... and may change the model
        await self._ensure_indexes()
        if old != self.table:
            await self._db.drop_table(old)

    # ------------------------------------------------------------------ writes

    async def add(self, rows: Sequence[MemoryRow]) -> None:
        """Append ``rows`` in one batched upsert (keyed on ``id``: re-adding a key replaces the row).

        Vectors must be float32-compatible arrays of shape (dim,). Empty input is a no-op.
        raises ValueError (bad vector shape), VectorStoreError.
        """
        if not rows:
            return
        # a batch may repeat a key: the last occurrence wins (merge_insert needs unique source keys)
        unique = list({r.id: r for r in rows}.values())
        for r in unique:
            if np.size(r.vector) != self.dim:
                raise ValueError(f"row {r.id}: vector has {np.size(r.vector)} values, expected {self.dim}")
        async with self._write_lock:
            for i in range(0, len(unique), _ADD_CHUNK):
                # build the Arrow batch in a worker thread, not on the event loop nor the lance loop
                data = await anyio.to_thread.run_sync(self._to_arrow, unique[i : i + _ADD_CHUNK], limiter=self._limiter)
                await self._run(self._upsert, data)
                for r in unique[i : i + _ADD_CHUNK]:
                    if r.user_name:
                        self._speakers_added.setdefault(int(r.chat_id), set()).add(r.user_name)

    def _to_arrow(self, rows: Sequence[MemoryRow]) -> pa.Table:
        n = len(rows)
        vecs = np.empty((n, self.dim), dtype=np.float32)
        for i, r in enumerate(rows):
            vecs[i] = np.asarray(r.vector, dtype=np.float32).reshape(-1)
        if not np.isfinite(vecs).all():
            raise ValueError("vectors must be finite")
        content = [content_text(r.user_name, r.text, r.date, r.source, r.page) for r in rows]
        columns = {
                "id": pa.array([r.id for r in rows], pa.string()),
                "chat_id": pa.array([int(r.chat_id) for r in rows], pa.int64()),
                "message_id": pa.array([int(r.message_id) for r in rows], pa.int64()),
                "user_id": pa.array([int(r.user_id) for r in rows], pa.int64()),
                "user_name": pa.array([r.user_name or "" for r in rows], pa.string()),
                "kind": pa.array([r.kind for r in rows], pa.string()),
                "text": pa.array([r.text for r in rows], pa.string()),
                "content": pa.array(content, pa.string()),
                "date": pa.array([_utc(r.date) for r in rows], pa.timestamp("us", tz="UTC")),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), self.dim),
                "source": pa.array([r.source for r in rows], pa.string()),
                "page": pa.array([r.page for r in rows], pa.int32()),
                "parent": pa.array([r.parent for r in rows], pa.int64()),
        }
        if self.multilingual:  # (a table of the earlier format has no such column: nothing to compute)
            columns["terms"] = pa.array([index_terms(c, detect(r.text)) for c, r in zip(content, rows)], pa.string())
        return pa.table(columns, schema=schema(self.dim, terms=self.multilingual))

    async def _upsert(self, data: pa.Table) -> None:
        chats = {int(c) for c in np.unique(data.column("chat_id").to_numpy())}
        self._bump(chats)
        try:
            await self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
        except BaseException:
            for c in chats:  # unknown what was committed: read it again when next recalled
                self.hot.drop(c)
            raise
        else:
            self.hot.upsert(data)
        finally:
            self._bump(chats)

    def _bump(self, chats: Iterable[int]) -> None:
        for c in chats:
            self._hot_epoch[c] = self._hot_epoch.get(c, 0) + 1

    async def delete(
        self, chat_id: int, *, message_ids: Sequence[int] | None = None, user_id: int | None = None
    ) -> int:
        """Delete rows of one chat and return how many were deleted.

        No selector: every row of the chat. ``message_ids``: only those messages, and the chunks of
        the documents they carried (an empty sequence deletes nothing). ``user_id``: only that
        sender's rows. Both: the intersection.
        """
        if message_ids is not None and len(message_ids) == 0:
            return 0
        where = f"chat_id = {int(chat_id)}"
        if user_id is not None:
            where += f" AND user_id = {int(user_id)}"
        async with self._write_lock:
            try:
                if message_ids is None:
                    return await self._run(self._delete, where, int(chat_id))
                ids = sorted({int(m) for m in message_ids})
                total = 0
                for i in range(0, len(ids), 1000):
                    chunk = ", ".join(map(str, ids[i : i + 1000]))
                    total += await self._run(
                        self._delete, f"{where} AND (message_id IN ({chunk}) OR parent IN ({chunk}))", int(chat_id))
                return total
            finally:
                self._forget_speakers(int(chat_id))  # a sender may be gone: read the names again

    async def move_chat(self, old: int, new: int, shift: int) -> int:
        """Re-key chat ``old``'s rows to chat ``new`` (a basic group upgraded to a supergroup): message
        ids become ``id - shift`` (``memory.types.migrated_id``), a chunk's id follows its file
        message (``- shift << 16``) and so does its ``parent``; vectors are kept, nothing is embedded
        again. Upsert first, then delete the old rows (an interruption leaves both: run again).
        Returns the rows moved."""
        async with self._write_lock:
            try:
                return await self._run(self._move_chat, int(old), int(new), int(shift))
            finally:
                for c in (old, new):
                    self._forget_speakers(int(c))

    async def _move_chat(self, old: int, new: int, shift: int) -> int:
        import pyarrow.compute as pc

        tbl = await self._table.query().where(f"chat_id = {old}").to_arrow()
        if not tbl.num_rows:
            return 0
        is_doc = pc.equal(tbl.column("kind"), KIND_DOCUMENT)
        mids = pc.if_else(is_doc, pc.subtract(tbl.column("message_id"), shift << 16), pc.subtract(tbl.column("message_id"), shift))
        ids = [row_id(new, k, m) for k, m in zip(tbl.column("kind").to_pylist(), mids.to_pylist(), strict=True)]
        tbl = (tbl.set_column(tbl.schema.get_field_index("chat_id"), "chat_id", pa.array([new] * tbl.num_rows, pa.int64()))
               .set_column(tbl.schema.get_field_index("message_id"), "message_id", mids)
               .set_column(tbl.schema.get_field_index("parent"), "parent", pc.subtract(tbl.column("parent"), shift))
               .set_column(tbl.schema.get_field_index("id"), "id", pa.array(ids, pa.string())))
        await self._upsert(tbl.select(schema(self.dim).names).cast(schema(self.dim)))
        return await self._delete(f"chat_id = {old}", old)

    async def _delete(self, where: str, chat_id: int) -> int:
        self._bump((chat_id,))
        try:
            n = await self._table.count_rows(where)
            if n:
                await self._table.delete(where)
            return n
        finally:
            self.hot.drop(chat_id)
            self._too_big.pop(chat_id, None)
            self._bump((chat_id,))

    async def optimize(self) -> None:
        """Compact fragments, fold new rows into every index, drop old versions (``tbl.optimize()``).

        Also builds the vector index once the table has ``vector_index_min_rows`` rows, and retrains it
        when it has more than ``max_index_segments`` segments or the table doubled since. Takes
        ~0.5-1 s (plus ~4 s for an index build) at 100k rows; writes wait meanwhile, searches do not.
        """
        async with self._write_lock:
            await self._run(self._optimize)

    async def _optimize(self) -> None:
        from lancedb.index import IvfSq

        tbl = self._table
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
            self._has_vector_index = True
            self._vector_index_rows = rows

    # ------------------------------------------------------------------ reads

    async def count(self, chat_id: int | None = None) -> int:
        """Number of rows, of one chat or of the whole table."""
        where = None if chat_id is None else f"chat_id = {int(chat_id)}"
        return await self._run(self._table.count_rows, where)

    async def message_ids(self, chat_id: int) -> set[int]:
        """The message ids of every row of one chat (any kind)."""
        return await self._run(self._message_ids, int(chat_id))

    async def _message_ids(self, chat_id: int) -> set[int]:
        tbl = await self._table.query().where(f"chat_id = {chat_id}").select(["message_id"]).to_arrow()
        return set(tbl.column("message_id").to_pylist())

    async def ids_by_chat(self) -> dict[int, set[int]]:
        """Every row's ``message_id`` (messages and document chunks), per chat: one scan of two
        int64 columns (~10 ms per 100k rows)."""
        return await self._run(self._ids_by_chat)

    async def _ids_by_chat(self) -> dict[int, set[int]]:
        return ids_per_chat(await self._table.query().select(["chat_id", "message_id"]).to_arrow())

    async def speakers(self, chat_id: int) -> frozenset[str]:
        """The sender names (``user_name``) of chat ``chat_id``'s rows. Read from the table once per
        chat, then kept up to date by ``add`` (a delete makes the next call read again)."""
        chat_id = int(chat_id)
        loaded = self._speakers_loaded.get(chat_id)
        if loaded is None:
            loaded = await self._run(self._distinct_speakers, chat_id)
            self._speakers_loaded[chat_id] = loaded
        added = self._speakers_added.get(chat_id)
        return loaded | added if added else loaded

    async def _distinct_speakers(self, chat_id: int) -> frozenset[str]:
        import pyarrow.compute as pc

        tbl = await self._table.query().where(f"chat_id = {chat_id}").select(["user_name"]).to_arrow()
        return frozenset(n for n in pc.unique(tbl.column("user_name")).to_pylist() if n)

    def _forget_speakers(self, chat_id: int) -> None:
        self._speakers_loaded.pop(chat_id, None)
        self._speakers_added.pop(chat_id, None)

    async def search(
        self,
        chat_id: int,
        query_text: str,
        query_vector: np.ndarray | None,
        k: int = 10,
        *,
        mode: str = "hybrid",
        exclude_ids: Collection[int] = (),
        retrieval: "RetrievalSettings | None" = None,
    ) -> list[MemoryHit]:
        """The ``k`` most relevant rows of chat ``chat_id`` only, best first.

        mode "vector": nearest by cosine to ``query_vector`` (float32[dim], L2-normalised);
        ``MemoryHit.score`` = cosine similarity in [-1, 1]. mode "fts": BM25 over ``terms`` for the
        word terms of ``query_text`` (any text is accepted; see ``fts_terms``); score = BM25.
        mode "hybrid" without ``retrieval``: both legs (each pre-filtered to the chat, run
        concurrently) fused by reciprocal rank, score = sum of 1/(60 + rank); ``parts`` =
        {"vector": cos, "fts": bm25, "rrf": fused} for the legs that found the row.
        mode "hybrid" with ``retrieval`` (``memory.retrieval.RetrievalSettings``; what
        ``Memory.recall`` uses): the stages of ``memory.retrieval`` — stop words out of the
        full-text query, score fusion, a boost for senders the question names, neighbouring turns;
        ``parts`` = {"vector": cos, "fts": bm25 (when that leg found it), "speaker": boost,
        "fused": fused score, "neighbour": inherited bonus}, score = fused + neighbour.
        Hybrid without a vector (or without any word term) degrades to the other leg.
        ``exclude_ids``: message ids never returned (e.g. the recent window); neighbours too are
        only looked up among the chat's other rows. raises ValueError (unknown mode; "vector" mode
        without a vector; bad vector shape).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "vector" and query_vector is None:
            raise ValueError("mode='vector' needs a query_vector")
        if k <= 0:
            return []
        vec = None
        if query_vector is not None and mode != "fts":
            vec = self._query_vector(query_vector)
        terms = await self._fts_query_async(query_text, drop_stop_words=False) if mode != "vector" else []
        if vec is None and not terms:
            return []
        where = _chat_filter(chat_id, exclude_ids)
        if mode == "hybrid" and retrieval is not None:
            return await self.recall(chat_id, query_text, vec, k, settings=retrieval, exclude_ids=exclude_ids)
        depth = k if mode != "hybrid" else max(2 * k, 20)  # candidates per leg before fusion
        vrows, frows = await self._run(self._search, vec, terms, where, depth)
        if mode == "vector":
            return [_hit(r, r["_cos"], {"vector": r["_cos"]}) for r in vrows]
        if mode == "fts":
            return [_hit(r, r["_score"], {"fts": r["_score"]}) for r in frows]
        return _fuse(vrows, frows, k)

    def _query_vector(self, query_vector) -> np.ndarray:
        vec = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim:
            raise ValueError(f"query_vector has {vec.shape[0]} dims, expected {self.dim}")
        if not np.isfinite(vec).all():
            raise ValueError("query_vector must be finite")
        return vec

    async def recall(
        self,
        chat_id: int,
        query_text: str,
        query_vector: "np.ndarray | Awaitable[np.ndarray | None] | None",
        k: int = 10,
        *,
        settings: "RetrievalSettings",
        exclude_ids: Collection[int] = (),
    ) -> list[MemoryHit]:
        """The staged hybrid search of ``memory.retrieval`` over chat ``chat_id`` only (what
        ``search(mode="hybrid", retrieval=settings)`` runs; see there for scores and parts).

        ``query_vector`` may also be an awaitable of it (the question's embedding in progress): the
        full-text leg then runs while it is computed (the embedder's batching wait and the model call
        hide it), and the vector leg, fusion and neighbour read follow. An error of the awaitable
        propagates (the full-text leg is cancelled). raises ValueError (bad vector), VectorStoreError.
        """
        from .retrieval import find_speakers

        lance = self._lance
        if lance is None or self._tbl is None:
            if inspect.iscoroutine(query_vector):
                query_vector.close()  # never started: no "never awaited" warning
            raise VectorStoreError("VectorMemory is not open (use `async with VectorMemory(path) as vm`)")
        if k <= 0:
            if inspect.isawaitable(query_vector):
                await query_vector
            return []
        chat_id = int(chat_id)
        where = _chat_filter(chat_id, exclude_ids)
        try:
            terms = await self._fts_query_async(query_text, drop_stop_words=settings.drop_stop_words)
        except BaseException:
            if inspect.iscoroutine(query_vector):
                query_vector.close()  # cancelled before it started: no "never awaited" warning
            raise
        pool = max(settings.pool, k)
        hot = self.hot.get(chat_id)
        # the full-text leg (and, for a chat that is not hot, the read of the turns around its best
        # hits) starts now, on the lance loop, without waiting for the query vector
        fts = asyncio.run_coroutine_threadsafe(self._fts_stage(terms, where, pool, settings, hot), lance.loop) if terms else None
        try:
            vec = await query_vector if inspect.isawaitable(query_vector) else query_vector
            vec = self._query_vector(vec) if vec is not None else None
            mentioned: frozenset[str] = frozenset()
            if settings.speaker_boost:
                mentioned = find_speakers(query_text, await self.speakers(chat_id)).names
        except BaseException:
            if fts is not None:
                fts.cancel()
            raise
        if vec is None and fts is None:
            return []
        held = terms if self.multilingual else []  # the coverage factor compares reduced terms (a table of the earlier format: none)
        if hot is not None:
            return await self._run(self._recall_hot, hot, vec, fts, k, settings, mentioned, frozenset(map(int, exclude_ids)), held)
        return await self._run(self._recall, vec, fts, where, k, settings, mentioned, chat_id, held)

    async def _search(self, vec, terms, where, depth, fts_vectors: bool = False) -> tuple[list[dict], list[dict]]:
        legs = []
        if vec is not None:
            legs.append(self._vector_leg(vec, where, depth))
        if terms:
            legs.append(self._fts_leg(terms, where, depth, with_vectors=fts_vectors))
        done = await asyncio.gather(*legs)
        vrows = done.pop(0) if vec is not None else []
        frows = done.pop(0) if terms else []
        return vrows, frows

    async def _fts_stage(self, terms, where, pool, settings, hot: ChatRows | None = None) -> tuple[list[dict], list[dict]]:
        """The full-text leg (with vectors) and the rows around its ``neighbour_sources`` best hits.
        For a hot chat: the leg alone, with the vectors taken from ``hot``."""
        from .retrieval import ids_around_fts

        if hot is not None:
            frows = await self._fts_leg(terms, where, pool, with_vectors=False)
            for r in frows:  # a row committed a moment ago may not be in ``hot`` yet: no cosine then
                r["vector"] = hot.vector_of(r["kind"], r["message_id"])
            return frows, []
        frows = await self._fts_leg(terms, where, pool, with_vectors=True)
        nrows: list[dict] = []
        if settings.neighbours and frows:
            nrows = await self._rows_by_ids(where, ids_around_fts(frows, settings), with_vectors=True)
        return frows, nrows

    async def _recall(self, vec, fts, where, k, settings, mentioned, chat_id: int, terms=()) -> list[MemoryHit]:
        """The rest of ``recall`` in one go on the lance loop: the vector leg (and the result of
        ``_fts_stage``, ``fts``: a future, or None), score fusion, neighbour bonus, top k.

        The turns around the best full-text hits were read during the embedding; only when the
        full-text leg found nothing are the turns around the best vector hits read here.
        """
        from .retrieval import Fusion, propagate, to_hit

        pool = max(settings.pool, k)
        legs: list[Awaitable[Any]] = []
        if vec is not None:
            legs.append(self._vector_leg(vec, where, pool))
        if fts is not None:
            legs.append(asyncio.wrap_future(fts))
        done = await asyncio.gather(*legs)
        vrows = done.pop(0) if vec is not None else []
        frows, nrows = done.pop(0) if fts is not None else ([], [])
        fusion = Fusion(vrows, frows, vec, settings, mentioned, terms)
        if settings.neighbours and fusion.candidates:
            if not frows:
                nrows = await self._rows_by_ids(where, fusion.ids_around_best(), with_vectors=vec is not None)
            fusion.add_rows(nrows)
            propagate(fusion.candidates.values(), settings)
        hits = [to_hit(c, _hit) for c in fusion.best(k)]
        if self.hot.max_rows and chat_id not in self._too_big:
            await self._load_hot(chat_id)  # the next recall of this chat is served from RAM
        return hits

    async def _recall_hot(self, hot: ChatRows, vec, fts, k, settings, mentioned, exclude: frozenset[int], terms=()) -> list[MemoryHit]:
        """``_recall`` for a hot chat: the vector leg, the neighbouring turns and the vectors of the
        full-text hits come from ``hot`` (exact cosine over every row of the chat); only the
        full-text leg (``fts``, already running) was read from LanceDB."""
        from .retrieval import Fusion, ids_around_fts, propagate, to_hit

        self.hot.touch(hot.chat_id)
        pool = max(settings.pool, k)
        vrows = hot.nearest(vec, pool, exclude) if vec is not None else []
        frows = (await asyncio.wrap_future(fts))[0] if fts is not None else []
        fusion = Fusion(vrows, frows, vec, settings, mentioned, terms)
        if settings.neighbours and fusion.candidates:
            ids = ids_around_fts(frows, settings) if frows else fusion.ids_around_best()  # as the LanceDB path
            fusion.add_rows(hot.rows_by_ids(ids, exclude))
            propagate(fusion.candidates.values(), settings)
        return [to_hit(c, _hit) for c in fusion.best(k)]

    async def _load_hot(self, chat_id: int) -> None:
        """Read every row of the chat into ``hot`` (one scan), unless it is too large to hold or a
        write to it overlapped the read (then the next recall tries again)."""
        epoch = self._hot_epoch.get(chat_id, 0)
        if epoch % 2:  # a write to this chat is in flight
            return
        where = f"chat_id = {chat_id}"
        n = await self._table.count_rows(where)
        if n > self.hot.max_chat_rows:
            self._too_big[chat_id] = n
            return
        data = await self._table.query().where(where).select(list(_HOT_COLUMNS) + ["vector"]).limit(max(n, 1)).to_arrow()
        if self._hot_epoch.get(chat_id, 0) != epoch or data.num_rows != n:
            return
        rows = ChatRows(chat_id, self.dim)
        rows.upsert(data)
        self.hot.put(rows)

    async def _rows_by_ids(self, where: str, ids: list[int], *, with_vectors: bool) -> list[dict]:
        """The rows of ``where`` (one chat) with these message ids (an IN list: ~2x faster in lance
        than the same ids as OR-ed ranges)."""
        if not ids:
            return []
        cols = _RESULT_COLUMNS + (["vector"] if with_vectors else [])
        q = self._table.query().where(f"{where} AND message_id IN ({', '.join(str(int(i)) for i in ids)})")
        return _to_rows(await q.select(cols).limit(4 * len(ids)).to_arrow())

    async def _vector_leg(self, vec: np.ndarray, where: str, limit: int) -> list[dict]:
        q = (
            self._table.query()
            .nearest_to(vec)
            .column("vector")
            .distance_type("cosine")
            .where(where)
            .select(_RESULT_COLUMNS + ["_distance"])
            .limit(limit)
        )
        if self._has_vector_index:
            # search more partitions when the chat filter leaves too few rows; re-rank on full vectors
            q = q.minimum_nprobes(20).maximum_nprobes(0).refine_factor(2)
        rows = (await q.to_arrow()).to_pylist()
        for r in rows:
            d = r.pop("_distance")
            r["_cos"] = 1.0 - float(d) if d is not None and math.isfinite(d) else 0.0
        return rows

    async def _fts_query_async(self, text: str, *, drop_stop_words: bool) -> list[str]:
        """``_fts_query``; in a worker thread when it would first load a language model (~1 s)."""
        if self.multilingual and would_load(text):
            return await anyio.to_thread.run_sync(functools.partial(self._fts_query, text, drop_stop_words=drop_stop_words))
        return self._fts_query(text, drop_stop_words=drop_stop_words)

    def _fts_query(self, text: str, *, drop_stop_words: bool) -> list[str]:
        """The full-text query's terms: reduced in the query's language like the rows' ``terms``
        (``memory.language``); on a table made before that column, the plain words (its index
        stems English itself)."""
        from .retrieval import query_terms

        if not self.multilingual:
            return query_terms(fts_terms(text), drop_stop_words)
        words = query_words(text[:MAX_QUERY_CHARS], MAX_QUERY_TERMS)  # split as the index splits (marks, scripts)
        return language_query_terms(words, detect(text), drop_stop_words=drop_stop_words)

    async def _fts_leg(self, terms: list[str], where: str, limit: int, *, with_vectors: bool = False) -> list[dict]:
        from lancedb.query import MatchQuery

        column = "terms" if self.multilingual else "content"
        q = (
            self._table.query()
            .nearest_to_text(MatchQuery(" ".join(terms), column))  # type: ignore[call-arg]  # stub lists defaults as required
            .where(where)
            .select(_RESULT_COLUMNS + (["vector"] if with_vectors else []) + ["_score"])
            .limit(limit)
        )
        rows = _to_rows(await q.to_arrow())
        for r in rows:
            r["_score"] = float(r["_score"] or 0.0)
        return rows


def _to_rows(tbl: pa.Table) -> list[dict]:
    """Arrow rows as dicts; a ``vector`` column becomes one float32 numpy row each (not a list of
    Python floats: ~10x cheaper for a few hundred rows)."""
    if "vector" not in tbl.column_names:
        return tbl.to_pylist()
    col = tbl.column("vector").combine_chunks()
    vecs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1) if len(col) else np.zeros((0, 0), np.float32)
    rows = tbl.drop_columns(["vector"]).to_pylist()
    for r, v in zip(rows, vecs):
        r["vector"] = v
    return rows


def _hit(r: dict, score: float, parts: dict[str, float]) -> MemoryHit:
    d = r["date"]
    return MemoryHit(
        chat_id=int(r["chat_id"]),
        message_id=int(r["message_id"]),
        user_id=int(r["user_id"]) if r["user_id"] is not None else 0,
        user_name=r["user_name"] or "",
        text=r["text"] or "",
        date=d.replace(tzinfo=timezone.utc) if d is not None else datetime.fromtimestamp(0, timezone.utc),
        score=float(score),
        kind=r["kind"] or KIND_MESSAGE,
        parts=parts,
        source=r.get("source"),
        page=r.get("page"),
        parent=r.get("parent"),
    )


def _fuse(vector_rows: list[dict], fts_rows: list[dict], k: int) -> list[MemoryHit]:
    """Reciprocal-rank fusion of the two legs (each already best-first)."""
    fused: dict[tuple[str, int], tuple[dict, dict[str, float]]] = {}
    for name, rows, key in (("vector", vector_rows, "_cos"), ("fts", fts_rows, "_score")):
        for rank, r in enumerate(rows, start=1):
            ident = (r["kind"], r["message_id"])
            row, parts = fused.setdefault(ident, (r, {}))
            parts[name] = r[key]
            parts["rrf"] = parts.get("rrf", 0.0) + 1.0 / (RRF_K + rank)
    ranked = sorted(fused.values(), key=lambda rp: (-rp[1]["rrf"], -rp[1].get("vector", -1.0), rp[0]["message_id"]))
    return [_hit(row, parts["rrf"], parts) for row, parts in ranked[:k]]
