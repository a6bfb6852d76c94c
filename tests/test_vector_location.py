"""Vector memory at a URI (``memory.uri``): a local path, or object storage over S3 — here a real
S3-compatible server on 127.0.0.1 (moto's), spoken to by LanceDB, Lance and pyarrow themselves."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from actors.stores import vector_location
from config.loader import load_config
from config.models import Config, Settings
from memory.location import Location
from memory.vector_counts import VectorCounts
from memory.vector_rows import MemoryRow, current_table
from memory.vectors import VectorMemory

T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A local S3 server with bucket ``kith``; yields the storage options that reach it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    opts = {"aws_endpoint": endpoint, "aws_region": "us-east-1", "allow_http": "true",
            "aws_access_key_id": "test", "aws_secret_access_key": "test",
            "aws_virtual_hosted_style_request": "false"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="kith")
    try:
        yield opts
    finally:
        server.stop()


def rows(chat_id: int, ids: range, dim: int = 384) -> list[MemoryRow]:
    rng = np.random.default_rng(chat_id & 0xFFFF)
    out = []
    for i in ids:
        v = rng.standard_normal(dim).astype(np.float32)
        out.append(MemoryRow(chat_id, i, 1, "ann", f"the printer on floor {i} is jammed", T0, v / np.linalg.norm(v)))
    return out


@pytest.mark.anyio
async def test_vector_memory_lives_in_object_storage(s3: dict[str, str]) -> None:
    where = Location("s3://kith/bot1/memory", s3)
    assert not where.is_local and current_table(where) == "memories"
    async with VectorMemory(where) as vm:
        mine = rows(-100, range(50))
        await vm.add(mine + rows(-200, range(10)))
        assert await vm.count(-100) == 50
        hits = await vm.search(-100, "printer", mine[7].vector, k=3, mode="vector")
        assert hits and hits[0].message_id == 7 and all(h.chat_id == -100 for h in hits)
        await vm.delete(-200, message_ids=[0, 1])
    async with VectorMemory(where) as vm:  # reopened from the bucket: everything is there
        assert (await vm.count(-100), await vm.count(-200)) == (50, 8)
    async with VectorCounts(where) as counts:  # the fast read-only view reads the bucket too
        assert await counts.count() == 58
        assert {c: len(ids) for c, ids in (await counts.ids_by_chat()).items()} == {-100: 50, -200: 8}
    async with VectorCounts(Location("s3://kith/nothing-here", s3)) as counts:
        assert await counts.count() == 0


@pytest.mark.anyio
async def test_a_reindex_switch_points_current_at_the_new_table_in_the_bucket(s3: dict[str, str]) -> None:
    where = Location("s3://kith/bot2/memory", s3)
    async with VectorMemory(where) as vm:
        await vm.add(rows(-1, range(5)))
    async with VectorMemory(where, table="memories_v2") as fresh:
        await fresh.add(rows(-1, range(3)))
        await fresh.switch_to("memories_v2")
    assert current_table(where) == "memories_v2"
    assert where.read_text("CURRENT") == "memories_v2\n"
    async with VectorMemory(where) as vm:
        assert vm.table == "memories_v2" and await vm.count(-1) == 3


def test_memory_uri_config(tmp_path: Path) -> None:
    base = load_config()

    def cfg(memory: dict) -> Config:
        settings = Settings.model_validate({"memory": memory})
        return Config(settings=settings, tiers=base.tiers)

    assert vector_location(base, tmp_path).path == tmp_path / "memory"
    assert vector_location(cfg({"uri": "vectors"}), tmp_path).path == tmp_path / "vectors"
    loc = vector_location(cfg({"uri": "s3://b/p/", "storage_options": {"aws_region": "eu-west-1"}}), tmp_path)
    assert (loc.uri, loc.storage_options, loc.is_local) == ("s3://b/p", {"aws_region": "eu-west-1"}, False)
    assert loc.child("memories.lance") == "s3://b/p/memories.lance"
    with pytest.raises(ValueError, match="memory.uri|s3://"):
        Settings.model_validate({"memory": {"uri": "ftp://host/x"}})
