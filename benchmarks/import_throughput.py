"""Real #ubuntu slices through `kith import` (both stores, real embeddings), msg/s.

Full: all slices (≈11.6k messages) into one fresh data dir; quick: the first slice. The model is
loaded before the clock starts (its load time is reported separately) and handed to ``open_memory``;
the clock covers opening the stores, ``import_transcript`` of every file, and closing (which waits
for the indexer and any optimize still running), so it is what ``kith import`` costs minus the
model load.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, progress

TARGET_MSG_S = 300.0


def run(quick: bool) -> dict:
    import anyio

    files = common.slice_files()[:1] if quick else common.slice_files()
    progress(f"import_throughput: loading the embedding model ({len(files)} file(s) to import)")
    model, load_s = common.load_model_timed()
    rss_model = common.current_rss_mib()
    encode = common.Timed(model.encode)  # time spent inside the model (on the embedder's worker thread)
    model.encode = encode
    with tempfile.TemporaryDirectory(prefix="kith-bench-import-") as tmp:
        out = anyio.run(_import_all, files, Path(tmp), model, backend="asyncio")
    model.encode = encode.fn  # the raw measurement below is not import time
    raw_rate, texts = anyio.run(_raw_rate, files, model, backend="asyncio")
    read, embedded, rows_lance, rows_duck = out["read"], out["embedded"], out["lance_rows"], out["duck_rows"]
    total_s = out["total_s"]
    import_rate = read / out["import_s"] if out["import_s"] else None
    res = {
        "description": "real ubuntu-irc slices imported into DuckDB + LanceDB with real embeddings",
        "params": {
            "files": len(files),
            "messages": read,
            "embedded": embedded,
            "texts_to_embedder": out["texts_to_embedder"],
            "distinct_texts_encoded": encode.items,  # the Embedder encodes identical texts of a batch once
            "model_calls": encode.calls,
            "torch_threads": common.torch_threads(),
        },
        "metrics": [
            metric("throughput (open → import → close)", read / total_s if total_s else None, "msg/s", target=(">=", TARGET_MSG_S)),
            metric("throughput (import_transcript only)", import_rate, "msg/s"),
            metric(f"raw model rate (the same {texts} texts, one call, same precision)", raw_rate, "texts/s"),
            metric("import_transcript / raw model rate", 100 * import_rate / raw_rate if import_rate and raw_rate else None, "%",
                   target=(">=", 90.0)),
            metric("whole process (open → close) / raw model rate", 100 * read / total_s / raw_rate if total_s and raw_rate else None,
                   "%"),
            metric("total time (excl. model load)", total_s, "s"),
            metric("time inside the model (encode)", encode.seconds, "s"),
            metric("share of time inside the model", 100 * encode.seconds / total_s if total_s else None, "%"),
            metric("open stores", out["open_s"], "s"),
            metric("close (drain indexer, optimize)", out["close_s"], "s"),
            metric("model load (excluded)", load_s, "s"),
            metric("RSS after model load", rss_model, "MiB"),
        ],
        "notes": [],
    }
    if rows_duck != read or rows_lance != embedded:
        res["notes"].append(
            f"row counts differ: DuckDB {rows_duck} vs {read} read, LanceDB {rows_lance} vs {embedded} embedded"
        )
    else:
        res["notes"].append(f"checked: DuckDB holds {rows_duck} messages, LanceDB {rows_lance} memories")
    return res


async def _raw_rate(files: list[Path], model) -> tuple[float, int]:
    """The model alone on the texts the import embeds: one ``encode_sync`` call (sentence-transformers
    sorts a call by length), with the precision the import used. Returns (texts/s, texts)."""
    import anyio

    from memory.transcripts import read_transcript
    from memory.types import ROLE_USER, StoredMessage
    from providers.embedder import Embedder

    texts = [m.text for f in files for m in read_transcript(f)
             if isinstance(m, StoredMessage) and m.role == ROLE_USER and m.text.strip()]
    async with Embedder(model) as emb:  # decides bf16 the way the import's embedder did
        t = time.perf_counter()
        await anyio.to_thread.run_sync(emb.encode_sync, texts)
        return len(texts) / (time.perf_counter() - t), len(texts)


async def _import_all(files: list[Path], data_dir: Path, model) -> dict:
    from actors.runtime import open_memory
    from memory.importer import import_transcript

    read = embedded = 0
    t0 = time.perf_counter()
    async with open_memory(common.default_config(), data_dir, model=model) as memory:
        t_open = time.perf_counter()
        for f in files:
            t = time.perf_counter()
            rep = await import_transcript(memory, f)
            read += rep.read
            embedded += rep.embedded
            progress(f"  {f.name}: {rep.read} messages in {time.perf_counter() - t:.1f} s ({len(rep.errors)} bad lines)")
        t_imported = time.perf_counter()
        texts_to_embedder = memory.embedder.texts
    t_closed = time.perf_counter()
    # count what landed, outside the clock
    async with open_memory(common.default_config(), data_dir, model=model) as memory:
        duck_rows = await memory.store.count_messages()
        lance_rows = await memory.vectors.count()
    return {
        "read": read,
        "embedded": embedded,
        "texts_to_embedder": texts_to_embedder,
        "duck_rows": duck_rows,
        "lance_rows": lance_rows,
        "open_s": t_open - t0,
        "import_s": t_imported - t_open,
        "close_s": t_closed - t_imported,
        "total_s": t_closed - t0,
    }


if __name__ == "__main__":
    sys.exit(common.main_single("import_throughput", run))
