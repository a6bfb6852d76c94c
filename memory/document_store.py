"""Documents read into memory and their chunks: the ``documents`` and ``document_chunks`` tables of
the dialogue store's database (``memory.documents`` reads a file and calls ``add``; the vector index
is rebuilt from ``iter_chunks``).

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``); every write is
committed before it returns. The tables come with the dialogue store's schema (version 3); a
document's rows leave with its message (``delete_messages``) and move with its chat
(``migrate_chat``), both in the dialogue store's own transactions.

``has`` is synchronous (the chat actor asks it on every turn): it is answered from the set of chats
with documents this object holds — loaded by the dialogue store at open (``load``), grown by ``add``,
moved by the dialogue store's ``migrate_chat`` (``chat_moved``). With PostgreSQL shared by several
processes it is this process's view (what it loaded at open and wrote since).
"""
from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Sequence

from .sql_domain import SqlBackend, SqlDomainStore, ts, us
from .sql_domain import no_nul as _clean
from .store_base import keyset_pages
from .types import DocumentChunk, DocumentInfo

__all__ = ["DocumentStore"]

_INFO_COLS = "chat_id, message_id, file_name, mime_type, kind, size_bytes, pages, chunks, user_id, user_name"
# a document's chunks with their provenance; ``{date}``: the document's date read as µs since the epoch
_CHUNKS_SELECT = ("SELECT c.chat_id, c.message_id, c.chunk, c.text, c.page, c.section, d.file_name, d.user_id,"
                  " d.user_name, {date} FROM document_chunks c JOIN documents d USING (chat_id, message_id) WHERE true")


class DocumentStore(SqlDomainStore):
    """The documents read into each chat's memory (``DocumentInfo``) and their chunks (``DocumentChunk``).

    Texts round-trip exactly except U+0000, stored as U+FFFD; dates are tz-aware UTC with microsecond
    precision (a naive one is taken as UTC). raises MemoryStoreError when the database fails."""

    DOMAIN = "documents"

    def __init__(self, backend: SqlBackend) -> None:
        super().__init__(backend)
        self._chats: set[int] = set()  # chats with documents, this process's view (``has``)

    async def load(self) -> None:
        """Read which chats have documents (for ``has``); the dialogue store calls it when it opens."""
        self._chats = {r[0] for r in await self._query("SELECT DISTINCT chat_id FROM documents")}

    def chat_moved(self, old: int, new: int) -> None:
        """Record that chat ``old``'s documents moved to ``new`` (the dialogue store's ``migrate_chat``
        calls it after its transaction committed)."""
        if old in self._chats:
            self._chats.discard(old)
            self._chats.add(new)

    def has(self, chat_id: int) -> bool:
        """Whether documents were ever read into ``chat_id``'s memory (no database round trip; may
        stay True after they were deleted)."""
        return chat_id in self._chats

    async def add(self, info: DocumentInfo, chunks: Sequence[DocumentChunk]) -> None:
        """Store a document read into memory and its chunks, replacing an earlier reading of the same
        ``(chat_id, message_id)``, in one transaction; returns when committed. The file message itself
        is stored with the dialogue store's ``add`` like any message. raises ValueError when a chunk
        belongs to another message."""
        for c in chunks:
            if (c.chat_id, c.message_id) != (info.chat_id, info.message_id):
                raise ValueError(f"chunk {c.index} belongs to {c.chat_id}/{c.message_id}, not {info.chat_id}/{info.message_id}")
        key = [info.chat_id, info.message_id]
        statements: builtins.list[tuple[str, Sequence[object]]] = [
            ("DELETE FROM document_chunks WHERE chat_id = ? AND message_id = ?", key),
            ("DELETE FROM documents WHERE chat_id = ? AND message_id = ?", key),
            (f"INSERT INTO documents ({_INFO_COLS}, date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {{ts}})",
             [info.chat_id, info.message_id, _clean(info.file_name), info.mime_type, info.kind, info.size_bytes,
              info.pages, info.chunks, info.user_id, _clean(info.user_name), us(info.date)]),
        ]
        if chunks:
            # one statement for every chunk: a list per column, unnested in step (the engines zip
            # several unnests of one SELECT list); executemany would be a round of the engine per row
            statements.append((
                "INSERT INTO document_chunks (chat_id, message_id, chunk, page, section, text)"
                " SELECT ?, ?, unnest(CAST(? AS INTEGER[])), unnest(CAST(? AS INTEGER[])),"
                " unnest(CAST(? AS VARCHAR[])), unnest(CAST(? AS VARCHAR[]))",
                [*key, [c.index for c in chunks], [c.page for c in chunks],
                 [_clean(c.section) for c in chunks], [_clean(c.text) for c in chunks]]))
        await self._tx(*statements)
        self._chats.add(info.chat_id)

    async def iter_chunks(self, chat_id: int | None = None, *, batch: int = 2000) -> AsyncIterator[builtins.list[DocumentChunk]]:
        """Every stored document chunk (of one chat, or all) with its provenance, in pages of at most
        ``batch``, ordered by ``(chat_id, message_id, chunk)``; keyset-paginated, so documents added
        or deleted between pages neither repeat nor skip the others."""
        async for rows in keyset_pages(self._query, _CHUNKS_SELECT.format(date=self._us("d.date")),
                                       [("c.chat_id", chat_id)], ("c.chat_id", "c.message_id", "c.chunk"), batch, ph="?"):
            yield [DocumentChunk(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], ts(r[9])) for r in rows]

    async def list(self, chat_id: int | None = None) -> builtins.list[DocumentInfo]:
        """The documents read into memory (of one chat, or all), oldest first (by date, then chat and
        message id)."""
        sql, params = f"SELECT {_INFO_COLS}, {self._us('date')} FROM documents", []
        if chat_id is not None:
            sql, params = sql + " WHERE chat_id = ?", [chat_id]
        rows = await self._query(sql + " ORDER BY date, chat_id, message_id", params)
        return [DocumentInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], ts(r[10])) for r in rows]
