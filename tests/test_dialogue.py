"""What only the DuckDB store does: one file, one owner process, schema history, dumps of unsaved rows.

The behaviour every store shares is in ``test_store_contract.py``."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import anyio
import duckdb
import pytest

from memory.duckdb_store import DuckDBStore
from memory.errors import MemoryStoreError, StoreLocked
from memory.schema import SCHEMA_VERSION
from memory.transcripts import read_transcript
from memory.types import MemoryHit, UsageRecord
from tests.test_store_contract import CHAT, T0, msg  # the contract suite's data

ROOT = Path(__file__).resolve().parents[1]
IRC = ROOT.parent / "shared" / "data" / "ubuntu-irc"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "kith.duckdb"


@pytest.mark.anyio
async def test_database_failure_keeps_rows_queued_then_dumps_them_at_shutdown(db: Path, monkeypatch) -> None:
    async with DuckDBStore(db) as store:
        real = store._write_sync
        failing = True

        def flaky(batch):
            if failing:
                raise duckdb.IOException("disk full (simulated)")
            return real(batch)

        monkeypatch.setattr(store, "_write_sync", flaky)
        store.add_many(msg(i) for i in range(10))
        with pytest.raises(MemoryStoreError, match="kept queued"):
            await store.flush()
        assert store.pending == 10
        failing = False
        with anyio.fail_after(10):
            await store.flush()  # retried: nothing lost
        assert await store.messages.count() == 10

        failing = True
        store.add_many(msg(i, text="late ✓") for i in range(10, 15))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 1, 2, None, 3.0))
    # what the failing database could not take at shutdown is kept in the store's reserve (not a
    # dump that a full disk may refuse too) and stored at the next open
    async with DuckDBStore(db) as store:
        assert await store.messages.count() == 15
        assert await store.messages.get(CHAT, list(range(10, 15))) == [msg(i, text="late ✓") for i in range(10, 15)]
        assert [u.model for u in await store.usage.rows()] == ["fast"]


@pytest.mark.anyio
async def test_restart_keeps_everything_and_schema_version_is_recorded(db: Path) -> None:
    async with DuckDBStore(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.add_many(msg(i, thread=i % 3) for i in range(1000))
        store.record_usage(UsageRecord(T0, CHAT, 1, "chat", "fast", 5, 6, 0.5, 7.0))
        store.record_recall(CHAT, 999, [MemoryHit(CHAT, 10, 1, "u", "t", T0, 0.3)])
        await store.upsert_chat(CHAT, "supergroup", "T")
        await store.settings.set_user(1, {"a": 1}, username="u1")
        before = await store.stats()
        before_recent = await store.messages.recent(CHAT, 20, thread_id=1)
    async with DuckDBStore(db) as store:
        after = await store.stats()
        for key in ("chats", "users", "messages", "usage", "recalls"):
            assert after[key] == before[key]
        assert after["file_bytes"] > 0 and after["schema_version"] == SCHEMA_VERSION
        assert await store.messages.recent(CHAT, 20, thread_id=1) == before_recent
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    finally:
        con.close()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # applied once, not per open


@pytest.mark.anyio
async def test_newer_schema_is_refused(db: Path) -> None:
    async with DuckDBStore(db):
        pass
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(MemoryStoreError, match="newer"):
        async with DuckDBStore(db):
            pass


@pytest.mark.anyio
async def test_second_process_gets_store_locked(db: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, anyio
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from memory.duckdb_store import DuckDBStore
        from memory.errors import StoreLocked

        async def main():
            try:
                async with DuckDBStore(Path({str(db)!r})):
                    print("OPENED")
            except StoreLocked as exc:
                print("LOCKED:", exc)

        anyio.run(main)
        """
    )
    async with DuckDBStore(db) as store:
        store.add(msg(1))
        await store.flush()
        proc = await anyio.run_process([sys.executable, "-c", script], check=False)
        out = proc.stdout.decode()
        assert proc.returncode == 0, proc.stderr.decode()
        assert out.startswith("LOCKED:"), out
        assert "running Kith bot" in out
        assert await store.messages.count() == 1  # the owner is unaffected
    assert issubclass(StoreLocked, MemoryStoreError)


@pytest.mark.anyio
async def test_second_store_on_the_same_file_in_one_process_is_refused(db: Path) -> None:
    async with DuckDBStore(db):
        with pytest.raises(StoreLocked):
            async with DuckDBStore(db.parent / "." / db.name):
                pass
    async with DuckDBStore(db):  # released on close
        pass


