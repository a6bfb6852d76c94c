"""Hot chats: the memory rows of recently recalled chats, held in RAM for recall.

A recall of a hot chat computes its vector leg exactly in-process (one matrix-vector product over
the chat's rows, ``float32[n, 384] @ float32[384]``) and takes its neighbouring turns and the vectors
of its full-text hits from here, so only the full-text (BM25) leg goes to LanceDB. In LanceDB those
three reads cost ~3.4 + 2.9 + 1.7 ms per query (LoCoMo, 2 cores; ``benchmarks.recall_locomo``); here
they cost well under a millisecond.

Whole chats are kept, least recently recalled evicted first, within ``max_rows`` rows in all (about
2 KB per row: the vector and the text). A chat with more than ``max_rows // 2`` rows is never held;
it is searched in LanceDB (through its vector index).

Owned by ``VectorMemory``: every method runs on its lance loop thread, so there is one writer and no
lock; ``get`` (a dict read) may be called from any thread. ``VectorMemory`` keeps it consistent:
rows it adds are upserted here after LanceDB commits them, a delete drops the chat, and a chat
loaded while a write to it was in flight is discarded (see ``VectorMemory._load_hot``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from .vector_rows import Row

__all__ = ["COLUMNS", "ChatRows", "HotChats"]

# the columns a row carries besides its vector (the ``_RESULT_COLUMNS`` of memory.vectors)
COLUMNS = ("chat_id", "message_id", "user_id", "user_name", "kind", "text", "date", "source", "page", "parent")


class ChatRows:
    """The rows of one chat: ``vectors`` float32[n, dim] (L2-normalised) and their columns.

    ``(kind, message_id)`` is the key, as in the table: upserting an existing key replaces the row.
    """

    def __init__(self, chat_id: int, dim: int) -> None:
        self.chat_id = chat_id
        self.dim = dim
        self.n = 0
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        self._slot: dict[tuple[str, int], int] = {}
        self._by_message: dict[int, list[int]] = {}

    @property
    def vectors(self) -> np.ndarray:
        """float32[n, dim]: the rows' vectors (a view; valid until the next upsert)."""
        return self._vectors[: self.n]

    def upsert(self, tbl: pa.Table) -> None:
        """Add or replace rows from an Arrow table with ``COLUMNS`` and ``vector`` (this chat's only)."""
        if tbl.num_rows == 0:
            return
        vec_col = tbl.column("vector").combine_chunks()
        vecs = vec_col.flatten().to_numpy(zero_copy_only=False).reshape(len(vec_col), self.dim).astype(np.float32, copy=False)
        names = set(tbl.column_names)  # the document columns may be absent: null
        cols: dict[str, list[Any]] = {c: tbl.column(c).to_pylist() if c in names else [None] * tbl.num_rows for c in COLUMNS}
        need = self.n + tbl.num_rows
        if need > len(self._vectors):  # grow geometrically: appends arrive a few rows at a time
            grown = np.empty((max(need, 2 * len(self._vectors), 64), self.dim), dtype=np.float32)
            grown[: self.n] = self._vectors[: self.n]
            self._vectors = grown
        for j in range(tbl.num_rows):
            key = (cols["kind"][j], int(cols["message_id"][j]))
            i = self._slot.get(key)
            if i is None:
                i = self._slot[key] = self.n
                self.n += 1
                for c in COLUMNS:
                    self._cols[c].append(cols[c][j])
                self._by_message.setdefault(key[1], []).append(i)
            else:
                for c in COLUMNS:
                    self._cols[c][i] = cols[c][j]
            self._vectors[i] = vecs[j]

    def row(self, i: int) -> Row:
        """Row ``i`` as the dict a LanceDB query returns (``COLUMNS``)."""
        return {c: self._cols[c][i] for c in COLUMNS}

    def vector_of(self, kind: str, message_id: int) -> np.ndarray | None:
        i = self._slot.get((kind, int(message_id)))
        return None if i is None else self._vectors[i]

    def nearest(self, query: np.ndarray, limit: int, exclude_ids: Collection[int] = ()) -> list[Row]:
        """The ``limit`` rows closest to ``query`` (float32[dim], L2-normalised) by cosine, best
        first, each with ``_cos``; rows whose message id is in ``exclude_ids`` are skipped. Exact."""
        if self.n == 0 or limit <= 0:
            return []
        sims = self.vectors @ query
        for mid in exclude_ids:
            for i in self._by_message.get(int(mid), ()):
                sims[i] = -np.inf
        limit = min(limit, self.n)
        top = np.argpartition(-sims, limit - 1)[:limit] if limit < self.n else np.arange(self.n)
        top = top[np.argsort(-sims[top], kind="stable")]
        out = []
        for i in top:
            if not np.isfinite(sims[i]):
                break
            r = self.row(int(i))
            r["_cos"] = float(sims[i])
            out.append(r)
        return out

    def rows_by_ids(self, message_ids: Iterable[int], exclude_ids: Collection[int] = ()) -> list[Row]:
        """The rows (any kind) with these message ids, each with ``vector``; ``exclude_ids`` skipped."""
        out = []
        for mid in message_ids:
            if mid in exclude_ids:
                continue
            for i in self._by_message.get(int(mid), ()):
                r = self.row(i)
                r["vector"] = self._vectors[i]
                out.append(r)
        return out


class HotChats:
    """An LRU of ``ChatRows`` holding at most ``max_rows`` rows in all (0 disables it)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max(0, int(max_rows))
        self._chats: OrderedDict[int, ChatRows] = OrderedDict()
        self.rows = 0
        self.loads = 0
        self.evictions = 0

    def __contains__(self, chat_id: int) -> bool:
        return chat_id in self._chats

    def __len__(self) -> int:
        return len(self._chats)

    @property
    def max_chat_rows(self) -> int:
        """The largest chat that may be held."""
        return self.max_rows // 2

    def get(self, chat_id: int) -> ChatRows | None:
        """The chat's rows if hot (no LRU update: safe from any thread)."""
        return self._chats.get(chat_id)

    def touch(self, chat_id: int) -> None:
        if chat_id in self._chats:
            self._chats.move_to_end(chat_id)

    def put(self, rows: ChatRows) -> bool:
        """Hold ``rows`` (replacing the chat's entry), evicting the least recently used chats to stay
        within ``max_rows``. Returns False (and holds nothing) when the chat is too large."""
        self.drop(rows.chat_id)
        if rows.n > self.max_chat_rows:
            return False
        self._evict(self.max_rows - rows.n)
        self._chats[rows.chat_id] = rows
        self.rows += rows.n
        self.loads += 1
        return True

    def drop(self, chat_id: int) -> None:
        old = self._chats.pop(chat_id, None)
        if old is not None:
            self.rows -= old.n

    def clear(self) -> None:
        self._chats.clear()
        self.rows = 0

    def upsert(self, tbl: pa.Table) -> None:
        """Apply rows LanceDB has just committed to the chats that are hot (others are skipped: they
        are read whole when they become hot)."""
        if not self._chats or tbl.num_rows == 0:
            return
        chat_ids = tbl.column("chat_id").to_numpy()
        for chat_id in {int(c) for c in np.unique(chat_ids)}:
            hot = self._chats.get(chat_id)
            if hot is None:
                continue
            before = hot.n
            hot.upsert(tbl.filter(pa.array(chat_ids == chat_id)))
            self.rows += hot.n - before
            if hot.n > self.max_chat_rows:
                self.drop(chat_id)  # grew too large to hold
        self._evict(self.max_rows, keep=1)

    def _evict(self, max_rows: int, keep: int = 0) -> None:
        """Evict least recently used chats until at most ``max_rows`` rows (or ``keep`` chats) remain."""
        while len(self._chats) > keep and self.rows > max_rows:
            _, old = self._chats.popitem(last=False)
            self.rows -= old.n
            self.evictions += 1
