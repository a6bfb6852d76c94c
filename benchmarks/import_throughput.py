"""Real #ubuntu slices through `kith import` (both stores, real embeddings), msg/s, per embedding
backend (``$KITH_BENCH_BACKENDS``, default OpenVINO, torch fp32, torch auto/bf16).

Full: all slices (≈11.6k messages) into one fresh data dir; quick: the first slice. Per backend:

- in-process: the model is loaded before the clock starts (its load time is reported separately)
  and handed to ``open_memory``; the clock covers opening the stores, ``import_transcript`` of
  every file ("steady state": import_transcript only), and closing (which waits for the indexer
  and any optimize still running);
- the raw model on the same texts: one ``encode_sync`` call (sorted by length, batches of 32, same
  precision) — what the import could reach if nothing but the model ran;
- whole process: ``kith import`` as a user runs it into a new data dir (a fresh interpreter,
  imports, model load; the conversion is the machine's, made once by ``make install`` or the
  in-process run, as on a user's first import), wall time from spawn to exit; also against raw
  torch fp32 on the same texts when ``torch:fp32`` is measured (the issue's ≥ 1.5×).
"""
from __future__ import annotations

import os
import subprocess
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
    metrics, notes, params = [], [], {"files": len(files)}
    whole: dict[str, float | None] = {}
    raws: dict[str, float] = {}
    for backend, precision in common.bench_backends():
        progress(f"import_throughput: {backend} ({precision}): loading the embedding model ({len(files)} file(s))")
        model, load_s = common.load_model_timed(backend, precision)
        label = f"{backend} {model.precision}"
        rss_model = common.current_rss_mib()
        encode = common.time_encoder(model)  # time inside the model (on the embedder's worker thread)
        with tempfile.TemporaryDirectory(prefix="kith-bench-import-") as tmp:
            out = anyio.run(_import_all, files, Path(tmp), model, backend="asyncio")
        model.encode_batch = encode.fn  # the raw measurement below is not import time
        raw_rate, texts = anyio.run(_raw_rate, files, model, backend="asyncio")
        progress(f"import_throughput: {label}: whole process (kith import)")
        whole_s = _whole_process(files, backend, precision)
        read, embedded, rows_lance, rows_duck = out["read"], out["embedded"], out["lance_rows"], out["duck_rows"]
        total_s = out["total_s"]
        import_rate = read / out["import_s"] if out["import_s"] else None
        params.update(messages=read, embedded=embedded, texts_to_embedder=out["texts_to_embedder"])
        params[f"{label}: model calls / distinct texts encoded"] = f"{encode.calls} / {encode.items}"
        metrics += [
            metric(f"{label}: steady state (import_transcript only)", import_rate, "msg/s", target=(">=", TARGET_MSG_S)),
            metric(f"{label}: in-process (open → import → close)", read / total_s if total_s else None, "msg/s"),
            metric(f"{label}: whole process (kith import, incl. start-up and model load)", read / whole_s if whole_s else None,
                   "msg/s"),
            metric(f"{label}: raw model rate (the same {texts} texts, one call)", raw_rate, "texts/s"),
            metric(f"{label}: steady state / raw model rate", 100 * import_rate / raw_rate if import_rate and raw_rate else None,
                   "%", target=(">=", 90.0)),
            metric(f"{label}: whole process / raw model rate", 100 * read / whole_s / raw_rate if whole_s and raw_rate else None,
                   "%"),
            metric(f"{label}: time inside the model (encode_batch)", encode.seconds, "s"),
            metric(f"{label}: share of in-process time inside the model", 100 * encode.seconds / total_s if total_s else None, "%"),
            metric(f"{label}: open stores · close (drain indexer, optimize)", f"{out['open_s']:.2f} · {out['close_s']:.2f}", "s"),
            metric(f"{label}: model load (excluded in-process)", load_s, "s"),
            metric(f"{label}: RSS after model load", rss_model, "MiB"),
        ]
        if rows_duck != read or rows_lance != embedded:
            notes.append(f"{label}: row counts differ: DuckDB {rows_duck} vs {read} read, LanceDB {rows_lance} vs {embedded} embedded")
        else:
            notes.append(f"{label}: checked: DuckDB holds {rows_duck} messages, LanceDB {rows_lance} memories")
        whole[label] = read / whole_s if whole_s else None
        raws[label] = raw_rate
        del model, encode
    torch_raw = raws.get("torch fp32")
    for label, rate in whole.items():
        if torch_raw and rate and label != "torch fp32":
            metrics.append(metric(f"{label}: whole process (first import into a new data dir) / raw torch fp32", rate / torch_raw,
                                  "×", target=(">=", 1.5)))
    params["torch_threads"] = common.torch_threads()
    return {
        "description": "real ubuntu-irc slices imported into DuckDB + LanceDB with real embeddings, per embedding backend",
        "params": params,
        "metrics": metrics,
        "notes": notes,
    }


def _whole_process(files: list[Path], backend: str, precision: str) -> float | None:
    """Wall seconds of ``kith import FILES`` into a fresh data dir with this backend; None if it failed."""
    with tempfile.TemporaryDirectory(prefix="kith-bench-import-cli-") as tmp:
        cfg = Path(tmp) / "kith.yaml"
        cfg.write_text(f"memory:\n  embed_backend: {backend}\n  embed_precision: {precision}\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "cli", "import", "--config", str(cfg), "--data-dir", str(Path(tmp) / "data"),
               *map(str, files)]
        from providers.openvino_encoder import CACHE_ENV, cache_root

        env = {**os.environ, CACHE_ENV: str(cache_root())}  # the machine's conversion, shared by every data dir
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=common.REPO_ROOT, capture_output=True, text=True, env=env)
        took = time.perf_counter() - t
    if proc.returncode != 0:
        progress(f"import_throughput: kith import failed ({proc.returncode}): {proc.stderr[-500:]}")
        return None
    return took


async def _raw_rate(files: list[Path], model) -> tuple[float, int]:
    """The model alone on the texts the import embeds: one ``encode_sync`` call (sorted by length,
    batches of 32), with the precision the import used. Returns (texts/s, texts)."""
    import anyio

    from memory.transcripts import read_transcript
    from memory.types import ROLE_USER, StoredMessage
    from providers.embedder import Embedder

    texts = [m.text for f in files for m in read_transcript(f)
             if isinstance(m, StoredMessage) and m.role == ROLE_USER and m.text.strip()]
    emb = Embedder(model)
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
        duck_rows = await memory.store.messages.count()
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
