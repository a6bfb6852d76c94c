"""Keeping memory healthy: rebuild LanceDB from DuckDB (``kith memory reindex``) and compact it.

LanceDB is derived data: every memory is an embedded user message, or a chunk of a document, of the
dialogue store, so the vector table can always be rebuilt from DuckDB with the same embedding model.
"""
from __future__ import annotations

from collections.abc import Callable

from .service import Memory
from .types import ROLE_USER


async def reindex(memory: Memory, *, chat_id: int | None = None, on_progress: Callable[[int], None] = lambda n: None) -> int:
    """Drop the vector memories of ``chat_id`` (every chat when None) and re-embed them from DuckDB.

    Returns the number of memories written. ``on_progress(n)`` after each batch of n messages read.
    """
    await memory.flush()
    chats = [chat_id] if chat_id is not None else [c.chat_id for c in await memory.store.chats()]
    written = 0
    for cid in chats:
        await memory.vectors.delete(cid)
        async for batch in memory.store.iter_messages(cid):
            todo = [m for m in batch if m.role == ROLE_USER and m.text.strip()]
            memory.indexer.submit(todo)
            written += len(todo)
            await memory.indexer.flush()
            on_progress(len(batch))
        async for chunks in memory.store.iter_document_chunks(cid):
            memory.indexer.submit(chunks)
            written += len(chunks)
            await memory.indexer.flush()
    await memory.vectors.optimize()
    return written


async def compact(memory: Memory) -> None:
    """Compact LanceDB's fragments and fold new rows into its indexes (``optimize()``)."""
    await memory.flush()
    await memory.vectors.optimize()
