"""Documents into a chat's memory: extract (``providers.documents``), chunk, keep with provenance.

Used by the chat actor (a file sent to the bot), by ``kith import FILE.pdf`` and by ``kith import
result.json --with-files``. The chunks are kept in DuckDB (``documents``, ``document_chunks``: vector
memory can be rebuilt from them) and embedded into LanceDB as ``kind = "document"`` rows that name
their file and page, so recall cites ``report.pdf, p. 3``.
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import anyio

from providers.documents import chunk, extract
from providers.errors import DocumentError

from .types import DocumentChunk, DocumentInfo

if TYPE_CHECKING:  # types only: providers.documents imports pypdf and docx (slow)
    from providers.documents import Chunk, Extracted


__all__ = ["DocumentReader", "DocumentSink", "document_summary", "ingest_document", "read_document"]

log = logging.getLogger(__name__)


class DocumentSink(Protocol):
    """Where ``ingest_document`` keeps a document (``memory.service.Memory``)."""

    async def remember_document(self, info: DocumentInfo, chunks: list[DocumentChunk]) -> None: ...


def read_document(data: bytes, file_name: str, mime_type: str | None, max_chars: int,
                  max_pages: int) -> tuple[Extracted, list[Chunk]]:
    """Extract and chunk a document: ``(providers.documents.Extracted, [providers.documents.Chunk])``.
    Blocking and CPU-bound pure Python (pypdf): ``DocumentReader`` runs it in a worker *process*, so
    a big PDF does not hold the GIL against every other chat. raises providers.errors.DocumentError."""
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a damaged file is reported once, as DocumentError
    extracted = extract(data, file_name, mime_type, max_pages=max_pages)
    return extracted, chunk(extracted, max_chars=max_chars)


class DocumentReader:
    """Runs ``read_document`` in one worker process (``concurrent.futures.ProcessPoolExecutor``,
    forkserver), started on first use (~0.8 s) and kept until ``aclose``; a few ms per call after.
    A process, not a thread: pypdf is pure Python and would hold the GIL against every other chat.
    When no process can be started here it reads in a worker thread instead. Use as
    ``async with DocumentReader() as reader``; owned by ``actors.runtime.open_memory``.
    """

    def __init__(self, *, processes: bool = True) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None

    async def __aenter__(self) -> DocumentReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: pool.shutdown(wait=True, cancel_futures=True))

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
        return self._pool

    async def read(self, data: bytes, file_name: str, mime_type: str | None, *, max_chars: int,
                   max_pages: int) -> tuple[Extracted, list[Chunk]]:
        """``read_document`` off the event loop. raises providers.errors.DocumentError."""
        args = (data, file_name, mime_type, max_chars, max_pages)
        if self.processes:
            try:
                fut = self._executor().submit(read_document, *args)
                return await anyio.to_thread.run_sync(fut.result, abandon_on_cancel=True)
            except (BrokenProcessPool, OSError, RuntimeError) as exc:
                if isinstance(exc, DocumentError):
                    raise
                log.warning("document reader process unavailable (%s); reading in threads from now on", exc)
                self.processes = False
                await self.aclose()
        return await anyio.to_thread.run_sync(read_document, *args)


async def ingest_document(memory: DocumentSink, *, chat_id: int, message_id: int, user_id: int, user_name: str, date: datetime,
                          file_name: str, mime_type: str | None, data: bytes, max_chars: int = 1200,
                          max_pages: int = 2000) -> DocumentInfo:
    """Read ``data`` (the file sent as message ``message_id`` of chat ``chat_id``) into that chat's
    memory: chunks with provenance committed to DuckDB and queued for embedding (``memory.flush()``
    waits until they are recallable). The file message itself is stored by the caller. raises
    providers.errors.DocumentError (unsupported, encrypted, corrupt, no text layer, too many pages)."""
    reader = getattr(memory, "reader", None)
    if reader is None:
        extracted, chunks = await anyio.to_thread.run_sync(read_document, data, file_name, mime_type, max_chars, max_pages)
    else:
        extracted, chunks = await reader.read(data, file_name, mime_type, max_chars=max_chars, max_pages=max_pages)
    info = DocumentInfo(chat_id, message_id, file_name, mime_type, extracted.kind, len(data), extracted.pages, len(chunks),
                        user_id, user_name, date)
    rows = [DocumentChunk(chat_id, message_id, c.index, c.text, c.page, c.section, file_name, user_id, user_name, date)
            for c in chunks]
    await memory.remember_document(info, rows)
    return info


def document_summary(info: DocumentInfo) -> str:
    """``12 pages, 34 parts`` / ``5 parts``."""
    pages = f"{info.pages} page{'s' if info.pages != 1 else ''}, " if info.pages else ""
    return f"{pages}{info.chunks} part{'s' if info.chunks != 1 else ''}"
