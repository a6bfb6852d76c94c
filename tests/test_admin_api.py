"""The CLI while the bot runs: ``kith memory …``, ``kith sub …``, ``kith usage``, ``kith import`` and
``kith doctor`` go through the running bot's admin API (``POST /admin/op``) and print what they print
with the bot stopped. The bot here is the real runtime and control server in the test's event loop,
the CLI typer's runner in a worker thread (real HTTP between them); the last test runs a real
``kith run`` process (Telegram unreachable) and the CLI in processes of their own."""
from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from typer.testing import CliRunner

from cli import app
from config.loader import SHIPPED_SETTINGS, load_config
from config.models import ControlSettings
from features.app import open_runtime
from memory.types import StoredMessage
from operations.control import TOKEN_FILE, ControlServer
from operations.health import Health
from operations.metrics import Metrics
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SLICE = ROOT.parent / "shared" / "data" / "ubuntu-irc" / "2009-03-03_10.jsonl"
CHAT = "-1002009030310"


@pytest.fixture
def data(tmp_path) -> Path:
    """A data dir with one real #ubuntu slice (the first 300 messages) imported, bot stopped."""
    d = tmp_path / "data"
    small = tmp_path / "slice.jsonl"
    small.write_text("".join(SLICE.read_text(encoding="utf-8").splitlines(keepends=True)[:300]), encoding="utf-8")
    res = CliRunner().invoke(app, ["import", str(small), "--data-dir", str(d)])
    assert res.exit_code == 0, res.output
    return d


async def kith(*args: str):
    """The CLI as a user runs it, in a thread (the bot's event loop keeps serving meanwhile)."""
    return await anyio.to_thread.run_sync(lambda: CliRunner().invoke(app, list(args)))


@asynccontextmanager
async def running_bot(data: Path, ov_encoder):
    """The runtime with its control server serving operations, as ``kith run`` wires them."""
    cfg = load_config(None, env={})
    # the model loaded as `kith run` loads it (the OpenVINO conversion is cached for the session)
    async with open_runtime(cfg, data, lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id))) as rt:
        async with ControlServer(ControlSettings(port=0), Health(), Metrics(), token_file=data / TOKEN_FILE) as server:
            async with server.operations(rt.services, drain_timeout_s=5):
                yield rt, server


def _untimed(result: tuple) -> tuple:
    """A command's (code, stdout, stderr) with its clock times (``2026-12-06 07:32 UTC``) masked."""
    return tuple(re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "<time> UTC", x) if isinstance(x, str) else x for x in result)


def approx_floats(value):
    if isinstance(value, float):
        return pytest.approx(value, abs=1e-5)
    if isinstance(value, dict):
        return {k: approx_floats(v) for k, v in value.items()}
    return value


COMMANDS = [
    ("memory", "search", CHAT, "python header files", "-k", "5"),
    ("memory", "search", CHAT, "python header files", "-k", "3", "--json", "--explain"),
    ("memory", "stats"),
    ("sub", "grant", "user:42", "premium"),
    ("sub", "list"),
    ("sub", "revoke", "user:42"),
    ("usage", "--by", "kind", "--json"),
    ("sub", "grant", "user:1", "gold"),  # an unknown tier: the same error and exit code both ways
]


async def test_the_cli_gives_the_same_output_through_a_running_bot(data, ov_encoder):
    stopped = []
    for cmd in COMMANDS:
        res = await kith(*cmd, "--data-dir", str(data))
        stopped.append((res.exit_code, res.stdout, res.stderr))
    assert stopped[0][0] == 0 and "python" in stopped[0][1].lower()
    assert stopped[-1][0] == 1 and "gold" in stopped[-1][2]

    async with running_bot(data, ov_encoder) as (rt, _server):
        assert (data / TOKEN_FILE).is_file()
        running = []
        for cmd in COMMANDS:
            res = await kith(*cmd, "--data-dir", str(data))
            running.append((res.exit_code, res.stdout, res.stderr))
        for cmd, a, b in zip(COMMANDS, stopped, running):
            if "--json" in cmd and cmd[0] == "memory":
                # a chat's first recall reads LanceDB, later ones its rows held in RAM (memory.hot): the same
                # cosines summed in another order differ in the last float32 bit; the rest is identical
                assert a[0] == b[0] and a[2] == b[2], cmd
                assert [approx_floats(json.loads(x)) for x in a[1].splitlines()] == [json.loads(y) for y in b[1].splitlines()]
                continue
            a, b = _untimed(a), _untimed(b)  # a grant's "updated" minute may turn between the two runs
            assert a == b, (cmd, "\n".join(difflib.unified_diff(a[1].splitlines(), b[1].splitlines(), lineterm="")))
        # it went through the bot: its admission saw the grant at once (and the DuckDB lock is the bot's)
        await kith("sub", "grant", "chat:" + CHAT, "premium", "--data-dir", str(data))
        sub = await rt.services.admission.subs.get("chat", int(CHAT))
        assert sub is not None and sub.tier == "premium"
    assert not (data / TOKEN_FILE).exists()  # removed when the bot stops


async def test_forget_through_the_bot_also_empties_the_chats_context(data, ov_encoder):
    from datetime import UTC, datetime

    async with running_bot(data, ov_encoder) as (rt, _server):
        chat = 777
        for i in range(3):
            rt.memory.remember(StoredMessage(chat, i + 1, 5, "ann", f"my locker code is {1000 + i}", datetime.now(UTC)))
        await rt.memory.flush()

        async def window(actor):
            return [m.text for m in await actor.window(None)]

        assert len(await rt.supervisor.call(chat, window)) == 3  # the actor holds them in its context
        res = await kith("memory", "forget", "--chat", str(chat), "--user", "5", "--yes", "--data-dir", str(data))
        assert res.exit_code == 0 and "erased 3 messages" in res.stdout, res.output
        assert await rt.supervisor.call(chat, window) == []  # …and forgot them with the stores
        assert (await rt.memory.recall(chat, "locker code", 5)).hits == []


async def test_import_and_reindex_through_the_bot_while_it_answers(data, ov_encoder, tmp_path):
    rows = [json.dumps({"chat_id": -555, "message_id": i, "user": "bob", "date": f"2024-01-01T10:{i:02d}:00Z",
                        "text": f"the backup script runs at {i} o'clock"}) for i in range(1, 40)]
    more = tmp_path / "more.jsonl"
    more.write_text("\n".join(rows) + "\nnot json\n", encoding="utf-8")
    async with running_bot(data, ov_encoder) as (rt, _server):
        res = await kith("import", str(more), "--data-dir", str(data))
        assert res.exit_code == 1  # the bad line, reported with its number, the rest imported
        assert "39 messages in 1 chat(s)" in res.stdout and "more.jsonl:40: invalid JSON" in res.stderr, res.output
        assert await rt.memory.vectors.count(-555) == 39  # the bot's own memory has them
        res = await kith("memory", "reindex", "--chat", "-555", "--data-dir", str(data))
        assert res.exit_code == 0 and "reindexed 39 memories" in res.stdout, res.output
        hits = (await rt.memory.recall(-555, "when does the backup script run", 3)).hits
        assert hits and "backup script" in hits[0].text


async def test_the_admin_api_refuses_without_the_token_and_while_starting(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    async with ControlServer(ControlSettings(port=0), Health(), Metrics(), token_file=data / TOKEN_FILE) as server:
        token = json.loads((data / TOKEN_FILE).read_text())["token"]
        async with httpx.AsyncClient(base_url=server.url) as http:
            body = {"op": "sub.list", "args": {}}
            assert (await http.post("/admin/op", json=body)).status_code == 401
            r = await http.post("/admin/op", json=body, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 503 and r.json()["retry"] is True  # stores not open yet: the CLI waits
            r = await http.post("/admin/op", json={"op": "rm -rf"}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code in (400, 503)


def test_a_control_file_left_by_a_killed_bot_is_ignored(data):
    # kill -9 leaves control.json behind; its pid is gone, so the CLI opens the stores itself
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / TOKEN_FILE).write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": dead.pid, "token": "x"}))
    res = CliRunner().invoke(app, ["sub", "list", "--data-dir", str(data)])
    assert res.exit_code == 0 and "no subscriptions" in res.stdout, res.output


def _kith(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_real_kith_run_serves_the_cli_while_telegram_is_unreachable(data, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(SHIPPED_SETTINGS, etc / "kith.yaml")
    text = (etc / "kith.yaml").read_text(encoding="utf-8")
    (etc / "kith.yaml").write_text(text.replace("  port: 8787", "  port: 0", 1), encoding="utf-8")
    env = {**os.environ, "KITH_CONFIG": str(etc / "kith.yaml"), "COLUMNS": "100",
           # Telegram cannot be reached from here: the bot keeps retrying, its admin API works meanwhile
           "TELEGRAM_API_ID": "12345", "TELEGRAM_API_HASH": "0" * 32, "TELEGRAM_BOT_TOKEN": "123:" + "A" * 35}
    search = ("memory", "search", CHAT, "python header files", "-k", "4", "--data-dir", str(data))
    grant = ("sub", "grant", "user:42", "premium", "--data-dir", str(data))
    listing = ("sub", "list", "--json", "--data-dir", str(data))
    before = [_kith(*search, env=env), _kith(*grant, env=env)]
    assert all(p.returncode == 0 for p in before), [p.stderr[-1500:] for p in before]

    log = (tmp_path / "bot.log").open("w")
    bot = subprocess.Popen([sys.executable, "-m", "cli", "run", "--data-dir", str(data)], cwd=ROOT, env=env,
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (data / TOKEN_FILE).exists():
            assert bot.poll() is None and time.monotonic() < deadline, (tmp_path / "bot.log").read_text()[-3000:]
            time.sleep(0.2)
        url = json.loads((data / TOKEN_FILE).read_text())["url"]
        during = [_kith(*search, env=env), _kith(*grant, env=env)]
        assert [(p.returncode, p.stdout) for p in during] == [(p.returncode, p.stdout) for p in before]
        subs = json.loads(_kith(*listing, env=env).stdout)
        assert [s["target"] for s in subs] == ["user:42"]
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["ready"] is False and ready["parts"]["stores"]["ready"] is True
        assert ready["parts"]["telegram"]["ready"] is False
        doctor = _kith("doctor", "--data-dir", str(data), env=env)
        assert f"pid {bot.pid}" in doctor.stdout and "(open in the running bot)" in doctor.stdout, doctor.stdout
    finally:
        bot.send_signal(signal.SIGTERM)
        code = bot.wait(timeout=60)
        log.close()
    assert code == 0, (tmp_path / "bot.log").read_text()[-3000:]
    assert not (data / TOKEN_FILE).exists()
    assert _kith(*listing, env=env).returncode == 0  # the stores are the CLI's again
