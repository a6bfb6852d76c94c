"""Reminders: 10,000 due across 1,000 chats, fired through the chat actors, with a kill -9 in the middle.

What ``features.plugins.reminders`` promises (issue #25): a reminder fires within a second of its
time, none is lost and none is sent twice, across a ``kill -9``. Measured with the shipped pieces
in subprocesses on a real DuckDB file:

1. 10,000 reminders (1,000 chats × 10) are stored, due one after another over ``SPREAD_S`` seconds
   starting a few seconds ahead (≈ 2,000 due per second);
2. a bot process runs the scheduler (``Reminders``) over the real ``Supervisor``, whose chat actors
   run each delivery between their events (a light actor: no model, no memory); its outbox waits
   ``SEND_S`` (a Telegram round trip, concurrent across chats) and then appends the message, the
   reminder's due time and the send time to a file;
3. when ``KILL_AT`` of them are sent the process is killed with SIGKILL, restarted at once, and the
   new process delivers the rest (what fell due while it was down is sent at start, marked late);
4. the file is read: lost (never sent), twice (sent more than once; one cut in the middle of its
   send by the kill is sent again marked "possibly repeated" and counted apart), and the firing lag
   (sent − due) of those due while a bot ran, and of those due while it was down.

Targets: lag p99 ≤ 1 s for reminders due while the bot runs, 0 lost, 0 twice (unmarked).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks import common
from benchmarks.common import metric, progress

N, CHATS = 10_000, 1_000
QUICK_N, QUICK_CHATS = 1_000, 100
SPREAD_S = 5.0  # due times spread over this long
LEAD_S = 4.0  # the first is due this long after seeding (the bot process starts meanwhile)
SEND_S = 0.02  # one send's round trip
KILL_AT = 0.4  # kill -9 when this share is sent


def run(quick: bool) -> dict:
    n, chats = (QUICK_N, QUICK_CHATS) if quick else (N, CHATS)
    with tempfile.TemporaryDirectory(prefix="kith-bench-reminders-") as tmp:
        db, out = Path(tmp) / "kith.duckdb", Path(tmp) / "sent.tsv"
        progress(f"reminders: seeding {n} reminders across {chats} chats")
        first_due = _seed(db, n, chats)
        cmd = [sys.executable, "-m", "benchmarks.reminders", "--child", str(db), str(out)]
        env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT)}
        bot = subprocess.Popen(cmd, env=env, cwd=common.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        counter = _Counter(out)
        while counter.lines() < n * KILL_AT:  # (read incrementally: the watcher must not take the bot's CPU)
            if bot.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the bot process stopped early ({bot.returncode}): {bot.stderr.read()[-2000:] if bot.stderr else ''}")
            time.sleep(0.01)
        first_pid = bot.pid
        bot.send_signal(signal.SIGKILL)
        bot.wait()
        killed_at = time.time()
        sent_before = _lines(out)
        progress(f"reminders: killed -9 after {sent_before} sends; restarting")
        again = subprocess.run(cmd, env=env, cwd=common.REPO_ROOT, capture_output=True, text=True, timeout=300)
        if again.returncode != 0:
            raise RuntimeError(f"the restarted bot failed ({again.returncode}): {again.stderr[-2000:]}")
        ready_at = float(again.stdout.split("ready ")[1].split()[0])
        rows = [line.split("\t") for line in out.read_text().splitlines()]
    sends = Counter(r[0] for r in rows)
    marked = {r[0] for r in rows if "possibly repeated" in r[5]}
    late_marked = sum("(late," in r[5] for r in rows)
    lost = n - len(sends)
    twice = sum(1 for rid, k in sends.items() if k > 1 and rid not in marked)
    repeated = sum(1 for rid, k in sends.items() if k > 1 and rid in marked)
    first: dict[str, tuple[float, float, bool]] = {}
    for rid, due_s, sent_s, _chat, pid, _text in rows:
        first.setdefault(rid, (float(due_s), float(sent_s), int(pid) == first_pid))
    # sent by the bot that was running when they fell due: the first one, or the restarted one after its start
    up = [(s - d) * 1000 for d, s, by_first in first.values() if by_first or d > ready_at]
    # in flight at the kill or due while down: sent by the restarted bot at its start
    down = [(s - d) * 1000 for d, s, by_first in first.values() if not by_first and d <= ready_at]
    p50, p99 = common.p50_p99(up) if up else (float("nan"), float("nan"))
    metrics = [
        metric("lag p50 (due while running)", p50, "ms"),
        metric("lag p99 (due while running)", p99, "ms", target=("<=", 1000)),
        metric("lag max (due while running)", max(up) if up else None, "ms"),
        metric("caught up at restart (in flight at the kill, or due while down)", len(down), ""),
        metric("their lag max (sent at restart)", max(down) if down else None, "ms"),
        metric("down (kill → ready)", (ready_at - killed_at) * 1000, "ms"),
        metric("lost", lost, "", target=("<=", 0)),
        metric("twice", twice, "", target=("<=", 0)),
        metric("repeated, marked (cut mid-send)", repeated, ""),
        metric("marked late", late_marked, ""),
        metric("sent before the kill", sent_before, ""),
    ]
    return {
        "description": f"{n} reminders due across {chats} chats over {SPREAD_S:.0f} s, fired through the chat actors; "
                       f"kill -9 after {KILL_AT:.0%} sent, restart",
        "params": {"reminders": n, "chats": chats, "spread_s": SPREAD_S, "send_s": SEND_S, "kill_at": KILL_AT,
                   "first_due": first_due.isoformat()},
        "metrics": metrics,
        "notes": ["a light chat actor (no model, no memory) behind the real Supervisor; the outbox sleeps SEND_S, then "
                  "appends a line (kill -9 keeps written pages: no fsync needed for this drill)",
                  "lag = the outbox's write time − the reminder's due time; 'late' marks those > 60 s late (none expected)"],
    }


class _Counter:
    """Lines of a growing file, reading only what was added since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.count = path, 0, 0

    def lines(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(chunk)
        self.count += chunk.count(b"\n")
        return self.count


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def _seed(db: Path, n: int, chats: int) -> datetime:
    import anyio

    from memory.duckdb_store import DuckDBStore
    from memory.reminders import ReminderStore

    first = datetime.now(UTC) + timedelta(seconds=LEAD_S)

    async def main() -> None:
        async with DuckDBStore(db) as store:
            rs = await ReminderStore(store).open()
            rows = [(i % chats, 1, f"r{i}", first + timedelta(seconds=SPREAD_S * i / n)) for i in range(n)]
            step = 1000
            for k in range(0, n, step):  # one INSERT per thousand (seeding is not what is measured)
                part = rows[k:k + step]
                from memory.schema import to_us

                await store.sql_transaction([(
                    "INSERT INTO reminders (chat_id, user_id, text, due_us, timezone, created_us, state)"
                    " SELECT unnest(?::BIGINT[]), 1, unnest(?::VARCHAR[]), unnest(?::BIGINT[]), 'UTC', ?, 'pending'",
                    [[c for c, _u, _t, _d in part], [t for _c, _u, t, _d in part], [to_us(d) for *_x, d in part],
                     to_us(datetime.now(UTC))])])
            assert (await rs.stats()).get("pending") == n

    anyio.run(main)
    return first


def _child(db: str, out: str) -> None:
    """The bot process: the scheduler over the real Supervisor and a light chat actor."""
    import anyio

    from actors.events import Call
    from actors.supervisor import Supervisor
    from config.models import ActorSettings, Config, Settings, TiersConfig
    from features.plugins.reminders import Reminders
    from memory.duckdb_store import DuckDBStore

    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    class Outbox:
        async def send(self, chat_id: int, text: str, *, reply_to: int | None = None, thread_id: int | None = None) -> None:
            await anyio.sleep(SEND_S)
            rid = text.rsplit(" ", 1)[-1]
            os.write(fd, f"{rid}\t{due[rid]}\t{time.time()}\t{chat_id}\t{os.getpid()}\t{text}\n".encode())

    class Actor:
        def __init__(self, chat_id: int, svc: Any, outbox: Any) -> None:
            self.chat_id, self.outbox = chat_id, outbox

        async def start(self) -> None:
            return None

        async def run(self, inbox: Any, on_handled: Any = lambda: None) -> None:
            async for event in inbox:
                try:
                    if isinstance(event, Call):
                        await event.result.run(event.work, self)
                finally:
                    on_handled()

    due: dict[str, float] = {}

    async def main() -> None:
        async with DuckDBStore(Path(db)) as store:
            for (text, due_us) in (await store.sql_transaction([("SELECT text, due_us FROM reminders", [])]))[0]:
                due[text] = due_us / 1e6
            config = Config(settings=Settings(), tiers=TiersConfig())
            svc = SimpleNamespace(config=config, clock=lambda: datetime.now(UTC), memory=SimpleNamespace(store=store),
                                  supervisor=None)
            async with Reminders(svc) as rem, \
                    Supervisor(svc, Outbox(), ActorSettings(), factory=Actor) as sup:  # type: ignore[arg-type]
                svc.supervisor = sup
                await rem.ready.wait()
                print(f"ready {time.time()}", flush=True)
                while True:
                    await anyio.sleep(0.05)
                    s = await rem.store.stats()
                    if not s.get("pending") and not s.get("claimed") and rem._in_flight == 0:
                        break
                print(f"delivered {rem.delivered} late {rem.late} repeated {rem.repeated}", flush=True)

    anyio.run(main)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
        raise SystemExit(0)
    raise SystemExit(common.main_single("reminders", run))
