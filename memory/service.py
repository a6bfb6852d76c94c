"""``Memory``: the one object the actors use to remember and recall, per chat.

Remembering writes the message to the dialogue store (DuckDB, batched) and queues it for embedding
into vector memory (LanceDB, batched). Recalling searches *one chat only*: the chat id is a hard
boundary, passed down to a pre-filtered search (docs/design.md §5).
"""
from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import anyio

from providers.language import detect_or_none, would_load

from .facts import FactStore, MemoryEntry
from .retrieval import DEFAULT as DEFAULT_RETRIEVAL
from .retrieval import RetrievalSettings, find_speakers
from .types import MIGRATION_SHIFT, ROLE_USER, DocumentChunk, DocumentInfo, MemoryHit, StoredMessage
from .vector_rows import RRF_K

if TYPE_CHECKING:  # (types only; none of these imports this module)
    import numpy as np

    from providers.embedder import Embedder

    from .documents import DocumentReader
    from .indexer import Indexer, Item
    from .store import DialogueStore
    from .vectors import VectorMemory

__all__ = ["ENTRY_HITS", "GapCounts", "Memory", "Recall", "StartupCheck"]


class GapCounts(Protocol):
    """What the start-up check found: stored messages missing from vector memory, memories of
    deleted messages (``memory.maintenance.Gaps``)."""

    @property
    def n_missing(self) -> int: ...
    @property
    def n_orphans(self) -> int: ...


class StartupCheck(Protocol):
    """The start-up check of vector memory against the dialogue store, running in the background
    (``memory.maintenance.GapFiller``): ``wait`` until it is done; ``gaps`` what it found."""

    @property
    def gaps(self) -> GapCounts | None: ...

    async def wait(self) -> None: ...


ENTRY_HITS = 3  # memory entries whose source messages a recall may add
ENTRY_AFTER = 3  # the best hits that stay ahead of an entry's source messages


@dataclass(frozen=True, slots=True)
class Recall:
    """What a recall returned and what it cost: hits best first; times in milliseconds."""

    hits: list[MemoryHit]
    embed_ms: float = 0.0
    search_ms: float = 0.0


class Memory:
    """Facade over DialogueStore + Indexer + VectorMemory + the embedder.

    Only user messages with non-blank text are embedded; the bot's own replies are stored in the
    dialogue (and so in the recent context) but never recalled as memories, so the bot does not
    quote itself back as a source.
    """

    def __init__(self, store: DialogueStore, vectors: VectorMemory, indexer: Indexer, embedder: Embedder,
                 reader: DocumentReader | None = None) -> None:
        self.store = store
        self.vectors = vectors
        self.indexer = indexer
        self.embedder = embedder
        self.reader = reader  # memory.documents.DocumentReader (documents off the event loop); None = a thread
        self.gap_filler: StartupCheck | None = None  # when the start-up gap check runs (memory.maintenance.GapFiller)
        # memory entries (facts about members and the chat), on stores that run plain SQL
        self.facts: FactStore | None = FactStore(store) if hasattr(store, "sql_transaction") else None  # type: ignore[arg-type]
        self._evicted: dict[int, set[int]] = {}  # chat -> message ids whose memory the capacity cleanup evicted
        indexer.keep = self.not_evicted  # an evicted memory never comes back (an edit, a replay, a re-import)

    async def _evicted_of(self, chat_id: int) -> set[int]:
        ids = self._evicted.get(chat_id)
        if ids is None:
            ids = self._evicted[chat_id] = await self.store.index.evicted_ids(chat_id)
        return ids

    async def not_evicted(self, items: list[Item]) -> list[Item]:
        """``items`` (messages, document chunks) without those whose message's memory the capacity
        cleanup evicted: the indexer's filter, so such a memory never comes back — not by an edit,
        a replay or a second import of the same history (the start-up gap check skips them too)."""
        out = []
        for item in items:
            if item.message_id not in await self._evicted_of(item.chat_id):  # a chunk: its file message's id
                out.append(item)
        return out

    async def note_evictions(self, chat_id: int, message_ids: Collection[int]) -> None:
        """Record (durably, first) that the memories of ``message_ids`` were evicted by the capacity
        cleanup; from then on the indexer drops them (``not_evicted``)."""
        await self.store.index.note_evictions(chat_id, list(message_ids))
        (await self._evicted_of(chat_id)).update(int(m) for m in message_ids)

    def check_space(self) -> None:
        """raises DiskFull when vector memory's last append failed for lack of space (the dialogue
        store raises its own from ``add``): callers stop taking input."""
        full = getattr(self.indexer, "disk_full", None)
        if full is not None:  # vector memory cannot grow: stop intake like the store does
            raise full

    def remember(self, msg: StoredMessage, *, index: bool = True) -> None:
        """Store ``msg`` (idempotent on chat_id, message_id) and queue it for embedding. Non-blocking.
        raises DiskFull when either store ran out of space (intake stops; what is stored stays)."""
        self.check_space()
        self.store.add(msg)
        if index and msg.role == ROLE_USER and msg.text.strip():
            self.indexer.submit((msg,))

    def remember_many(self, msgs: Iterable[StoredMessage], *, index: bool = True) -> None:
        """Store many messages at once; user messages with text are queued for embedding."""
        msgs = list(msgs)
        self.check_space()
        self.store.add_many(msgs)
        if index:
            self.indexer.submit(m for m in msgs if m.role == ROLE_USER and m.text.strip())

    async def remember_document(self, info: DocumentInfo, chunks: list[DocumentChunk]) -> None:
        """Keep a document's chunks (DuckDB, committed before return) and queue them for embedding.
        The file message itself is remembered with ``remember`` (as ``[file name] caption``).
        ``flush()`` waits until the chunks are recallable."""
        await self.store.documents.add(info, chunks)
        self.indexer.submit(chunks)

    #: the recall stages (``memory.retrieval``); an instance may carry other settings (benchmark
    #: ablations); None: the bare hybrid search (rank fusion of the two legs, no stages)
    retrieval: RetrievalSettings | None = DEFAULT_RETRIEVAL
    #: the languages the embedding model was trained on (None: any); a question in another language
    #: gets ``RetrievalSettings.foreign_vector_weight`` of the vector leg's weight
    embedding_languages: frozenset[str] | None = frozenset({"en"})

    async def recall(
        self, chat_id: int, query: str, k: int, *, exclude_ids: Collection[int] = (), mode: str = "hybrid"
    ) -> Recall:
        """Top-``k`` memories of chat ``chat_id`` for ``query`` (never another chat's), best first.

        exclude_ids: message ids already in the context (the recent window). Empty query or k=0 → no hits.
        mode: ``"hybrid"`` (the stages of ``memory.retrieval``: the question embedded without the
        chat's speaker names, full text without stop words, score fusion, speaker boost,
        neighbouring turns), ``"vector"`` or ``"fts"`` (one plain leg, for comparison).
        ``Recall.embed_ms`` is the query embedding; ``search_ms`` the rest of the wall time (in hybrid
        mode the full-text leg runs during the embedding, so it is mostly not counted).
        """
        if k <= 0 or not query.strip():
            return Recall([])
        settings = self.retrieval
        t0 = time.perf_counter()
        embed_ms = 0.0

        async def embed(text: str) -> np.ndarray | None:
            nonlocal embed_ms
            te = time.perf_counter()
            try:
                return await self.embedder.embed_one(text)
            finally:
                embed_ms = (time.perf_counter() - te) * 1000

        if mode == "hybrid" and settings is not None:
            if settings.foreign_vector_weight != 1.0 and self.embedding_languages is not None:
                lang = await _language_of(query)
                if lang is not None and lang not in self.embedding_languages:
                    settings = replace(settings, vector_weight=settings.vector_weight * settings.foreign_vector_weight)
            text = query
            if settings.strip_speakers:
                text = find_speakers(query, await self.vectors.speakers(chat_id)).stripped or query
            # the full-text leg runs while the question is embedded
            hits = await self.vectors.recall(chat_id, query, embed(text), k, settings=settings, exclude_ids=exclude_ids)
            if self.facts is not None:
                hits = await self._with_entry_sources(chat_id, query, hits, k, exclude_ids)
        else:
            vector = None if mode == "fts" else await embed(query)
            hits = await self.vectors.search(chat_id, query, vector, k, mode=mode, exclude_ids=exclude_ids)
        total_ms = (time.perf_counter() - t0) * 1000
        return Recall(hits, embed_ms, total_ms - embed_ms)

    async def recall_many(self, chat_id: int, question: str, queries: Iterable[str], k: int, *,
                          exclude_ids: Collection[int] = ()) -> Recall:
        """``recall`` of ``question`` and of each of ``queries`` (search queries a planner wrote for it,
        ``actors.query_plan``), fused by reciprocal rank: a hit's score is the sum over the lists
        holding it of 1 / (``RRF_K`` + its rank), best first, ``k`` at most (RAG-Fusion's recipe: a
        message several queries find beats one a single query loves). ``parts["rrf"]`` is that score;
        ``stages`` name the queries that found it. Without queries: ``recall(question)``. The recalls
        run concurrently (their embeddings share the embedder's calls); ``embed_ms`` / ``search_ms``
        are the slowest one's."""
        queries = [q for q in dict.fromkeys(queries) if q.strip() and q != question]
        if not queries:
            return await self.recall(chat_id, question, k, exclude_ids=exclude_ids)
        results: list[Recall | None] = [None] * (len(queries) + 1)

        async def one(i: int, text: str) -> None:
            results[i] = await self.recall(chat_id, text, k, exclude_ids=exclude_ids)

        async with anyio.create_task_group() as tg:
            for i, text in enumerate([question, *queries]):
                tg.start_soon(one, i, text)
        done = [r for r in results if r is not None]
        assert len(done) == len(results)  # every recall returned (an error would have left the task group)
        fused: dict[tuple[str, int], tuple[MemoryHit, float, list[str]]] = {}
        for i, rec in enumerate(done):
            for rank, hit in enumerate(rec.hits, start=1):
                key = (hit.kind, hit.message_id)
                first, score, found_by = fused.get(key, (hit, 0.0, []))
                if i:
                    found_by.append(f"query {i}: {queries[i - 1]}")
                fused[key] = (first, score + 1.0 / (RRF_K + rank), found_by)
        ranked = sorted(fused.values(), key=lambda v: (-v[1], -v[0].score, v[0].message_id))[:k]
        hits = [replace(h, score=score, parts={**h.parts, "rrf": score}, stages=(*h.stages, *found_by))
                for h, score, found_by in ranked]
        return Recall(hits, max(r.embed_ms for r in done), max(r.search_ms for r in done))

    async def entries_for(self, chat_id: int, query: str, limit: int = ENTRY_HITS) -> list[MemoryEntry]:
        """The current memory entries of ``chat_id`` whose subject or value holds a content word of
        ``query`` (``FactStore.search``; English stop words and words under 4 letters left out)."""
        if self.facts is None:
            return []
        from providers.language import STOP_WORDS, words  # deferred: the language module loads its tables

        terms = [w for w in words(query.casefold()) if (len(w) >= 4 or w.isdigit()) and w not in STOP_WORDS]
        return await self.facts.search(chat_id, terms, limit) if terms else []

    async def _with_entry_sources(self, chat_id: int, query: str, hits: list[MemoryHit], k: int,
                                  exclude_ids: Collection[int]) -> list[MemoryHit]:
        """A recall that hits a memory entry also returns the messages it came from: they come right
        after the ``ENTRY_AFTER`` best hits (fewer when there are few: at most half of them), whatever
        ``k`` is — one already among the weaker hits moves up — with ``parts["entry"]`` = the
        entry's id; still ``k`` hits at most. An entry is a statement the model kept from those
        messages: it answers the question at least as well as the hits past the first few."""
        entries = await self.entries_for(chat_id, query)
        keep = min(ENTRY_AFTER, max(1, len(hits) // 2))
        have = {h.message_id for h in hits[:keep]} | set(exclude_ids)
        wanted: dict[int, int] = {}
        for e in entries:
            for mid in e.sources:
                if mid not in have and mid not in wanted:
                    wanted[mid] = e.id
        if not wanted:
            return hits
        found = await self.store.messages.get(chat_id, list(wanted))
        top = hits[0].score if hits else 1.0
        extra = [MemoryHit(m.chat_id, m.message_id, m.user_id, m.user_name, m.text, m.date, top,
                           parts={"entry": float(wanted[m.message_id])}, stages=(f"source of memory entry #{wanted[m.message_id]}",))
                 for m in found if m.text.strip()]
        moved = {h.message_id for h in extra}
        return (hits[:keep] + extra + [h for h in hits[keep:] if h.message_id not in moved])[:k]

    async def forget(self, chat_id: int, *, user_id: int | None = None) -> int:
        """Erase ``user_id``'s messages in ``chat_id`` (all of the chat's with no user) from both
        stores, with the documents they carried, and the memory entries about them (about the chat
        and its members, with no user); they are never recalled again. Returns how many messages
        were deleted.

        Queued writes and embeddings are flushed first, so nothing in flight comes back afterwards.
        """
        await self.flush()
        ids = await self.store.messages.delete(chat_id, user_id=user_id)
        self._evicted.pop(chat_id, None)  # the deleted messages' evictions went with them
        if self.facts is not None:  # what was learned about them (or the chat) goes too
            await (self.facts.forget_chat(chat_id) if user_id is None else self.facts.forget_user(chat_id, user_id))
        if user_id is None:
            await self.vectors.delete(chat_id)
        elif ids:
            await self.vectors.delete(chat_id, message_ids=ids)
        return len(ids)

    async def edit(self, chat_id: int, message_id: int, text: str) -> StoredMessage | None:
        """A member edited a message: the stored text and its memory (re-embedded) follow. Returns the
        updated message, or None when it was never stored."""
        msg = await self.store.messages.update_text(chat_id, message_id, text)
        if msg is not None:
            if msg.role == ROLE_USER and msg.text.strip():
                self.indexer.submit((msg,))  # the same id: the row is replaced
            else:
                await self.vectors.delete(chat_id, message_ids=[message_id])
        return msg

    async def forget_messages(self, chat_id: int, message_ids: Collection[int]) -> int:
        """Messages deleted in the chat leave both stores (with the documents they carried)."""
        await self.flush()
        ids = await self.store.messages.delete(chat_id, message_ids=list(message_ids))
        self._evicted.pop(chat_id, None)
        if ids:
            await self.vectors.delete(chat_id, message_ids=ids)
        return len(ids)

    async def migrate_chat(self, old: int, new: int, *, title: str | None = None) -> int:
        """Basic group ``old`` became supergroup ``new``: its history, memories (vectors kept),
        documents, settings, subscription and keys move to ``new`` (``DialogueStore.migrate_chat``,
        ``VectorMemory.move_chat``). Returns the messages moved."""
        await self.flush()
        moved = await self.store.migrate_chat(old, new, title=title)
        await self.vectors.move_chat(old, new, MIGRATION_SHIFT)
        if self.facts is not None:
            await self.facts.move_chat(old, new)
        return moved

    async def flush(self) -> None:
        """Wait until everything remembered so far is committed and searchable."""
        await self.store.flush()
        await self.indexer.flush()


async def _language_of(text: str) -> str | None:
    """``providers.language.detect_or_none``, off the event loop when it would first load a model."""
    if would_load(text):
        return await anyio.to_thread.run_sync(detect_or_none, text)
    return detect_or_none(text)
