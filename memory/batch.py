"""The rows of a dialogue store's write-behind queue (``memory.write_behind``): what one commit is
handed (``Batch``: messages, usage records, recalls, chat rows, deliveries and per-domain statements,
per kind in enqueue order), and the rows as JSON lines — the reserve's lines (``memory.reserve``)
and the ``<file>.unsaved-<utc>.jsonl`` dumps written at shutdown when the database still fails,
which the next open (or a person) reads back (``save_unsaved``, ``load_unsaved``, ``unsaved_files``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .types import ROLE_USER, StoredMessage, UsageRecord

__all__ = ["Batch", "ChatRow", "DeliveryRow", "RecallRow", "SqlRow", "add_row", "load_unsaved", "row_json", "save_unsaved",
           "unsaved_files"]

log = logging.getLogger(__name__)


RecallRow = tuple[int, int, int, float]  # (chat_id, reply_message_id, memory_message_id, score)
ChatRow = tuple[int, str, "str | None", int]  # (chat_id, type, title, created_at µs since epoch, UTC)
DeliveryRow = tuple[int, int, int]  # (chat_id, message_id replied to, sent_at µs since epoch, UTC)
SqlRow = tuple[str, list[Any]]  # (a per-domain store's statement, "?" placeholders; its JSON-able parameters)


@dataclass(eq=False)
class Batch:
    """Rows handed to one ``commit`` call, per table, in enqueue order. ``upto``: the sequence number
    of the last row enqueued into it (internal bookkeeping of the queue)."""

    messages: list[StoredMessage] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    recalls: list[RecallRow] = field(default_factory=list)
    chats: list[ChatRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)
    sql: list[SqlRow] = field(default_factory=list)
    upto: int = 0

    def __len__(self) -> int:
        return (len(self.messages) + len(self.usage) + len(self.recalls) + len(self.chats) + len(self.deliveries)
                + len(self.sql))

    def clear(self) -> None:
        """Mark every row as written (a commit function calls it when the whole batch is stored)."""
        self.messages, self.usage, self.recalls, self.chats, self.deliveries, self.sql = [], [], [], [], [], []




# ---------------------------------------------------------------- rows as JSON (the reserve and the dump)

def row_json(kind: str, row: Any) -> dict[str, Any]:
    """One queued row as a JSON object with a ``record`` key (``add_row`` reads it back)."""
    if kind == "message":
        return {"record": "message", **_message_json(row)}
    if kind == "usage":
        return {"record": "usage", **_usage_json(row)}
    if kind == "recall":
        return {"record": "recall", "chat_id": row[0], "reply_message_id": row[1], "memory_message_id": row[2],
                "score": row[3]}
    if kind == "chat":
        return {"record": "chat", "chat_id": row[0], "type": row[1], "title": row[2], "created_us": row[3]}
    if kind == "delivery":
        return {"record": "delivery", "chat_id": row[0], "message_id": row[1], "sent_us": row[2]}
    if kind == "sql":
        return {"record": "sql", "sql": row[0], "params": row[1]}
    raise ValueError(f"unknown row kind {kind!r}")


def add_row(batch: Batch, d: dict[str, Any]) -> bool:
    """Append the row ``d`` (``row_json``'s shape; a line without ``record`` is a message of the
    dump's transcript) to ``batch``. False when it is not a row that can be read back."""
    try:
        kind = d.get("record", "message")
        if kind == "message":
            batch.messages.append(StoredMessage(
                int(d["chat_id"]), int(d["message_id"]), int(d["user_id"]), str(d["user"]), str(d["text"]),
                _utc(d["date"]), d.get("role") or ROLE_USER, _opt_int(d.get("reply_to")), _opt_int(d.get("thread_id")),
                bool(d.get("imported", False))))
        elif kind == "usage":
            batch.usage.append(UsageRecord(
                _utc(d["ts"]), int(d["chat_id"]), int(d["user_id"]), str(d["kind"]), str(d["model"]),
                int(d["prompt_tokens"]), int(d["completion_tokens"]),
                None if d.get("cost_usd") is None else float(d["cost_usd"]), float(d["latency_ms"]),
                float(d.get("seconds") or 0), int(d.get("images") or 0), int(d.get("pages") or 0)))
        elif kind == "recall":
            batch.recalls.append((int(d["chat_id"]), int(d["reply_message_id"]), int(d["memory_message_id"]),
                                  float(d["score"])))
        elif kind == "chat":
            created = d.get("created_us")
            if created is None:
                created = int(datetime.now(UTC).timestamp() * 1_000_000)
            batch.chats.append((int(d["chat_id"]), str(d["type"]), d.get("title"), int(created)))
        elif kind == "delivery":
            batch.deliveries.append((int(d["chat_id"]), int(d["message_id"]), int(d["sent_us"])))
        elif kind == "sql":
            if not isinstance(d["sql"], str) or not isinstance(d["params"], list):
                return False
            batch.sql.append((d["sql"], d["params"]))
        else:
            return False
    except (KeyError, TypeError, ValueError):
        return False
    return True


def load_unsaved(paths: Iterable[Path]) -> tuple[Batch, list[str]]:
    """The rows of ``save_unsaved``'s files (``<base>.jsonl`` and ``<base>.other.jsonl``), in one
    batch, and a ``"file:line: why"`` for each line that could not be read. raises OSError."""
    batch, bad = Batch(), []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except ValueError as exc:
                    bad.append(f"{path}:{n}: not JSON ({exc})")
                    continue
                if not isinstance(d, dict) or not add_row(batch, d):
                    bad.append(f"{path}:{n}: not a row of a dump")
    return batch, bad


def unsaved_files(directory: Path, prefix: str) -> Iterator[tuple[str, list[Path]]]:
    """``(base name, [files])`` of every ``save_unsaved`` dump named ``<prefix>.unsaved-…`` in
    ``directory``, oldest first (the name holds its UTC time)."""
    groups: dict[str, list[Path]] = {}
    for p in directory.glob(f"{prefix}.unsaved-*.jsonl"):
        base = p.name.removesuffix(".jsonl").removesuffix(".other")
        groups.setdefault(base, []).append(p)
    for base in sorted(groups):
        yield base, sorted(groups[base], key=lambda p: p.name.endswith(".other.jsonl"))


def _utc(text: Any) -> datetime:
    d = datetime.fromisoformat(str(text))
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


# ---------------------------------------------------------------- rows that could not be written

def save_unsaved(batch: Batch, base: Path) -> None:
    """Write rows a store could not commit at shutdown (and its reserve does not hold) next to it:
    ``<base>.jsonl`` holds the messages as a transcript (docs/design.md §9, importable with ``kith
    import``), ``<base>.other.jsonl`` the chats, usage, recalls and deliveries (one JSON object per line with a
    ``record`` key); both are synced, and the store reads them back in at its next open
    (``load_unsaved``). Logs CRITICAL with where they went; a dump that cannot be written is removed
    (no half-written file that looks like a backup) and the loss is logged CRITICAL."""
    n = len(batch)
    written: list[str] = []
    try:
        if batch.messages:
            written.append(f"{base}.jsonl")
            with open(f"{base}.jsonl", "a", encoding="utf-8") as f:
                for m in batch.messages:
                    f.write(json.dumps(_message_json(m)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        if batch.usage or batch.recalls or batch.chats or batch.deliveries or batch.sql:
            written.append(f"{base}.other.jsonl")
            with open(f"{base}.other.jsonl", "a", encoding="utf-8") as f:
                for kind, rows in (("chat", batch.chats), ("usage", batch.usage), ("recall", batch.recalls),
                                   ("delivery", batch.deliveries), ("sql", batch.sql)):
                    for r in rows:
                        f.write(json.dumps(row_json(kind, r)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        log.critical("dialogue store: %d unsaved rows written to %s.*jsonl (stored at the next start)", n, base)
    except Exception as exc:
        for name in written:
            with contextlib.suppress(OSError):
                os.unlink(name)
        log.critical("dialogue store: %d rows not stored (%d messages), and they cannot be written to %s.*jsonl "
                     "either: %s", n, len(batch.messages), base, exc)


def _iso(d: Any) -> Any:
    return d.isoformat() if isinstance(d, datetime) else repr(d)


def _message_json(m: StoredMessage) -> dict[str, Any]:
    """A message as one transcript JSONL object (docs/design.md §9, plus ``role``)."""
    d = {"chat_id": m.chat_id, "message_id": m.message_id, "date": _iso(m.date), "user": m.user_name,
         "user_id": m.user_id, "text": m.text, "role": m.role}
    if m.reply_to is not None:
        d["reply_to"] = m.reply_to
    if m.thread_id is not None:
        d["thread_id"] = m.thread_id
    if m.imported:
        d["imported"] = True
    return d


def _usage_json(u: UsageRecord) -> dict[str, Any]:
    return {"ts": _iso(u.ts), "chat_id": u.chat_id, "user_id": u.user_id, "kind": u.kind, "model": u.model,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cost_usd": u.cost_usd,
            "latency_ms": u.latency_ms, "seconds": u.seconds, "images": u.images, "pages": u.pages}
