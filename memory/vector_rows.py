"""The layout of vector memory's LanceDB table and the rows it holds — no connection here.

One table at ``<data_dir>/memory/`` (``memories``, or the table the ``CURRENT`` file there names after
a ``kith memory reindex`` built a new one beside it), one row per remembered item::

    id          string     "{chat_id}:{kind}:{message_id}"  (the upsert key)
    chat_id     int64      BTree index; every search is pre-filtered to exactly one chat
    message_id  int64
    user_id     int64
    user_name   string
    kind        string     "message" (later "document")
    text        string     the original text
    content     string     "{user_name} {d Month yyyy}: {text}" — the text the full-text search covers
                           (sender and day are searchable: "what did Caroline say in May 2023"); its
                           words, reduced per language, are ``terms``, which the FTS index reads
                           Rows written before this format hold "{user_name}: {text}": they are
                           still found; ``kith memory reindex`` rewrites them (the schema is unchanged)
    terms       string     ``content``'s words as the full-text index reads them: lower-cased and
                           stemmed in the text's language (``providers.language``: Russian, Ukrainian,
                           English, German, Spanish, French, Arabic; Chinese and Japanese cut into
                           characters and bigrams), space-separated. Tables made before it existed
                           search ``content`` as before (English stemming only) until
                           ``kith memory reindex`` rebuilds them with it (said once at open); rows
                           written before a change of the reduction keep their terms until then
    date        timestamp[us, UTC]
    vector      fixed_size_list<float32>[384]   L2-normalised, cosine distance
    source      string     documents: the file name (null for messages)
    page        int32      documents: the 1-based PDF page the chunk starts on
    parent      int64      documents: the id of the file message; deleting it deletes the chunks

A document chunk's ``message_id`` is its own id (``memory.types.chunk_memory_id``: far above any
message id, consecutive within a document) and its ``content`` is prefixed with the file name and
page. Tables written before the document columns existed get them (all null) when opened.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .location import Location, as_location
from .types import MemoryHit

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DOCUMENT_FIELDS",
    "KIND_DOCUMENT",
    "KIND_MESSAGE",
    "MAX_QUERY_CHARS",
    "MAX_QUERY_TERMS",
    "MODEL_KEY",
    "MODES",
    "RESULT_COLUMNS",
    "RRF_K",
    "TABLE",
    "MemoryRow",
    "Row",
    "chat_filter",
    "content_text",
    "current_table",
    "fts_terms",
    "hit_of",
    "ids_per_chat",
    "made_with",
    "row_id",
    "schema",
    "to_rows",
    "utc",
    "write_current",
]

TABLE = "memories"
KIND_MESSAGE = "message"
KIND_DOCUMENT = "document"

MODES = ("hybrid", "vector", "fts")
RRF_K = 60  # reciprocal-rank-fusion constant: score = sum over legs of 1 / (RRF_K + rank)
MAX_QUERY_CHARS = 4000  # full-text queries read at most this much of the user's text
MAX_QUERY_TERMS = 64  # ... and at most this many distinct terms
_TERM_RE = re.compile(r"\w+", re.UNICODE)

RESULT_COLUMNS = ["chat_id", "message_id", "user_id", "user_name", "kind", "text", "date", "source", "page", "parent"]
DOCUMENT_FIELDS = (("source", pa.string()), ("page", pa.int32()), ("parent", pa.int64()))


DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # what a table without the model in its metadata was made with
MODEL_KEY = b"kith.embedding_model"  # the table schema's metadata: the model that made its vectors


# a LanceDB row as a dict (column -> value); ``vector``: float32[dim] numpy
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class MemoryRow:
    """One row to remember. ``vector``: float32[dim], L2-normalised (from ``Embedder.embed``).

    ``date`` is timezone-aware (converted to UTC; a naive datetime is taken as UTC).
    ``(chat_id, kind, message_id)`` is the key: adding a row with an existing key replaces it.
    """

    chat_id: int
    message_id: int
    user_id: int
    user_name: str
    text: str
    date: datetime
    vector: np.ndarray
    kind: str = KIND_MESSAGE
    source: str | None = None  # documents: file name
    page: int | None = None  # documents: 1-based PDF page
    parent: int | None = None  # documents: the file message's id

    @property
    def id(self) -> str:
        return row_id(self.chat_id, self.kind, self.message_id)


def row_id(chat_id: int, kind: str, message_id: int) -> str:
    """The table's key: ``"{chat_id}:{kind}:{message_id}"``."""
    return f"{int(chat_id)}:{kind}:{int(message_id)}"


_CURRENT = "CURRENT"  # names the current table (written by ``switch_to``); absent: TABLE


def current_table(where: Location | Path | str) -> str:
    """The name of the current memories table of the LanceDB database at ``where`` (a directory or
    an object-store URI). Blocking."""
    name = (as_location(where).read_text(_CURRENT) or "").strip()
    return name or TABLE


def made_with(have: pa.Schema) -> tuple[str, int]:
    """(model name, vector width) of a table's schema; a table made before models were recorded
    holds all-MiniLM-L6-v2's vectors."""
    model = (have.metadata or {}).get(MODEL_KEY)
    return (model.decode() if model else DEFAULT_EMBEDDING_MODEL), int(have.field("vector").type.list_size)


def ids_per_chat(tbl: pa.Table) -> dict[int, set[int]]:
    """``{chat_id: {message_id, …}}`` of a table with int64 columns ``chat_id`` and ``message_id``."""
    out: dict[int, set[int]] = {}
    for chat_id, mid in zip(tbl.column("chat_id").to_pylist(), tbl.column("message_id").to_pylist(), strict=True):
        out.setdefault(chat_id, set()).add(mid)
    return out


def write_current(where: Location | Path | str, table: str) -> None:
    as_location(where).write_text(_CURRENT, table + "\n")


def schema(dim: int = 384, *, terms: bool = True) -> pa.Schema:
    """The Arrow schema of the ``memories`` table; ``terms=False``: the format before language-aware
    full text (no ``terms`` column)."""
    full = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("chat_id", pa.int64(), nullable=False),
            pa.field("message_id", pa.int64(), nullable=False),
            pa.field("user_id", pa.int64()),
            pa.field("user_name", pa.string()),
            pa.field("kind", pa.string()),
            pa.field("text", pa.string()),
            pa.field("content", pa.string()),
            pa.field("terms", pa.string()),
            pa.field("date", pa.timestamp("us", tz="UTC")),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            *(pa.field(name, typ) for name, typ in DOCUMENT_FIELDS),
        ]
    )
    return full if terms else pa.schema([f for f in full if f.name != "terms"])


def fts_terms(text: str) -> list[str]:
    """Reduce any user text to at most ``MAX_QUERY_TERMS`` distinct lower-cased word terms.

    Punctuation, quotes, operators and emoji are dropped (``\\w+`` runs are kept, in any script), so
    the result can never be a query-syntax error. Returns ``[]`` when nothing searchable is left.
    """
    seen: dict[str, None] = {}
    for m in _TERM_RE.finditer(text[:MAX_QUERY_CHARS] if text else ""):
        term = m.group(0).lower().strip("_")
        if term and term not in seen:
            seen[term] = None
            if len(seen) >= MAX_QUERY_TERMS:
                break
    return list(seen)


_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


def content_text(user_name: str, text: str, date: datetime | None, source: str | None = None, page: int | None = None) -> str:
    """What the full-text index reads for a row: ``"Caroline 8 May 2023: text"`` (sender, UTC day,
    text). The sender and the date make "what did X say about Y" and "in May" searchable; the date
    also evens out BM25's length normalisation, which otherwise favours one-word messages. A
    document chunk also names its file and page: ``"Anna 8 May 2023 report.pdf p. 3: text"``."""
    where = f" {source}" + (f" p. {page}" if page else "") if source else ""
    if date is None:
        return f"{user_name or ''}{where}: {text}"
    d = utc(date)
    return f"{user_name or ''} {d.day} {_MONTHS[d.month - 1]} {d.year}{where}: {text}"


def utc(d: datetime) -> datetime:
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def chat_filter(chat_id: int, exclude_ids: Collection[int] = ()) -> str:
    where = f"chat_id = {int(chat_id)}"
    if exclude_ids:
        where += " AND message_id NOT IN (" + ", ".join(str(int(i)) for i in sorted(set(exclude_ids))) + ")"
    return where


def to_rows(tbl: pa.Table) -> list[Row]:
    """Arrow rows as dicts; a ``vector`` column becomes one float32 numpy row each (not a list of
    Python floats: ~10x cheaper for a few hundred rows)."""
    if "vector" not in tbl.column_names:
        plain: list[Row] = tbl.to_pylist()
        return plain
    col = tbl.column("vector").combine_chunks()
    vecs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1) if len(col) else np.zeros((0, 0), np.float32)
    rows: list[Row] = tbl.drop_columns(["vector"]).to_pylist()
    for r, v in zip(rows, vecs):
        r["vector"] = v
    return rows


def hit_of(r: Row, score: float, parts: dict[str, float], *, vector_rank: int | None = None, fts_rank: int | None = None,
           stages: tuple[str, ...] = ()) -> MemoryHit:
    d = r["date"]
    return MemoryHit(
        chat_id=int(r["chat_id"]),
        message_id=int(r["message_id"]),
        user_id=int(r["user_id"]) if r["user_id"] is not None else 0,
        user_name=r["user_name"] or "",
        text=r["text"] or "",
        date=d.replace(tzinfo=UTC) if d is not None else datetime.fromtimestamp(0, UTC),
        score=float(score),
        kind=r["kind"] or KIND_MESSAGE,
        parts=parts,
        source=r.get("source"),
        page=r.get("page"),
        parent=r.get("parent"),
        vector_rank=vector_rank,
        fts_rank=fts_rank,
        stages=stages,
    )
