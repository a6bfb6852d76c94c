"""What only the PostgreSQL store does: many processes on one store, concurrent migrations, a server
that goes away and comes back. The behaviour every store shares is in ``test_store_contract.py``."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import yaml
from pydantic import ValidationError

from config.models import Settings
from memory.errors import MemoryStoreError
from memory.postgres_schema import SCHEMA_VERSION
from memory.postgres_store import PostgresStore, redact
from memory.store import open_dialogue_store
from memory.transcripts import read_transcript
from memory.types import StoredMessage

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def msg(i: int, chat: int = -100) -> StoredMessage:
    return StoredMessage(chat, i, 1, "ann", f"message {i}", T0 + timedelta(seconds=i))


@pytest.fixture
def anyio_backend():
    return "asyncio"


WRITER = textwrap.dedent("""
    import sys, anyio
    sys.path.insert(0, sys.argv[1])
    from datetime import UTC, datetime
    from memory.postgres_store import PostgresStore
    from memory.types import StoredMessage

    async def main():
        async with PostgresStore(sys.argv[2]) as store:
            chat = int(sys.argv[3])
            store.add_many(StoredMessage(chat, i, 2, "bob", f"from pid {i}", datetime(2024, 3, 1, tzinfo=UTC))
                           for i in range(500))
            await store.flush()
            print(await store.messages.count(chat))

    anyio.run(main)
""")


@pytest.mark.anyio
async def test_several_processes_share_the_store_without_a_lock(pg_url: str, tmp_path: Path) -> None:
    async with PostgresStore(pg_url) as mine:
        mine.add_many(msg(i) for i in range(300))
        done: dict[int, subprocess.CompletedProcess] = {}

        async def writer(k: int) -> None:  # two other processes write while this one holds the store
            done[k] = await anyio.run_process([sys.executable, "-c", WRITER, str(ROOT), pg_url, str(-200 - k)], check=False)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for k in range(2):
                    tg.start_soon(writer, k)
        assert [done[k].returncode for k in range(2)] == [0, 0], [done[k].stderr.decode()[-2000:] for k in range(2)]
        assert [done[k].stdout.decode().strip() for k in range(2)] == ["500", "500"]
        assert await mine.messages.count() == 1300  # everyone's rows, while each held the store open
        # a chat only another process wrote: read from the database (no set of this one's can say it is empty)
        assert [m.message_id for m in await mine.messages.recent(-200, 2)] == [498, 499]
        assert await mine.messages.max_id(-201) == 499
        assert [c.chat_id for c in await mine.settings.chats()] == [-201, -200, -100]

        # the CLI on another data dir, configured for the same store, grants while this store is open
        (tmp_path / "kith.yaml").write_text(yaml.safe_dump({"storage": {"dialogue": pg_url}}))
        proc = await anyio.run_process(
            [sys.executable, "-m", "cli", "sub", "grant", "user:42", "premium", "--days", "30",
             "--config", str(tmp_path / "kith.yaml"), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, check=False)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert [(s.scope, s.scope_id, s.tier) for s in await mine.billing.subscriptions()] == [("user", 42, "premium")]


@pytest.mark.anyio
async def test_processes_starting_at_once_migrate_the_schema_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]

    async def enter(store: PostgresStore) -> None:
        async with store:
            assert store.schema_version == SCHEMA_VERSION

    async with anyio.create_task_group() as tg:
        for s in stores:
            tg.start_soon(enter, s)
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg_url) as con:
        rows = await (await con.execute("SELECT version FROM schema_version")).fetchall()
    assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_clear_error_that_hides_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with block ends: nobody listens there
    url = f"postgresql://kith:s3cret@127.0.0.1:{port}/kith"
    with pytest.raises(MemoryStoreError) as info:
        async with PostgresStore(url, connect_timeout_s=2):
            pass
    assert "s3cret" not in str(info.value) and "kith:***@127.0.0.1" in str(info.value)
    assert "s3cret" not in repr(PostgresStore(url)) and "s3cret" not in str(PostgresStore(url))
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


@pytest.mark.anyio
async def test_a_server_that_goes_away_loses_no_queued_row(tmp_path: Path) -> None:
    from benchmarks.pg_server import PostgresServer, create_database

    server = PostgresServer()
    url = create_database(server.start())
    try:
        async with PostgresStore(url, dump_dir=tmp_path, connect_timeout_s=2) as store:
            store.add_many(msg(i) for i in range(10))
            await store.flush()
            server.pause()
            store.add_many(msg(i) for i in range(10, 15))
            with pytest.raises(MemoryStoreError, match="kept queued"):
                await store.flush()
            assert store.pending == 5
            server.resume()
            with anyio.fail_after(30):  # the writer retries with backoff and reconnects
                while True:
                    try:
                        await store.flush()
                        break
                    except MemoryStoreError:
                        await anyio.sleep(0.2)
            assert await store.messages.count() == 15

            server.pause()  # down at shutdown: what is queued is saved as an importable transcript
            store.add_many(msg(i) for i in range(15, 18))
        dumps = sorted(tmp_path.glob("kith-postgresql.unsaved-*.jsonl"))
        assert len(dumps) == 1
        assert [m.message_id for m in read_transcript(dumps[0])] == [15, 16, 17]
    finally:
        server.stop()


def test_storage_dialogue_takes_duckdb_or_a_postgresql_url(tmp_path: Path) -> None:
    assert Settings().storage.dialogue == "duckdb"
    assert Settings.model_validate({"storage": {"dialogue": "postgresql://k@h/db"}}).storage.dialogue == "postgresql://k@h/db"
    with pytest.raises(ValidationError, match="storage.dialogue"):
        Settings.model_validate({"storage": {"dialogue": "mysql://k@h/db"}})
    assert str(open_dialogue_store(tmp_path)) == f"DuckDB {tmp_path / 'kith.duckdb'}"
    assert str(open_dialogue_store(tmp_path, dialogue="postgres://k:pw@h/db")) == "PostgreSQL postgres://k:***@h/db"


@pytest.mark.anyio
async def test_a_grant_from_another_process_applies_once_the_cache_ages(pg_url: str) -> None:
    from config.loader import load_config
    from tiers.subscriptions import SubscriptionStore

    tiers = load_config().tiers
    clock = lambda: datetime.now(UTC)  # noqa: E731
    async with PostgresStore(pg_url) as bot_store, PostgresStore(pg_url) as cli_store:
        bot = SubscriptionStore(bot_store, tiers, clock, max_age_s=0.2)
        assert await bot.get("user", 42) is None  # cached: nothing
        await SubscriptionStore(cli_store, tiers, clock).grant("user", 42, "premium", 30, "cli")
        assert await bot.get("user", 42) is None  # still the cached view...
        await anyio.sleep(0.3)
        sub = await bot.get("user", 42)  # ...until it ages
        assert sub is not None and sub.tier == "premium"
