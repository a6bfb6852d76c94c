"""``kith import``: a transcript or Telegram Desktop export into both stores, without replies.

Messages are stored in DuckDB (idempotent on chat_id, message_id) and embedded into LanceDB in
large batches; messages whose memory already exists are not embedded again, so importing the same
file twice costs little and stores each message once. A malformed line is reported and skipped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TranscriptLineError
from .service import Memory
from .transcripts import read_transcript
from .types import ROLE_USER, StoredMessage

CHUNK = 512


@dataclass
class ImportReport:
    """Counts of one import. ``errors`` keep each bad line's number and reason."""

    read: int = 0
    embedded: int = 0
    already_known: int = 0
    chats: set[int] = field(default_factory=set)
    errors: list[TranscriptLineError] = field(default_factory=list)


async def import_transcript(
    memory: Memory,
    path: Path,
    *,
    on_progress: Callable[[int], None] = lambda n: None,
    on_error: Callable[[TranscriptLineError], None] = lambda e: None,
) -> ImportReport:
    """Import ``path`` into ``memory``; ``on_progress(n)`` after each chunk of n messages.

    raises memory.errors.TranscriptError when the file as a whole cannot be read.
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
        memory.store.add_many(chunk)
        to_embed = [m for m in fresh if m.role == ROLE_USER and m.text.strip()]
        memory.indexer.submit(to_embed)
        for m in fresh:
            known[m.chat_id].add(m.message_id)
        report.embedded += len(to_embed)
        on_progress(len(chunk))
        chunk.clear()

    reader = read_transcript(path)
    for item in reader:
        if isinstance(item, TranscriptLineError):
            report.errors.append(item)
            on_error(item)
            continue
        report.read += 1
        report.chats.add(item.chat_id)
        chunk.append(item)
        if len(chunk) >= CHUNK:
            await flush_chunk()
    await flush_chunk()
    await memory.flush()
    return report
