"""scale_out: the indexer's embedding in the bot vs on 1 and 2 Ray workers, with PostgreSQL as the dialogue store.

#ubuntu slices, one chat each, fed as live updates (interleaved, in message order per chat) through
``open_memory`` — the bot's own memory stack: the dialogue store on a real PostgreSQL server
(``$KITH_BENCH_PG_URL``, else a throwaway one started here), vector memory in LanceDB, the indexer.
Per run: updates/s (every message committed to PostgreSQL), messages embedded/s (every message
embedded and appended to LanceDB), and the checks — messages lost (stored but never in vector
memory), rows duplicated, per-chat order violations (a message made visible in vector memory in an
earlier commit than one before it in its chat: each LanceDB fragment is one commit here, since
``optimize_every`` is 0). The last run kills one of two workers with ``kill -9`` a third of the way
through: Ray restarts it and its work is redone.

On one 2-core machine the workers share the cores the bot had: this measures the price and the
guarantees of the scale-out, not its gain (which is more machines: ``scale_out.address``).
"""
from __future__ import annotations

import functools
import os
import signal
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from benchmarks import common
from benchmarks.common import metric, progress

SLICES_QUICK, SLICES_FULL = 2, 4
CAP_QUICK, CAP_FULL = 600, 1500  # messages per slice


def load_messages(n_slices: int, cap: int) -> list:
    """Messages of ``n_slices`` #ubuntu slices (one chat each), at most ``cap`` per slice, interleaved
    across chats and in message order within each."""
    from memory.transcripts import read_transcript

    per_chat = []
    for path in common.slice_files()[:n_slices]:
        msgs = sorted(read_transcript(path), key=lambda m: m.message_id)[:cap]
        per_chat.append(msgs)
    out = []
    for i in range(max(len(c) for c in per_chat)):
        out.extend(c[i] for c in per_chat if i < len(c))
    return out


def check_vectors(location: Any, msgs: Sequence) -> dict[str, int]:
    """Lost, duplicated and order violations of vector memory at ``location`` against ``msgs``."""
    import lance

    from memory.location import as_location
    from memory.vector_rows import current_table

    loc = as_location(location)
    ds = lance.dataset(loc.child(f"{current_table(loc)}.lance"), storage_options=loc.storage_options or None)
    want: dict[int, set[int]] = {}
    for m in msgs:
        if m.text.strip():
            want.setdefault(m.chat_id, set()).add(m.message_id)
    seen: dict[int, list[int]] = {}
    order_violations = 0
    last_max: dict[int, int] = {}  # chat -> highest message id made visible by an earlier commit
    for frag in sorted(ds.get_fragments(), key=lambda f: f.fragment_id):
        tbl = frag.to_table(columns=["chat_id", "message_id"])
        mine: dict[int, list[int]] = {}
        for c, mid in zip(tbl.column("chat_id").to_pylist(), tbl.column("message_id").to_pylist(), strict=True):
            mine.setdefault(c, []).append(mid)
            seen.setdefault(c, []).append(mid)
        for c, ids in mine.items():
            if c in last_max and min(ids) < last_max[c]:
                order_violations += sum(1 for i in ids if i < last_max[c])
            last_max[c] = max(last_max.get(c, max(ids)), max(ids))
    rows = sum(len(v) for v in seen.values())
    distinct = sum(len(set(v)) for v in seen.values())
    lost = sum(len(ids - set(seen.get(c, ()))) for c, ids in want.items())
    return {"lost": lost, "duplicated": rows - distinct, "order_violations": order_violations, "rows": rows}


async def pipeline(config: Any, data_dir: Path, msgs: Sequence, *, kill_at: int | None = None,
                   chunk: int = 50) -> dict[str, Any]:
    """Feed ``msgs`` through the bot's memory stack; ``kill_at``: kill -9 a Ray worker once that many
    messages are indexed. Returns the timings and what was killed."""
    from actors.runtime import open_memory

    out: dict[str, Any] = {"killed": None}
    async with open_memory(config, data_dir) as memory:
        embedder = memory.indexer.embedder

        async def killer() -> None:
            while memory.indexer.indexed < (kill_at or 0):  # noqa: ASYNC110 - polls a counter, nothing to wait on
                await anyio.sleep(0.01)
            pid = (await embedder.worker_pids())[0]  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
            out["killed"] = pid
            progress(f"scale_out: kill -9 worker pid {pid} at {memory.indexer.indexed} indexed")

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            if kill_at is not None:
                tg.start_soon(killer)
            for i in range(0, len(msgs), chunk):  # live updates: a few at a time, the loop runs in between
                memory.remember_many(msgs[i:i + chunk])
                await anyio.lowlevel.checkpoint()
            await memory.store.flush()
            out["stored_s"] = time.perf_counter() - t0
            await memory.flush()
            out["indexed_s"] = time.perf_counter() - t0
        out["indexed"] = memory.indexer.indexed
        out["failed"] = memory.indexer.failed
        if kill_at is not None:
            out["pids_after"] = await embedder.worker_pids()  # type: ignore[attr-defined]
        out["location"] = memory.vectors.location
    return out


def _config(pg_url: str, engine: str, workers: int):
    from config.models import Config, Settings, TiersConfig

    settings = Settings.model_validate({
        "storage": {"dialogue": pg_url},
        "scale_out": {"engine": engine, "workers": workers},
        "memory": {"optimize_every": 0},  # one fragment per commit: the order check reads commits
    })
    return Config(settings=settings, tiers=TiersConfig())


def run(quick: bool) -> dict:
    msgs = load_messages(SLICES_QUICK if quick else SLICES_FULL, CAP_QUICK if quick else CAP_FULL)
    server = None
    admin = os.environ.get("KITH_BENCH_PG_URL")
    if admin is None:
        from benchmarks.pg_server import PostgresServer

        server = PostgresServer()
        admin = server.start()
    runs = [("in the bot (no engine)", "none", 1, False), ("1 Ray worker", "ray", 1, False),
            ("2 Ray workers", "ray", 2, False), ("2 Ray workers, one killed -9", "ray", 2, True)]
    metrics: list[dict] = []
    try:
        from benchmarks.pg_server import create_database

        with tempfile.TemporaryDirectory(prefix="kith-scale-") as tmp:
            for i, (label, engine, workers, kill) in enumerate(runs):
                progress(f"scale_out: {label} ({len(msgs)} messages)")
                cfg = _config(create_database(admin), engine, workers)
                kill_at = len(msgs) // 3 if kill else None
                r = anyio.run(functools.partial(pipeline, cfg, Path(tmp) / f"run{i}", msgs, kill_at=kill_at))
                check = check_vectors(r["location"], msgs)
                embedded = sum(1 for m in msgs if m.text.strip())
                metrics += [
                    metric(f"{label}: updates/s (committed to PostgreSQL)", round(len(msgs) / r["stored_s"], 1), "/s"),
                    metric(f"{label}: messages embedded/s (in LanceDB)", round(embedded / r["indexed_s"], 1), "/s"),
                    metric(f"{label}: lost / duplicated / order violations",
                           f"{check['lost']} / {check['duplicated']} / {check['order_violations']}"),
                ]
                if kill:
                    restarted = r["killed"] is not None and r["killed"] not in r["pids_after"]
                    metrics.append(metric(f"{label}: killed worker restarted and its work redone",
                                          "yes" if restarted and check["lost"] == 0 else "no"))
                bad = check["lost"] + check["duplicated"] + check["order_violations"]
                metrics.append(metric(f"{label}: lost + duplicated + out of order", bad, target=("<=", 0)))
    finally:
        if server is not None:
            server.stop()
    return {
        "description": f"{len(msgs)} #ubuntu messages in {SLICES_QUICK if quick else SLICES_FULL} chats fed as live updates "
                       "through open_memory with PostgreSQL; embedding in the bot vs on Ray workers on this machine",
        "params": {"messages": len(msgs), "chunk": 50, "optimize_every": 0},
        "metrics": metrics,
        "notes": ["the workers share this machine's 2 cores with the bot and each other: the gain of the "
                  "scale-out is more machines (scale_out.address), not more workers on one"],
    }


if __name__ == "__main__":
    raise SystemExit(common.main_single("scale_out", run))
