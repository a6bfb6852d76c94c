"""Search speed after many single-message appends vs a freshly compacted table (issue: memory).

A chat that talks one message at a time appends one row at a time; each append is a LanceDB
fragment, and fragments slow searches until ``optimize()`` compacts them. Kith's mitigation is the
Indexer: messages submitted one by one are batched into few appends, and ``optimize()`` runs after
``memory.optimize_every`` rows, 32 appends, or when a burst drains (see ``memory.indexer``).
Measured here, on real embeddings of real #ubuntu texts:

1. a base table (optimized), then N messages submitted one at a time through the Indexer
   (the bot's path) → hybrid search p50/p99 right after the last append (the Indexer's last
   optimize may still be running: reported, no target), and once the Indexer has settled (its own
   optimize runs finished, as in a running bot seconds after the burst; no manual compaction);
2. the same table after ``kith memory compact`` (``optimize()``) → p50/p99;
3. for scale, N rows appended with one ``VectorMemory.add`` each (no batching, no optimize).

Target: path 1, settled, is no more than 20 % slower than path 2 (p50).
"""
from __future__ import annotations

import random
import tempfile
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, p50_p99, progress

SEED = 7
CHATS = 20


def run(quick: bool) -> dict:
    import anyio

    from memory.transcripts import read_transcript

    appends = 1000 if quick else 10_000
    base_rows = 4000 if quick else 20_000
    raw_appends = 300 if quick else 500
    files = common.slice_files()[:3] if quick else common.slice_files()
    texts: dict[str, str] = {}
    for f in files:
        for m in read_transcript(f):
            if hasattr(m, "text") and m.text.strip():
                texts.setdefault(m.text, m.user_name)
    pool = list(texts)
    model, load_s = common.load_model_timed()
    progress(f"compaction: embedding {len(pool)} unique texts")
    vectors = model.encode_batch(pool)
    questions = [t for t in pool if t.rstrip().endswith("?")][:300]
    with tempfile.TemporaryDirectory() as tmp:
        out = anyio.run(_bench, Path(tmp), model, pool, texts, vectors, questions, base_rows, appends, raw_appends)
    ratio = out["appended"][0] / out["compacted"][0]
    return {
        "description": f"hybrid search after {appends} one-at-a-time messages (Indexer) vs after compaction, {base_rows} base rows",
        "params": {"base_rows": base_rows, "single_appends": appends, "chats": CHATS, "raw_single_adds": raw_appends,
                   "queries": out["queries"], "indexer_batches": out["indexer_appends"], "optimize_runs": out["optimize_runs"]},
        "metrics": [
            metric("search p50 right after the last append", out["at_once"][0], "ms"),
            metric("search p99 right after the last append", out["at_once"][1], "ms"),
            metric("search p50 after single appends", out["appended"][0], "ms"),
            metric("search p99 after single appends", out["appended"][1], "ms"),
            metric("search p50 freshly compacted", out["compacted"][0], "ms"),
            metric("search p99 freshly compacted", out["compacted"][1], "ms"),
            metric("slowdown p50 (appended / compacted)", round(ratio, 3), "x", target=("<=", 1.2)),
            metric("search p50 after raw single adds, unbatched", out["raw"][0], "ms"),
            metric("raw single add", out["raw_add_ms"], "ms/row"),
        ],
        "notes": [f"model load {load_s:.1f} s (excluded)", "vectors are the real embeddings of real texts, reused across chats"],
    }


async def _bench(tmp: Path, model, pool, speakers, vectors, questions, base_rows: int, appends: int, raw_appends: int) -> dict:
    from memory.indexer import Indexer
    from memory.types import StoredMessage
    from memory.vector_rows import MemoryRow
    from memory.vectors import VectorMemory
    from providers.embedder import Embedder

    rng = random.Random(SEED)
    chat_ids = [-1008000000000 - i for i in range(CHATS)]
    base = datetime(2024, 1, 1, tzinfo=UTC)
    index_of = {t: i for i, t in enumerate(pool)}
    settings = common.default_config().settings.memory
    next_id = {c: 1 for c in chat_ids}

    def row(i: int) -> MemoryRow:
        cid = rng.choice(chat_ids)
        mid = next_id[cid]
        next_id[cid] += 1
        t = pool[i % len(pool)]
        return MemoryRow(cid, mid, zlib.crc32(speakers[t].encode()), speakers[t], t, base + timedelta(minutes=mid), vectors[i % len(pool)])

    async def latency(vm: VectorMemory, n: int) -> tuple[float, float]:
        ms = []
        for j in range(n + 10):
            q = questions[j % len(questions)]
            t0 = time.perf_counter()
            await vm.search(rng.choice(chat_ids), q, vectors[index_of[q]], settings.recall_k, mode="hybrid")
            if j >= 10:
                ms.append((time.perf_counter() - t0) * 1000)
        return p50_p99(ms)

    queries = 300
    async with VectorMemory(tmp / "memory") as vm:
        rows = [row(i) for i in range(base_rows)]
        for i in range(0, len(rows), 1000):
            await vm.add(rows[i : i + 1000])
        await vm.optimize()
        progress(f"compaction: base table {await vm.count()} rows")
        async with Embedder(model, max_batch=settings.embed_batch, max_wait_s=settings.embed_wait_ms / 1000) as emb:
            async with Indexer(vm, emb, optimize_every=settings.optimize_every) as indexer:
                for i in range(appends):
                    r = row(base_rows + i)
                    indexer.submit([StoredMessage(r.chat_id, r.message_id, r.user_id, r.user_name, r.text, r.date)])
                    await anyio_sleep_ms(2)  # a busy chat: one message every few milliseconds
                    if i % 2000 == 0:
                        progress(f"  submitted {i} single messages")
                await indexer.flush()
                # right after the last append: the Indexer's last optimize may still be running
                at_once = await latency(vm, queries)
                await indexer.settle()  # what a running bot reaches within seconds of the burst
                optimize_runs = indexer.optimizations
                appended = await latency(vm, queries)
            indexer_appends = emb.batches  # one append per embedded batch
        await vm.optimize()
        compacted = await latency(vm, queries)
        t0 = time.perf_counter()
        for i in range(raw_appends):
            await vm.add([row(base_rows + appends + i)])
        raw_add_ms = (time.perf_counter() - t0) * 1000 / raw_appends
        raw = await latency(vm, queries)
    return {"appended": appended, "at_once": at_once, "compacted": compacted, "raw": raw, "raw_add_ms": round(raw_add_ms, 2),
            "queries": queries, "indexer_appends": indexer_appends, "optimize_runs": optimize_runs}


async def anyio_sleep_ms(ms: float) -> None:
    import anyio

    await anyio.sleep(ms / 1000)


if __name__ == "__main__":
    raise SystemExit(common.main_single("compaction", run))
