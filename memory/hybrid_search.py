"""Hybrid search of one chat's memories: the vector leg and the full-text leg over LanceDB (or, for a
hot chat, RAM), fused — by reciprocal rank for ``search``, or by the staged recall of
``memory.retrieval`` (score fusion, speakers, neighbouring turns) for ``recall``.

Recall (``search(..., retrieval=...)`` / ``recall``) runs the stages of ``memory.retrieval`` on top
of the two legs: see there. For a chat recalled recently (a *hot* chat, ``memory.hot``; opt-in with
``hot_rows``) only the full-text leg reads LanceDB: the vector leg, the neighbouring turns and the
vectors of the full-text hits come from RAM.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections.abc import Awaitable, Collection, Sequence
from concurrent.futures import Future
from typing import Any

import anyio
import numpy as np

from providers.language import by_script, detect, query_words, would_load
from providers.language import query_terms as language_query_terms

from .errors import VectorStoreError
from .feedback import entity_terms, merge_entity_hop, merge_rm3_hop, rm3_terms
from .hot import COLUMNS as HOT_COLUMNS
from .hot import ChatRows
from .retrieval import Fusion, RetrievalSettings, find_speakers, ids_around_fts, propagate, query_terms, to_hit
from .types import MemoryHit
from .vector_rows import (
    MAX_QUERY_CHARS,
    MAX_QUERY_TERMS,
    MODES,
    RESULT_COLUMNS,
    RRF_K,
    Row,
    chat_filter,
    fts_terms,
    hit_of,
    to_rows,
)
from .vector_table import VectorTable

__all__ = ["HybridSearch", "rrf_fuse"]

# the full-text stage running on the lance loop: (full-text rows, rows around its best hits)
FtsFuture = Future[tuple[list[Row], list[Row]]]


class HybridSearch:
    """The searches of one ``VectorTable`` (``t``)."""

    def __init__(self, table: VectorTable) -> None:
        self.t = table

    async def search(
        self,
        chat_id: int,
        query_text: str,
        query_vector: np.ndarray | None,
        k: int = 10,
        *,
        mode: str = "hybrid",
        exclude_ids: Collection[int] = (),
        retrieval: RetrievalSettings | None = None,
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
        where = chat_filter(chat_id, exclude_ids)
        if mode == "hybrid" and retrieval is not None:
            return await self.recall(chat_id, query_text, vec, k, settings=retrieval, exclude_ids=exclude_ids)
        depth = k if mode != "hybrid" else max(2 * k, 20)  # candidates per leg before fusion
        vrows, frows = await self.t.run(self._search, vec, terms, where, depth)
        if mode == "vector":
            return [hit_of(r, r["_cos"], {"vector": r["_cos"]}, vector_rank=i) for i, r in enumerate(vrows, 1)]
        if mode == "fts":
            return [hit_of(r, r["_score"], {"fts": r["_score"]}, fts_rank=i) for i, r in enumerate(frows, 1)]
        return rrf_fuse(vrows, frows, k)

    def _query_vector(self, query_vector: np.ndarray) -> np.ndarray:
        vec = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.t.dim:
            raise ValueError(f"query_vector has {vec.shape[0]} dims, expected {self.t.dim}")
        if not np.isfinite(vec).all():
            raise ValueError("query_vector must be finite")
        return vec

    async def recall(
        self,
        chat_id: int,
        query_text: str,
        query_vector: np.ndarray | Awaitable[np.ndarray | None] | None,
        k: int = 10,
        *,
        settings: RetrievalSettings,
        exclude_ids: Collection[int] = (),
    ) -> list[MemoryHit]:
        """The staged hybrid search of ``memory.retrieval`` over chat ``chat_id`` only (what
        ``search(mode="hybrid", retrieval=settings)`` runs; see there for scores and parts).

        ``query_vector`` may also be an awaitable of it (the question's embedding in progress): the
        full-text leg then runs while it is computed (the embedder's batching wait and the model call
        hide it), and the vector leg, fusion and neighbour read follow. An error of the awaitable
        propagates (the full-text leg is cancelled). raises ValueError (bad vector), VectorStoreError.
        """
        lance = self.t.lance
        if lance is None or not self.t.is_open:
            if inspect.iscoroutine(query_vector):
                query_vector.close()  # never started: no "never awaited" warning
            raise VectorStoreError("VectorMemory is not open (use `async with VectorMemory(path) as vm`)")
        if k <= 0:
            if inspect.isawaitable(query_vector):
                await query_vector
            return []
        chat_id = int(chat_id)
        where = chat_filter(chat_id, exclude_ids)
        try:
            terms = await self._fts_query_async(query_text, drop_stop_words=settings.drop_stop_words)
        except BaseException:
            if inspect.iscoroutine(query_vector):
                query_vector.close()  # cancelled before it started: no "never awaited" warning
            raise
        pool = max(settings.pool, k)
        hot = self.t.hot.get(chat_id)
        # the full-text leg (and, for a chat that is not hot, the read of the turns around its best
        # hits) starts now, on the lance loop, without waiting for the query vector
        fts = asyncio.run_coroutine_threadsafe(self._fts_stage(terms, where, pool, settings, hot), lance.loop) if terms else None
        try:
            vec = await query_vector if inspect.isawaitable(query_vector) else query_vector
            vec = self._query_vector(vec) if vec is not None else None
            mentioned: frozenset[str] = frozenset()
            speakers: frozenset[str] = frozenset()
            if settings.speaker_boost or settings.feedback:
                speakers = await self.t.speakers(chat_id)
            if settings.speaker_boost:
                mentioned = find_speakers(query_text, speakers).names
        except BaseException:
            if fts is not None:
                fts.cancel()
            raise
        if vec is None and fts is None:
            return []
        held = terms if self.t.multilingual else []  # the coverage factor compares reduced terms (a table of the earlier format: none)
        hop = _Hop(self, where, pool, settings, terms, speakers, query_text, hot) if settings.feedback and terms else None
        if hot is not None:
            return await self.t.run(self._recall_hot, hot, vec, fts, k, settings, mentioned, frozenset(map(int, exclude_ids)), held,
                                    hop)
        return await self.t.run(self._recall, vec, fts, where, k, settings, mentioned, chat_id, held, hop)

    async def _search(self, vec: np.ndarray | None, terms: list[str], where: str, depth: int, fts_vectors: bool = False) -> tuple[list[Row], list[Row]]:
        legs = []
        if vec is not None:
            legs.append(self._vector_leg(vec, where, depth))
        if terms:
            legs.append(self._fts_leg(terms, where, depth, with_vectors=fts_vectors))
        done = await asyncio.gather(*legs)
        vrows = done.pop(0) if vec is not None else []
        frows = done.pop(0) if terms else []
        return vrows, frows

    async def _fts_stage(self, terms: list[str], where: str, pool: int, settings: RetrievalSettings, hot: ChatRows | None = None) -> tuple[list[Row], list[Row]]:
        """The full-text leg (with vectors) and the rows around its ``neighbour_sources`` best hits.
        For a hot chat: the leg alone, with the vectors taken from ``hot``."""
        if hot is not None:
            frows = await self._fts_leg(terms, where, pool, with_vectors=False)
            for r in frows:  # a row committed a moment ago may not be in ``hot`` yet: no cosine then
                r["vector"] = hot.vector_of(r["kind"], r["message_id"])
            return frows, []
        frows = await self._fts_leg(terms, where, pool, with_vectors=True)
        nrows: list[Row] = []
        if settings.neighbours and frows:
            nrows = await self._rows_by_ids(where, ids_around_fts(frows, settings), with_vectors=True)
        return frows, nrows

    async def _recall(self, vec: np.ndarray | None, fts: FtsFuture | None, where: str, k: int, settings: RetrievalSettings,
                      mentioned: frozenset[str], chat_id: int, terms: Sequence[str] = (), hop: _Hop | None = None) -> list[MemoryHit]:
        """The rest of ``recall`` in one go on the lance loop: the vector leg (and the result of
        ``_fts_stage``, ``fts``: a future, or None), score fusion, neighbour bonus, top k.

        The turns around the best full-text hits were read during the embedding; only when the
        full-text leg found nothing are the turns around the best vector hits read here.
        """
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
        if hop is not None and fusion.candidates:
            await hop.run(fusion)
        hits = [to_hit(c, hit_of) for c in fusion.best(k)]
        if self.t.hot.max_rows and chat_id not in self.t.too_big:
            await self._load_hot(chat_id)  # the next recall of this chat is served from RAM
        return hits

    async def _recall_hot(self, hot: ChatRows, vec: np.ndarray | None, fts: FtsFuture | None, k: int, settings: RetrievalSettings,
                          mentioned: frozenset[str], exclude: frozenset[int], terms: Sequence[str] = (),
                          hop: _Hop | None = None) -> list[MemoryHit]:
        """``_recall`` for a hot chat: the vector leg, the neighbouring turns and the vectors of the
        full-text hits come from ``hot`` (exact cosine over every row of the chat); only the
        full-text leg (``fts``, already running) was read from LanceDB."""
        self.t.hot.touch(hot.chat_id)
        pool = max(settings.pool, k)
        vrows = hot.nearest(vec, pool, exclude) if vec is not None else []
        frows = (await asyncio.wrap_future(fts))[0] if fts is not None else []
        fusion = Fusion(vrows, frows, vec, settings, mentioned, terms)
        if settings.neighbours and fusion.candidates:
            ids = ids_around_fts(frows, settings) if frows else fusion.ids_around_best()  # as the LanceDB path
            fusion.add_rows(hot.rows_by_ids(ids, exclude))
            propagate(fusion.candidates.values(), settings)
        if hop is not None and fusion.candidates:
            await hop.run(fusion)
        return [to_hit(c, hit_of) for c in fusion.best(k)]

    async def _load_hot(self, chat_id: int) -> None:
        """Read every row of the chat into ``hot`` (one scan), unless it is too large to hold or a
        write to it overlapped the read (then the next recall tries again)."""
        epoch = self.t.hot_epoch.get(chat_id, 0)
        if epoch % 2:  # a write to this chat is in flight
            return
        where = f"chat_id = {chat_id}"
        n = await self.t.lance_table.count_rows(where)
        if n > self.t.hot.max_chat_rows:
            self.t.too_big[chat_id] = n
            return
        data = await self.t.lance_table.query().where(where).select([*list(HOT_COLUMNS), "vector"]).limit(max(n, 1)).to_arrow()
        if self.t.hot_epoch.get(chat_id, 0) != epoch or data.num_rows != n:
            return
        rows = ChatRows(chat_id, self.t.dim)
        rows.upsert(data)
        self.t.hot.put(rows)

    async def _rows_by_ids(self, where: str, ids: list[int], *, with_vectors: bool) -> list[Row]:
        """The rows of ``where`` (one chat) with these message ids (an IN list: ~2x faster in lance
        than the same ids as OR-ed ranges)."""
        if not ids:
            return []
        cols = RESULT_COLUMNS + (["vector"] if with_vectors else [])
        q = self.t.lance_table.query().where(f"{where} AND message_id IN ({', '.join(str(int(i)) for i in ids)})")
        return to_rows(await q.select(cols).limit(4 * len(ids)).to_arrow())

    async def _vector_leg(self, vec: np.ndarray, where: str, limit: int) -> list[Row]:
        q = (
            self.t.lance_table.query()
            .nearest_to(vec)
            .column("vector")
            .distance_type("cosine")
            .where(where)
            .select([*RESULT_COLUMNS, "_distance"])
            .limit(limit)
        )
        if self.t.has_vector_index:
            # search more partitions when the chat filter leaves too few rows; re-rank on full vectors
            q = q.minimum_nprobes(20).maximum_nprobes(0).refine_factor(2)
        rows: list[Row] = (await q.to_arrow()).to_pylist()
        for r in rows:
            d = r.pop("_distance")
            r["_cos"] = 1.0 - float(d) if d is not None and math.isfinite(d) else 0.0
        return rows

    async def _fts_query_async(self, text: str, *, drop_stop_words: bool) -> list[str]:
        """``_fts_query``; in a worker thread when it would first load a language model (~1 s)."""
        if self.t.multilingual and would_load(text):
            return await anyio.to_thread.run_sync(functools.partial(self._fts_query, text, drop_stop_words=drop_stop_words))
        return self._fts_query(text, drop_stop_words=drop_stop_words)

    def _fts_query(self, text: str, *, drop_stop_words: bool) -> list[str]:
        """The full-text query's terms: reduced in the query's language like the rows' ``terms``
        (``providers.language``); on a table made before that column, the plain words (its index
        stems English itself)."""
        if not self.t.multilingual:
            return query_terms(fts_terms(text), drop_stop_words)
        words = query_words(text[:MAX_QUERY_CHARS], MAX_QUERY_TERMS)  # split as the index splits (marks, scripts)
        return language_query_terms(words, detect(text), drop_stop_words=drop_stop_words)

    async def _fts_leg(self, terms: list[str], where: str, limit: int, *, with_vectors: bool = False) -> list[Row]:
        from lancedb.query import MatchQuery  # deferred: lancedb (~1.3 s); `kith memory stats` imports this module without it

        column = "terms" if self.t.multilingual else "content"
        q = (
            self.t.lance_table.query()
            .nearest_to_text(MatchQuery(" ".join(terms), column))  # type: ignore[call-arg]  # stub lists defaults as required
            .where(where)
            .select(RESULT_COLUMNS + (["vector"] if with_vectors else []) + ["_score"])
            .limit(limit)
        )
        rows = to_rows(await q.to_arrow())
        for r in rows:
            r["_score"] = float(r["_score"] or 0.0)
        return rows


class _Hop:
    """The second full-text hops of one recall (``memory.feedback``): entity links and RM3, from
    the best candidates after fusion and neighbours; run on the lance loop."""

    def __init__(self, search: HybridSearch, where: str, pool: int, settings: RetrievalSettings, terms: list[str],
                 speakers: Collection[str], query_text: str, hot: ChatRows | None) -> None:
        self.search, self.where, self.pool, self.settings = search, where, pool, settings
        self.terms, self.speakers, self.hot = terms, speakers, hot
        if search.t.multilingual:  # reduced as the index reduces (Latin script as English, like ``held_terms``)
            script = by_script(query_text)
            lang = "en" if script in (None, "latin") else script
            self.reduce = lambda ws: language_query_terms(ws, lang, drop_stop_words=False)
        else:
            self.reduce = lambda ws: query_terms(fts_terms(" ".join(ws)), False)

    async def _leg(self, terms: list[str]) -> list[Row]:
        if not terms:
            return []
        if self.hot is None:
            return await self.search._fts_leg(terms, self.where, self.pool, with_vectors=True)
        rows = await self.search._fts_leg(terms, self.where, self.pool, with_vectors=False)
        for r in rows:
            r["vector"] = self.hot.vector_of(r["kind"], r["message_id"])
        return rows

    async def run(self, fusion: Fusion) -> None:
        s = self.settings
        sources = fusion.best(s.feedback_docs)
        ent = entity_terms(sources, self.reduce, self.terms, self.speakers, s.feedback_terms) if s.entity_weight else []
        rm3 = rm3_terms(sources, self.reduce, s.feedback_terms, self.speakers) if s.rm3_weight else []
        erows, rrows = await asyncio.gather(self._leg(ent), self._leg(rm3))
        if erows:
            merge_entity_hop(fusion, erows, s, ent)
        if rrows:
            merge_rm3_hop(fusion, rrows, s)


def rrf_fuse(vector_rows: list[Row], fts_rows: list[Row], k: int) -> list[MemoryHit]:
    """Reciprocal-rank fusion of the two legs (each already best-first)."""
    fused: dict[tuple[str, int], tuple[Row, dict[str, float], dict[str, int]]] = {}
    for name, rows, key in (("vector", vector_rows, "_cos"), ("fts", fts_rows, "_score")):
        for rank, r in enumerate(rows, start=1):
            ident = (r["kind"], r["message_id"])
            _row, parts, ranks = fused.setdefault(ident, (r, {}, {}))
            parts[name] = r[key]
            parts["rrf"] = parts.get("rrf", 0.0) + 1.0 / (RRF_K + rank)
            ranks[name] = rank
    ranked = sorted(fused.values(), key=lambda rp: (-rp[1]["rrf"], -rp[1].get("vector", -1.0), rp[0]["message_id"]))
    return [hit_of(row, parts["rrf"], parts, vector_rank=ranks.get("vector"), fts_rank=ranks.get("fts"))
            for row, parts, ranks in ranked[:k]]
