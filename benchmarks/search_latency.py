"""Per-chat recall over 100k memories in 100 chats (hybrid / vector / full text).

The table is built from real data: the unique texts of all slices are embedded once with the real
model, then each of 100 chats gets 1000 (text, vector) pairs sampled from them — the vectors are the
real embeddings of real texts, reused across chats. The chats' messages are interleaved in time and
appended in batches of 256 with ``optimize()`` every 5000 rows, as the Indexer does. Queries are real
questions from the slices (messages ending in "?") against random chats, excluding the chat's 30
newest messages as the recent window would. Quick: 10 chats (10k rows) from 2 slices.
"""
from __future__ import annotations

import random
import sys
import tempfile
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, p50_p99, progress

TARGET_P50_MS = 15.0
TARGET_P99_MS = 50.0
ROWS_PER_CHAT = 1000
BATCH = 256
OPTIMIZE_EVERY = 5000
WINDOW = 30
SEED = 20240611


def run(quick: bool) -> dict:
    import anyio

    from memory.transcripts import read_transcript
    from providers.embedder import Embedder

    chats = 10 if quick else 100
    queries = 200 if quick else 500
    files = common.slice_files()[:2] if quick else common.slice_files()

    # the unique texts of the slices, with a speaker each (the first one who said it)
    pool: dict[str, str] = {}
    for f in files:
        for m in read_transcript(f):
            if isinstance(m, Exception) or not m.text.strip():
                continue
            pool.setdefault(m.text, m.user_name)
    texts = list(pool)
    questions = [t for t in texts if t.rstrip().endswith("?")]
    progress(f"search_latency: {len(texts)} unique texts ({len(questions)} questions) from {len(files)} slices; loading the model")
    model, load_s = common.load_model_timed()
    t0 = time.perf_counter()
    vectors = Embedder(model).encode_sync(texts)
    embed_s = time.perf_counter() - t0
    progress(f"search_latency: embedded {len(texts)} texts in {embed_s:.1f} s ({len(texts) / embed_s:.0f} texts/s)")

    with tempfile.TemporaryDirectory(prefix="kith-bench-search-") as tmp:
        out = anyio.run(_bench, Path(tmp), model, texts, pool, vectors, questions, chats, queries, backend="asyncio")

    b = out["build"]
    lat = out["latency"]
    metrics = []
    for mode in ("hybrid", "vector", "fts"):
        p50, p99 = p50_p99(lat[mode])
        metrics.append(metric(f"{mode} search p50", p50, "ms", target=("<=", TARGET_P50_MS)))
        metrics.append(metric(f"{mode} search p99", p99, "ms", target=("<=", TARGET_P99_MS)))
    r50, r99 = p50_p99(lat["recall_total"])
    e50, e99 = p50_p99(lat["recall_embed"])
    s50, s99 = p50_p99(lat["recall_search"])
    metrics += [
        metric("hybrid incl. query embedding p50", r50, "ms"),
        metric("hybrid incl. query embedding p99", r99, "ms"),
        metric("hybrid incl. embedding: embedding part p50", e50, "ms"),
        metric("hybrid incl. embedding: embedding part p99", e99, "ms"),
        metric("hybrid incl. embedding: search part p50", s50, "ms"),
        metric("hybrid incl. embedding: search part p99", s99, "ms"),
        metric("build: rows appended per second", b["rows"] / b["seconds"] if b["seconds"] else None, "rows/s"),
        metric("build: append of 256 rows p50", common.percentile(b["add_ms"], 50), "ms"),
        metric("build: append of 256 rows p99", common.percentile(b["add_ms"], 99), "ms"),
        metric("build: optimize() max", max(b["optimize_ms"], default=None), "ms"),
        metric("build: optimize() total", sum(b["optimize_ms"]) / 1000, "s"),
        metric("corpus embedding rate", len(texts) / embed_s if embed_s else None, "texts/s"),
        metric("model load (excluded)", load_s, "s"),
    ]
    return {
        "description": f"{b['rows']} memories in {chats} chats; search alone (query vector precomputed) and Memory.recall",
        "params": {
            "rows": b["rows"],
            "chats": chats,
            "unique_texts": len(texts),
            "queries_per_mode": queries,
            "k": out["k"],
            "optimizations": len(b["optimize_ms"]),
            "rows_not_yet_in_indexes": b["tail"],
            "vector_index": out["vector_index"],
            "table_mib": out["table_mib"],
            "embedding": f"{model.backend} {model.precision}",
            "torch_threads": common.torch_threads(),
        },
        "metrics": metrics,
        "notes": [
            "vectors are the real embeddings of real texts (all-MiniLM-L6-v2), reused across chats",
            f"each query: a random chat, excluding its {WINDOW} newest message ids (the recent window); "
            f"modes interleaved per query after {out['warmup']} warm-up queries",
            f"hits from another chat: {out['foreign_hits']} (must be 0); mean hits per hybrid query {out['mean_hits']:.1f}",
        ],
    }


async def _bench(tmp: Path, model, texts, speakers, vectors, questions, chats: int, queries: int) -> dict:
    from memory.service import Memory
    from memory.vector_rows import MemoryRow
    from memory.vectors import VectorMemory
    from providers.embedder import Embedder

    settings = common.default_config().settings.memory
    k = settings.recall_k
    rng = random.Random(SEED)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    chat_ids = [-1009000000000 - i for i in range(chats)]

    # interleave the chats in time: each chat's messages at sorted random times over 30 days
    timeline: list[tuple[float, int, int, int]] = []  # (time, chat index, message id, text index)
    for ci in range(chats):
        picks = rng.sample(range(len(texts)), min(ROWS_PER_CHAT, len(texts)))
        times = sorted(rng.random() for _ in picks)
        for mid, (ti, tt) in enumerate(zip(picks, times), start=1):
            timeline.append((tt, ci, mid, ti))
    timeline.sort()

    build = {"rows": 0, "seconds": 0.0, "add_ms": [], "optimize_ms": [], "tail": 0}
    lat: dict[str, list[float]] = {m: [] for m in ("hybrid", "vector", "fts", "recall_total", "recall_embed", "recall_search")}
    foreign = 0
    hits_hybrid = 0
    async with VectorMemory(tmp / "memory") as vm:
        t0 = time.perf_counter()
        since = 0
        for i in range(0, len(timeline), BATCH):
            rows = []
            for tt, ci, mid, ti in timeline[i : i + BATCH]:
                name = speakers[texts[ti]]
                rows.append(
                    MemoryRow(chat_ids[ci], mid, zlib.crc32(name.encode()), name, texts[ti], base + timedelta(days=30 * tt), vectors[ti])
                )
            ta = time.perf_counter()
            await vm.add(rows)
            build["add_ms"].append((time.perf_counter() - ta) * 1000)
            since += len(rows)
            if since >= OPTIMIZE_EVERY:
                to = time.perf_counter()
                await vm.optimize()
                build["optimize_ms"].append((time.perf_counter() - to) * 1000)
                since = 0
            if (i // BATCH) % 40 == 0:
                progress(f"  appended {i + len(rows)} / {len(timeline)} rows")
        build["seconds"] = time.perf_counter() - t0
        build["rows"] = await vm.count()
        build["tail"] = since
        progress(f"search_latency: built {build['rows']} rows in {build['seconds']:.1f} s ({len(build['optimize_ms'])} optimize runs)")

        index_of = {t: i for i, t in enumerate(texts)}
        window = [set(range(ROWS_PER_CHAT - WINDOW + 1, ROWS_PER_CHAT + 1)) for _ in chat_ids]
        async with Embedder(model, max_batch=settings.embed_batch, max_wait_s=settings.embed_wait_ms / 1000) as emb:
            memory = Memory(None, vm, None, emb)  # type: ignore[arg-type]  # recall uses the vectors and the embedder only
            warmup = 20
            for n in range(warmup + queries):
                q = rng.choice(questions)
                ci = rng.randrange(chats)
                cid = chat_ids[ci]
                vec = vectors[index_of[q]]
                order = ["hybrid", "vector", "fts", "recall"]
                rng.shuffle(order)
                for mode in order:
                    if mode == "recall":
                        rec = await memory.recall(cid, q, k, exclude_ids=window[ci], mode="hybrid")
                        hits = rec.hits
                        if n >= warmup:
                            lat["recall_total"].append(rec.embed_ms + rec.search_ms)
                            lat["recall_embed"].append(rec.embed_ms)
                            lat["recall_search"].append(rec.search_ms)
                    else:
                        ts = time.perf_counter()
                        hits = await vm.search(cid, q, vec, k, mode=mode, exclude_ids=window[ci])
                        if n >= warmup:
                            lat[mode].append((time.perf_counter() - ts) * 1000)
                        if mode == "hybrid" and n >= warmup:
                            hits_hybrid += len(hits)
                    foreign += sum(1 for h in hits if h.chat_id != cid or h.message_id in window[ci])
                if n and n % 100 == 0:
                    progress(f"  {n} queries per mode")
        vindex = vm.has_vector_index
    size = sum(p.stat().st_size for p in (tmp / "memory").rglob("*") if p.is_file()) / 2**20
    return {
        "build": build,
        "latency": lat,
        "k": k,
        "warmup": warmup,
        "foreign_hits": foreign,
        "mean_hits": hits_hybrid / max(1, queries),
        "vector_index": "IVF_SQ" if vindex else "none (flat)",
        "table_mib": round(size, 1),
    }


if __name__ == "__main__":
    sys.exit(common.main_single("search_latency", run))
