"""``kith import``: a transcript or Telegram Desktop export into both stores, without replies; or a
document (PDF, DOCX, text) into one chat's memory.

Messages are stored in DuckDB (idempotent on chat_id, message_id) and embedded into LanceDB in
large batches; messages whose memory already exists are not embedded again, so importing the same
file twice costs little and stores each message once. What is imported is marked as the host's
(``StoredMessage.imported``): capacity cleanup neither counts it against a tier's limits nor evicts
it. A malformed line is reported and skipped.
With ``with_files``, the documents a Telegram Desktop export includes (its ``files/`` folder) are
read into memory too, each once.
"""
from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import anyio

from providers.documents import document_kind
from providers.errors import DocumentError

from .documents import document_summary, ingest_document
from .errors import TranscriptLineError
from .markers import marker
from .service import Memory
from .transcripts import Attachment, read_transcript
from .types import ROLE_USER, DocumentInfo, StoredMessage

__all__ = ["CHUNK", "ImportReport", "import_document", "import_transcript"]

CHUNK = 512


@dataclass
class ImportReport:
    """Counts of one import. ``errors`` keep each bad line's number and reason."""

    read: int = 0
    embedded: int = 0
    already_known: int = 0
    chats: set[int] = field(default_factory=set)
    errors: list[TranscriptLineError] = field(default_factory=list)
    documents: int = 0  # documents read into memory (with_files)
    document_errors: list[str] = field(default_factory=list)  # "file: why" for documents that could not be read
    stopped: bool = False  # reading was stopped (SIGTERM) before the end of the file


async def import_transcript(
    memory: Memory,
    path: Path,
    *,
    on_progress: Callable[[int], None] = lambda n: None,
    on_error: Callable[[TranscriptLineError], None] = lambda e: None,
    with_files: bool = False,
    max_chars: int = 1200,
    max_pages: int = 2000,
    should_stop: Callable[[], bool] = lambda: False,
) -> ImportReport:
    """Import ``path`` into ``memory``; ``on_progress(n)`` after each chunk of n messages.

    with_files: also read the documents an export includes (PDF, DOCX, text, beside ``path``) into
    their chats' memory, each once; one that cannot be read is listed in ``document_errors``.
    should_stop: checked before each message; once True reading stops and what was read is stored
    and queued for embedding (``memory.flush()`` before returning: nothing read is left behind).
    raises memory.errors.TranscriptError when the file as a whole cannot be read; DiskFull when a
    store ran out of space (what was committed stays; a second import continues from there).
    """
    report = ImportReport()
    known: dict[int, set[int]] = {}
    chunk: list[StoredMessage] = []

    async def flush_chunk() -> None:
        if not chunk:
            return
        for cid in {m.chat_id for m in chunk} - known.keys():
            known[cid] = await memory.vectors.message_ids(cid)
            meta = reader.chats.get(cid)
            await memory.store.upsert_chat(cid, meta.type if meta else ("private" if cid > 0 else "supergroup"), meta.title if meta else None)
        fresh = [m for m in chunk if m.message_id not in known[m.chat_id]]
        report.already_known += len(chunk) - len(fresh)
        memory.check_space()
        memory.store.add_many(chunk)
        to_embed = [m for m in fresh if m.role == ROLE_USER and m.text.strip()]
        memory.indexer.submit(to_embed)
        for m in fresh:
            known[m.chat_id].add(m.message_id)
        report.embedded += len(to_embed)
        on_progress(len(chunk))
        chunk.clear()

    reader = read_transcript(path)
    carriers: dict[tuple[int, int], StoredMessage] = {}
    for item in reader:
        if should_stop():
            report.stopped = True
            break
        if isinstance(item, TranscriptLineError):
            report.errors.append(item)
            on_error(item)
            continue
        report.read += 1
        report.chats.add(item.chat_id)
        item = replace(item, imported=True)  # the host's history: capacity cleanup keeps it whatever the tier
        chunk.append(item)
        if with_files and (item.chat_id, item.message_id) in reader.attachments:
            carriers[(item.chat_id, item.message_id)] = item
        if len(chunk) >= CHUNK:
            await flush_chunk()
    await flush_chunk()
    if with_files and not report.stopped:
        await _import_attachments(memory, path.parent, reader.attachments, carriers, report, max_chars, max_pages)
    await memory.flush()
    memory.check_space()  # what the disk kept out of vector memory is embedded at the next start
    return report


async def _import_attachments(memory: Memory, folder: Path, attachments: dict[tuple[int, int], Attachment],
                              carriers: dict[tuple[int, int], StoredMessage], report: ImportReport, max_chars: int,
                              max_pages: int) -> None:
    known: dict[int, set[int]] = {}
    for key, att in attachments.items():
        msg = carriers.get(key)
        if msg is None or att.kind != "document" or document_kind(att.file_name or att.path, att.mime_type) is None:
            continue
        if msg.chat_id not in known:
            known[msg.chat_id] = {d.message_id for d in await memory.store.documents.list(msg.chat_id)}
        if msg.message_id in known[msg.chat_id]:
            continue
        file = folder / att.path
        name = att.file_name or file.name
        try:
            data = await anyio.Path(file).read_bytes()
            await ingest_document(memory, chat_id=msg.chat_id, message_id=msg.message_id, user_id=msg.user_id,
                                  user_name=msg.user_name, date=msg.date, file_name=name, mime_type=att.mime_type, data=data,
                                  max_chars=max_chars, max_pages=max_pages)
        except OSError as exc:
            report.document_errors.append(f"{att.path}: {exc.strerror or exc}")
            continue
        except DocumentError as exc:
            report.document_errors.append(f"{att.path}: {exc}")
            continue
        report.documents += 1


async def import_document(memory: Memory, path: Path, *, chat_id: int, user_id: int, user_name: str, message_id: int,
                          date: datetime, max_chars: int = 1200, max_pages: int = 2000) -> tuple[DocumentInfo, bool]:
    """Put the document at ``path`` into chat ``chat_id``'s memory, as if ``user_name`` had sent it
    there as message ``message_id`` (stored as ``[file name]``). Idempotent: a document of the same
    name and size already in that chat is kept, not read again — returns ``(info, False)`` then.
    raises OSError (unreadable file), providers.errors.DocumentError."""
    data = await anyio.Path(path).read_bytes()
    for d in await memory.store.documents.list(chat_id):
        if d.file_name == path.name and d.size_bytes == len(data):
            return d, False
    info = await ingest_document(memory, chat_id=chat_id, message_id=message_id, user_id=user_id, user_name=user_name,
                                 date=date, file_name=path.name, mime_type=mimetypes.guess_type(path.name)[0], data=data,
                                 max_chars=max_chars, max_pages=max_pages)
    if not memory.store.knows_chat(chat_id):
        await memory.store.upsert_chat(chat_id, "private" if chat_id > 0 else "supergroup", None)
    text = f"{marker('document', file_name=path.name)} ({document_summary(info)} in memory)"
    memory.remember(StoredMessage(chat_id, message_id, user_id, user_name, text, date, imported=True))
    await memory.flush()
    return info, True
