"""A step two tests share: a data dir embedded with one model, opened with another — refused until
``kith memory reindex`` re-embeds every chat (one chat alone is refused too)."""
from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from actors.runtime import open_memory
from config.models import Config
from memory.errors import EmbeddingModelChanged
from operations.registry import Streams, run_local


async def refused_then_reindexed(cfg: Config, data: Path, match: str, memories: int = 2) -> None:
    """Opening ``data`` with ``cfg``'s model raises EmbeddingModelChanged matching ``match``; reindexing
    chat -7 alone is refused; reindexing everything re-embeds ``memories`` memories."""
    with pytest.raises(EmbeddingModelChanged, match=match):
        async with open_memory(cfg, data):
            pass
    out, err = Console(record=True, width=100), Console(record=True, width=100)
    with pytest.raises(EmbeddingModelChanged):  # one chat cannot change models: the others would be unsearchable
        await run_local("memory.reindex", {"chat": -7}, cfg, data, Streams(out, err))
    assert await run_local("memory.reindex", {}, cfg, data, Streams(out, err)) == 0
    assert f"reindexed {memories} memories" in out.export_text()
