"""Scale-out (``scale_out.engine: ray``): the indexer's embedding on Ray workers, with PostgreSQL as
the dialogue store — the same vectors as in the bot, and a worker killed with ``kill -9`` mid-run
loses nothing, duplicates nothing and keeps each chat's order (``benchmarks/scale_out.py`` checks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.scale_out import _config, check_vectors, load_messages, pipeline
from providers.ray_embedder import RayEmbedder

pytest.importorskip("ray")


@pytest.mark.anyio
async def test_ray_workers_embed_like_the_bot_in_order(embedder) -> None:
    texts = [m.text for m in load_messages(1, 200)]
    async with RayEmbedder(2, chunk=16) as remote:
        assert (remote.dim, remote.model_name) == (embedder.dim, embedder.model_name)
        got = await remote.embed(texts)
        assert remote.calls == 13  # 200 texts in calls of 16 spread over both workers
        assert len(set(await remote.worker_pids())) == 2
    want = await embedder.embed(texts)
    assert got.shape == want.shape == (200, embedder.dim)
    assert float((got * want).sum(axis=1).min()) > 0.99  # same model, same vectors (bf16 rounding aside)


@pytest.mark.anyio
async def test_two_workers_with_postgresql_lose_nothing_when_one_is_killed(pg_url: str, tmp_path: Path) -> None:
    msgs = load_messages(2, 400)
    result = await pipeline(_config(pg_url, "ray", 2), tmp_path / "data", msgs, kill_at=len(msgs) // 3)
    assert result["killed"] is not None and result["killed"] not in result["pids_after"]  # restarted
    assert result["failed"] == 0
    check = check_vectors(result["location"], msgs)
    assert (check["lost"], check["duplicated"], check["order_violations"]) == (0, 0, 0)
    assert check["rows"] == sum(1 for m in msgs if m.text.strip())
    assert np.isfinite(result["indexed_s"])
