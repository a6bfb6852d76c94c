"""Where a data dir keeps its stores, and the lightest way to open them: the dialogue store plus a
read-only view of vector memory's counts (``open_stores``, for ``kith memory stats``). This module
imports neither lancedb nor the embedding stack, so a command that only counts starts fast;
``actors.runtime`` opens everything else.
"""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from config.models import Config
from memory.errors import StoreLocked
from memory.location import Location
from memory.store import DUCKDB_FILE, DialogueStore, open_dialogue_store
from memory.vector_counts import VectorCounts

if TYPE_CHECKING:
    from memory.vectors import VectorMemory

__all__ = [
    "CACHE_DIR",
    "DB_FILE",
    "VECTORS_DIR",
    "Stores",
    "check_not_in_use",
    "dialogue_store",
    "open_stores",
    "vector_location",
]

DB_FILE = DUCKDB_FILE
VECTORS_DIR = "memory"
CACHE_DIR = "cache"  # derived, rebuildable files (the OpenVINO conversion of the embedding model)


@dataclass(frozen=True)
class Stores:
    """The dialogue store and vector memory: ``open_stores`` gives the read-only ``VectorCounts``; a
    running bot's operations pass its ``VectorMemory``."""

    store: DialogueStore
    vectors: VectorCounts | VectorMemory


def dialogue_store(config: Config, data_dir: Path) -> DialogueStore:
    """The configured dialogue store (``storage.dialogue``) of ``data_dir``, not yet entered."""
    mem = config.settings.memory
    return open_dialogue_store(data_dir, dialogue=config.settings.storage.dialogue,
                               flush_interval_s=mem.flush_interval_ms / 1000, flush_rows=mem.flush_rows)


def vector_location(config: Config, data_dir: Path) -> Location:
    """Where vector memory lives: ``memory.uri`` (an object store, or a path relative to the data
    dir), else ``<data_dir>/memory``."""
    mem = config.settings.memory
    where: str | Path = data_dir / VECTORS_DIR
    if mem.uri is not None:
        where = mem.uri if "://" in mem.uri else Path(data_dir) / Path(mem.uri).expanduser()
    return Location(where, mem.storage_options)


@asynccontextmanager
async def open_stores(config: Config, data_dir: Path) -> AsyncIterator[Stores]:
    """Open the dialogue store and vector memory's counts (no lancedb, embedding model, indexer or
    document reader): what commands that read counts need (``kith memory stats``), in a fraction of
    ``open_memory``'s start-up. raises memory.errors.StoreLocked when a running bot holds the database."""
    async with dialogue_store(config, data_dir) as store, VectorCounts(vector_location(config, data_dir)) as vectors:
        yield Stores(store, vectors)


def check_not_in_use(config: Config, data_dir: Path) -> None:
    """Fail fast when another process holds the data dir's DuckDB file (a running bot, another
    ``kith import``): a command that opens the whole pipeline (``kith chat``, ``kith replay``, ``kith
    demo``) says so before loading the embedding model and the LLM stack, not seconds later.
    A PostgreSQL store (shared by design) and a data dir without a database pass.
    raises memory.errors.StoreLocked naming the holder's pid when DuckDB reports it."""
    path = data_dir / DB_FILE
    if config.settings.storage.dialogue != "duckdb" or not path.exists():
        return
    import duckdb  # deferred: duckdb (~50 ms); `kith chat` on a PostgreSQL store or an empty data dir does not load it

    try:
        duckdb.connect(str(path)).close()
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            return  # not ours to judge here: the real open reports it
        pid = re.search(r"PID (\d+)", str(exc))
        holder = f"process {pid.group(1)}" if pid else "another process"
        raise StoreLocked(f"{data_dir} is in use by {holder} (a running `kith run`, or another kith command on it): "
                          "stop it and retry; `kith memory`, `kith import`, `kith sub` and `kith usage` go through a "
                          "running bot") from None
