"""Keeping memory healthy: fill the gap between the stores, rebuild LanceDB from DuckDB
(``kith memory reindex``) and compact it.

LanceDB is derived data: every memory is an embedded user message, or a chunk of a document, of the
dialogue store, so the vector table can always be rebuilt from DuckDB with the same embedding model.
What DuckDB holds and LanceDB should hold is ``store.index.memory_ids`` (``memory.index_bookkeeping``:
minus what the capacity cleanup evicted on purpose); a crash, a full disk or a dropped indexer batch can leave stored
messages unembedded, or a deleted message's memory behind. ``find_gaps`` compares the two and
``fill_gaps`` repairs them; the bot, ``kith chat``, ``kith import`` and ``kith replay`` run it in the
background at every start (``GapFiller``), so nothing stored stays unrecallable.

The dialogue store repairs itself before this runs: rows an earlier run accepted and could not
commit (a full disk, a ``kill -9``) are kept in its reserve and stored when it opens
(``memory.reserve.Journal``). So a ``deliveries`` row whose reply was sent but not committed
gets its reply, with the reply's usage and recalls, at the next start; the messages recovered that
way are embedded here like any other gap. A reply that was never complete (the process died
while it was generated) has nothing to store: its message stays answered at most once.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from .errors import DiskFull, EmbeddingModelChanged
from .indexer import Indexer
from .service import Memory
from .store import DialogueStore
from .types import ROLE_USER, is_chunk_id
from .vectors import VectorMemory

__all__ = ["GapFiller", "Gaps", "Stores", "VectorIds", "compact", "fill_gaps", "find_gaps", "reindex"]

log = logging.getLogger(__name__)

_FILL_BATCH = 1000  # messages read, submitted and flushed at a time (bounds memory on a large gap)


@dataclass(frozen=True, slots=True)
class Gaps:
    """Per chat: ``missing`` ids DuckDB holds and vector memory lacks; ``orphans`` ids vector memory
    holds whose message (or document) is no longer stored, or was evicted."""

    missing: dict[int, set[int]] = field(default_factory=dict)
    orphans: dict[int, set[int]] = field(default_factory=dict)

    @property
    def n_missing(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def n_orphans(self) -> int:
        return sum(len(v) for v in self.orphans.values())


class VectorIds(Protocol):
    """What ``find_gaps`` reads of vector memory (``VectorMemory``, or the read-only ``VectorCounts``)."""

    async def ids_by_chat(self) -> dict[int, set[int]]: ...


class Stores(Protocol):
    """The two stores (a ``Memory``, or ``actors.stores.open_stores``'s read-only pair)."""

    @property
    def store(self) -> DialogueStore: ...

    @property
    def vectors(self) -> VectorIds: ...


async def find_gaps(memory: Stores, before: dict[int, set[int]] | None = None) -> Gaps:
    """Compare vector memory with the dialogue store; safe while messages keep arriving.

    before: ``memory_ids()`` read before intake started (``GapFiller`` reads it on entry); missing
    is taken from it, so messages that arrive meanwhile (embedded by their own path) are not
    embedded twice. Orphans are vector rows missing from a second read of the store made *after*
    vector memory was read (a message is queued for the store before it is queued for embedding,
    and the read commits the queue), so a new message's row is never taken for an orphan."""
    have = await memory.vectors.ids_by_chat()
    want = await memory.store.index.memory_ids()
    base = want if before is None else before
    missing = {c: ids - have.get(c, set()) for c, ids in base.items()}
    orphans = {c: ids - want.get(c, set()) for c, ids in have.items()}
    return Gaps({c: v for c, v in missing.items() if v}, {c: v for c, v in orphans.items() if v})


async def fill_gaps(memory: Memory, gaps: Gaps | None = None, *, on_progress: Callable[[int], None] = lambda n: None) -> Gaps:
    """Delete the orphans from vector memory and embed the missing messages and chunks (through the
    Memory's indexer, ``_FILL_BATCH`` at a time, each batch flushed). Returns the gaps it found.
    ``on_progress(n)`` after each batch of n ids handled."""
    gaps = gaps or await find_gaps(memory)
    for chat_id, ids in gaps.orphans.items():
        await memory.vectors.delete(chat_id, message_ids=sorted(ids))
    for chat_id, ids in gaps.missing.items():
        messages = sorted(i for i in ids if not is_chunk_id(i))
        for i in range(0, len(messages), _FILL_BATCH):
            part = messages[i : i + _FILL_BATCH]
            found = await memory.store.messages.get(chat_id, part)
            memory.indexer.submit(m for m in found if m.role == ROLE_USER and m.text.strip())
            await memory.indexer.flush()
            on_progress(len(part))
        chunk_ids = ids.difference(messages)
        if chunk_ids:
            async for chunks in memory.store.documents.iter_chunks(chat_id):
                memory.indexer.submit(c for c in chunks if c.memory_id in chunk_ids)
                await memory.indexer.flush()
            on_progress(len(chunk_ids))
    return gaps


class GapFiller:
    """Runs ``fill_gaps`` once in the background of an open Memory; use as ``async with``.

    Leaving the block cancels a fill still running (what was submitted is embedded by the indexer's
    drain; the rest is found again at the next start: the gap itself is the durable record).
    ``wait()`` returns once the fill finished (import and replay wait before they exit).
    ``gaps`` holds what was found (None until the comparison is done).
    """

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.gaps: Gaps | None = None
        self._done = anyio.Event()
        self._before: dict[int, set[int]] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> GapFiller:
        self._before = await self.memory.store.index.memory_ids()  # before any intake (see find_gaps)
        async with AsyncExitStack() as stack:  # the fill's task group, owned by this object until __aexit__
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._run, name="memory-gap-fill")
            self._owner = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._owner.aclose()

    async def wait(self) -> None:
        """Wait until the fill is done (or failed: it is logged, and retried at the next start)."""
        await self._done.wait()

    async def _run(self) -> None:
        try:
            gaps = await find_gaps(self.memory, self._before)
            self._before = {}
            self.gaps = gaps
            if gaps.n_missing or gaps.n_orphans:
                log.warning("memory: %d stored messages were not in vector memory (embedding them now), "
                            "%d memories of deleted messages removed", gaps.n_missing, gaps.n_orphans)
                await fill_gaps(self.memory, gaps)
                log.info("memory: gap filled")
        except DiskFull as exc:  # said once where intake stops; a traceback here only buries that line
            log.warning("memory: checking vector memory against the dialogue store waits for disk space: %s", exc)
        except Exception:
            log.exception("memory: checking vector memory against the dialogue store failed")
        finally:
            self._done.set()


async def reindex(memory: Memory, *, chat_id: int | None = None, on_progress: Callable[[int], None] = lambda n: None) -> int:
    """Re-embed vector memory from DuckDB; returns the number of memories written.

    Every chat (``chat_id`` None): a new table is built *beside* the current one, then switched in
    (``VectorMemory.switch_to``), so an interruption leaves the old memories searchable and the
    half-built table is dropped at the next open; what a running bot remembered during the build is
    embedded into the new table after the switch (``fill_gaps``). One chat: its memories are re-embedded in place
    (an upsert by id), then rows no longer backed by a stored message are deleted. Memories the
    capacity cleanup evicted stay out. ``on_progress(n)`` after each batch of n messages read.
    The new table holds the vectors of the Memory's embedding model, whatever the old one held (a
    change of ``memory.embedding_model``, of dimension too); one chat cannot change models
    (raises EmbeddingModelChanged).
    """
    old = memory.vectors
    held, model = (old.embedding_model, old.dim), (memory.embedder.model_name, memory.embedder.dim)
    if chat_id is not None and held != model:  # one chat in another model's vectors would be unsearchable
        raise EmbeddingModelChanged(old.location, held, model)
    await memory.flush()
    chats = [chat_id] if chat_id is not None else [c.chat_id for c in await memory.store.settings.chats()]
    if chat_id is not None:
        written = await _embed_chats(memory, memory.indexer, chats, on_progress)
        # vector rows first, then the store after a flush: a message a running bot remembers meanwhile
        # is queued for the store before its embedding, so its row is never taken for a stale one
        have = await memory.vectors.message_ids(chat_id)
        await memory.store.flush()
        wanted = (await memory.store.index.memory_ids(chat_id)).get(chat_id, set())
        stale = have - wanted
        await memory.vectors.delete(chat_id, message_ids=sorted(stale))
        await memory.vectors.optimize()
        return written
    name = f"memories_{time.time_ns()}"
    async with VectorMemory(old.location, dim=model[1], embedding_model=model[0], table=name,
                            vector_index_min_rows=old.vector_index_min_rows) as target:
        async with Indexer(target, memory.indexer.embedder, optimize_every=0) as indexer:
            written = await _embed_chats(memory, indexer, chats, on_progress)
        await target.optimize()
    await old.switch_to(name)
    # in a running bot, messages that arrived during the build went to the old table: embed them again
    await memory.indexer.flush()
    await fill_gaps(memory)
    return written


async def _embed_chats(memory: Memory, indexer: Indexer, chats: list[int], on_progress: Callable[[int], None]) -> int:
    written = 0
    for cid in chats:
        evicted = await memory.store.index.evicted_ids(cid)
        async for batch in memory.store.messages.iter(cid):
            todo = [m for m in batch if m.role == ROLE_USER and m.text.strip() and m.message_id not in evicted]
            indexer.submit(todo)
            written += len(todo)
            await indexer.flush()
            on_progress(len(batch))
        async for chunks in memory.store.documents.iter_chunks(cid):
            parts = [c for c in chunks if c.message_id not in evicted]
            indexer.submit(parts)
            written += len(parts)
            await indexer.flush()
    return written


async def compact(memory: Memory) -> None:
    """Compact LanceDB's fragments and fold new rows into its indexes (``optimize()``)."""
    await memory.flush()
    await memory.vectors.optimize()
