"""Real slices replayed through the full pipeline (kith/recall); Kith's own ms per turn.

A turn's overhead is ``TurnReport.overhead_ms`` = total − LLM − query embedding: storing, the
window, settings, the recall search, the prompt, the outbox, recording. Full: the first 2 slices
(replayed one after the other into one fresh data dir); quick: the first 300 messages of one slice.
Questions (messages ending in "?") are answered, as ``kith replay --respond questions``.

A second, instrumented pass (the first slice, or the same 300 messages; fresh data dir) times each
stage of the answered turns (wrappers around the actor's calls) and runs cProfile on the event-loop
thread; the headline numbers come from the first, uninstrumented pass.
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, p50_p99, progress

TARGET_OVERHEAD_P50_MS = 5.0
QUICK_MESSAGES = 300
FULL_SLICES = 2


def run(quick: bool) -> dict:
    import anyio

    files = common.slice_files()[: 1 if quick else FULL_SLICES]
    limit = QUICK_MESSAGES if quick else None
    progress(f"turn_overhead: loading the embedding model; replaying {', '.join(f.name for f in files)}" + (f" (first {limit} messages)" if limit else ""))
    model, load_s = common.load_model_timed()
    encode = common.time_encoder(model, keep=True)  # the embedder's batch calls during the replay

    with tempfile.TemporaryDirectory(prefix="kith-bench-turns-") as tmp:
        turns, messages, replay_s, diag = anyio.run(_replay_all, files, Path(tmp), model, limit, None, backend="asyncio")
    model.encode_batch = encode.fn
    batches = _batch_cost(model, encode)
    progress(f"turn_overhead: {messages} messages, {len(turns)} turns in {replay_s:.1f} s; instrumented pass")

    stages: dict[str, list[float]] = defaultdict(list)
    prof = cProfile.Profile()
    with tempfile.TemporaryDirectory(prefix="kith-bench-turns-prof-") as tmp:
        prof_turns, _, _, _ = anyio.run(_replay_all, files[:1], Path(tmp), model, limit, (stages, prof), backend="asyncio")

    answered = [t for t in turns if t.responded]
    errors = sum(1 for t in answered if t.error)
    scrape = _metrics_cost(turns)
    ov_ans = [t.overhead_ms for t in answered]
    ov_all = [t.overhead_ms for t in turns]
    ov_silent = [t.overhead_ms for t in turns if not t.responded]
    p = {
        "ans": p50_p99(ov_ans),
        "all": p50_p99(ov_all),
        "silent": p50_p99(ov_silent),
        "total": p50_p99([t.total_ms for t in answered]),
        "search": p50_p99([t.search_ms for t in answered]),
        "rest": p50_p99([max(0.0, t.overhead_ms - t.search_ms) for t in answered]),
        "embed": p50_p99([t.embed_ms for t in answered]),
        "llm": p50_p99([t.llm_ms for t in answered]),
    }
    res = {
        "description": "full pipeline replay of real slices with kith/recall; overhead = total − LLM − embedding",
        "params": {
            "files": len(files),
            "messages": messages,
            "turns": len(turns),
            "answered": len(answered),
            "llm_errors": errors,
            "replay_s": round(replay_s, 1),
            "embedding": f"{model.backend} {model.precision}",
            "torch_threads": common.torch_threads(),
        },
        "metrics": [
            metric("overhead p50 (answered turns)", p["ans"][0], "ms", target=("<=", TARGET_OVERHEAD_P50_MS)),
            metric("overhead p99 (answered turns)", p["ans"][1], "ms"),
            metric("overhead p50 (all turns)", p["all"][0], "ms"),
            metric("overhead p99 (all turns)", p["all"][1], "ms"),
            metric("overhead p50 (remember-only turns)", p["silent"][0], "ms"),
            metric("overhead p99 (remember-only turns)", p["silent"][1], "ms"),
            metric("total turn latency p50 (answered)", p["total"][0], "ms"),
            metric("total turn latency p99 (answered)", p["total"][1], "ms"),
            metric("overhead minus recall search p50 (answered)", p["rest"][0], "ms"),
            metric("overhead minus recall search p99 (answered)", p["rest"][1], "ms"),
            metric("recall search p50", p["search"][0], "ms"),
            metric("recall search p99", p["search"][1], "ms"),
            metric("query embedding p50 (excluded)", p["embed"][0], "ms"),
            metric("query embedding p99 (excluded)", p["embed"][1], "ms"),
            metric("LLM kith/recall p50 (excluded)", p["llm"][0], "ms"),
            metric("LLM kith/recall p99 (excluded)", p["llm"][1], "ms"),
            metric(f"idle search on the final table p50 ({diag.get('fragments_before')} fragments)", common.percentile(diag.get("before_ms", []), 50), "ms"),
            metric(f"idle search after optimize() p50 ({diag.get('fragments_after')} fragments)", common.percentile(diag.get("after_ms", []), 50), "ms"),
            metric("replay throughput", messages / replay_s if replay_s else None, "msg/s"),
            metric("embedder batch calls · texts per call p50 / max", batches["shape"], ""),
            metric("embedder batches: time inside the model during the replay (queries beside them)", batches["wall_s"], "s"),
            metric("embedder batches: time inside the model, the same calls alone", batches["live_s"], "s"),
            metric("raw model on the same texts (one call, sorted by length)", batches["raw_s"], "s"),
            metric("raw / batches (100 % = batches cost no more than one sorted call)", batches["ratio"], "%"),
            metric("live batches / one sorted call", 100 / batches["ratio"] if batches["ratio"] else None, "×",
                   target=("<=", 1.2)),
            metric("model load (excluded)", load_s, "s"),
            metric("metrics: observe_turn per turn", scrape["observe_us"], "µs"),
            metric("metrics: one /metrics exposition", scrape["scrape_ms"], "ms"),
            metric("metrics share of overhead p50 (observe + a scrape every 15 s)",
                   100 * scrape["per_turn_ms"] / p["ans"][0] if p["ans"][0] else None, "%", target=("<=", 1.0)),
        ],
        "profile": _profile_lines(stages, prof_turns, prof),
        "notes": [
            "overhead includes waiting for the event loop and the GIL while the indexer embeds and appends "
            "the same stream in the background (as in a live bot); the profile is from a second, instrumented pass",
        ],
    }
    return res


SCRAPE_INTERVAL_S = 15.0  # Prometheus' default scrape interval


def _metrics_cost(turns) -> dict:
    """What the control server's metrics add per turn: ``observe_turn`` on every report of the replay,
    plus one ``/metrics`` exposition (after those turns) spread over the turns of a scrape interval at
    the replay's own rate. (The runtime's gauges are read at scrape time from counters it keeps
    anyway; the memory-rows gauge is one LanceDB count per scrape, off the turn path.)"""
    from operations.metrics import Metrics

    m = Metrics()
    t = time.perf_counter()
    for _ in range(5):
        for rep in turns:
            m.observe_turn(rep)
    observe_ms = (time.perf_counter() - t) * 1000 / (5 * max(1, len(turns)))
    t = time.perf_counter()
    for _ in range(20):
        m.exposition()
    scrape_ms = (time.perf_counter() - t) * 1000 / 20
    turns_per_s = len(turns) / max(1e-9, sum(r.total_ms for r in turns) / 1000)
    per_turn = observe_ms + scrape_ms / max(1.0, turns_per_s * SCRAPE_INTERVAL_S)
    return {"observe_us": observe_ms * 1000, "scrape_ms": scrape_ms, "per_turn_ms": per_turn}


def _batch_cost(model, encode) -> dict:
    """What the bot's micro-batches cost against the raw model on the same texts in one call. The
    batches are timed again one after another once the replay is over (the same calls, in order,
    nothing beside them): during the replay, recall queries run beside a bulk call on the query
    model, so a call's wall time there holds the queries' share of the cores too (``wall_s``)."""
    kept = encode.kept or []
    texts = [t for batch, _ in kept for t in batch]
    sizes = sorted(len(b) for b, _ in kept)
    wall_s = sum(s for _, s in kept)
    t = time.perf_counter()
    for batch, _ in kept:
        encode.fn(batch)
    live_s = time.perf_counter() - t
    t = time.perf_counter()
    encode.fn(texts)
    raw_s = time.perf_counter() - t
    return {"shape": f"{len(kept)} · {common.percentile(sizes, 50):.0f} / {max(sizes, default=0)}", "live_s": live_s,
            "wall_s": wall_s, "raw_s": raw_s, "ratio": 100 * raw_s / live_s if live_s else None}


# ---------------------------------------------------------------------- the replay


async def _replay_all(files: list[Path], data_dir: Path, model, limit: int | None, instrument):
    from features.app import open_runtime
    from transports.local import IdAllocator, LocalOutbox
    from transports.replay import replay, respond_policy

    policy = respond_policy("questions")
    turns = []
    messages = 0
    replay_s = 0.0
    questions: list[tuple[int, str]] = []
    diag: dict = {}
    cfg = common.default_config()

    def keep_question(m) -> None:
        if policy(m):
            questions.append((m.chat_id, m.text))

    async with open_runtime(cfg, data_dir, lambda mem: LocalOutbox(IdAllocator(mem.store.messages.max_id)), model=model) as rt:
        undo = _instrument(rt, *instrument) if instrument else (lambda: None)
        try:
            for f in files:
                t = time.perf_counter()
                rep = await replay(rt, f, policy=policy, limit=limit, on_message=keep_question)
                replay_s += time.perf_counter() - t
                turns.extend(rep.turns)
                messages += rep.messages
                progress(f"  {f.name}: {rep.messages} messages, {len(rep.answered)} answered in {time.perf_counter() - t:.1f} s")
        finally:
            undo()
        if instrument is None:
            diag = await _fragment_diagnostic(rt.memory, questions)
    return turns, messages, replay_s, diag


async def _fragment_diagnostic(memory, questions: list[tuple[int, str]], n: int = 60) -> dict:
    """Search latency on the table the replay left (idle now), before and after ``optimize()``.

    The Indexer optimizes every ``optimize_every`` rows, so a young table is many small fragments
    (one per append) that every search scans; this shows what they cost.
    """
    vm = memory.vectors
    sample = questions[:: max(1, len(questions) // n)][:n]
    vecs = await memory.embedder.embed([q for _, q in sample])
    k = common.default_config().settings.memory.recall_k

    async def fragments() -> int | None:
        try:  # lancedb's table stats; private attributes of VectorMemory, for this report only
            stats = await vm.run(vm.lance_table.stats)
            return int(stats["fragment_stats"]["num_fragments"])
        except Exception:
            return None

    async def timings() -> list[float]:
        xs = []
        for (cid, q), v in zip(sample, vecs):
            t = time.perf_counter()
            await vm.search(cid, q, v, k)
            xs.append((time.perf_counter() - t) * 1000)
        return xs

    before_frag = await fragments()
    before = await timings()
    await vm.optimize()
    after_frag = await fragments()
    after = await timings()
    return {"queries": len(sample), "fragments_before": before_frag, "fragments_after": after_frag, "before_ms": before, "after_ms": after}


# ---------------------------------------------------------------------- instrumentation (2nd pass)


def _instrument(rt, stages: dict[str, list[float]], prof: cProfile.Profile):
    """Time the stages of each turn by wrapping the calls the actor makes; start cProfile.

    Returns a function that removes the wrappers and stops the profiler.
    """
    import actors.turn as chat_mod  # the six steps of a turn (build_prompt is called there)

    mem = rt.memory
    store = mem.store
    patched: list[tuple[object, str, object, bool]] = []  # (object, attribute, original, was in its __dict__)

    def wrap(obj, attr: str, stage: str, *, is_async: bool) -> None:
        orig = getattr(obj, attr)
        own = attr in vars(obj)

        if is_async:
            async def timed(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return await orig(*a, **kw)
                finally:
                    stages[stage].append((time.perf_counter() - t0) * 1000)
        else:
            def timed(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return orig(*a, **kw)
                finally:
                    stages[stage].append((time.perf_counter() - t0) * 1000)

        setattr(obj, attr, timed)
        patched.append((obj, attr, orig, own))

    def wrap_async(obj, attr: str, stage: str) -> None:
        wrap(obj, attr, stage, is_async=True)

    def wrap_sync(obj, attr: str, stage: str) -> None:
        wrap(obj, attr, stage, is_async=False)

    # dialogue store reads (each is a worker-thread round trip)
    wrap_async(store, "upsert_chat", "store.upsert_chat (1st msg of a chat)")
    wrap_async(store.settings, "chat", "store.settings.chat (actor start)")
    wrap_async(store.messages, "recent", "store.messages.recent (window load)")
    wrap_async(store.messages, "answered_ids", "store.messages.answered_ids (actor start)")
    wrap_async(store.settings, "user", "store.settings.user (1st answer to a sender)")
    wrap_async(store.messages, "get", "store.messages.get (reply chain)")
    wrap_async(store.messages, "max_id", "store.messages.max_id (id allocator)")
    # the commit before a reply's first byte (exactly once across crashes: DuckDB commit round trip)
    wrap_async(store, "note_delivery", "store.note_delivery (into the reserve before sending)")
    # enqueue-only writes on the event loop
    wrap_sync(mem, "remember", "memory.remember (enqueue)")
    wrap_sync(store, "record_usage", "store.record_usage (enqueue)")
    wrap_sync(store, "record_recall", "store.record_recall (enqueue)")
    # recall: embedding (excluded from overhead) and the LanceDB search
    wrap_async(mem.embedder, "embed_one", "recall: query embedding (excluded)")
    wrap_async(mem.vectors, "search", "recall: vectors.search")
    # prompt, LLM, outbox
    wrap_sync(chat_mod, "build_prompt", "build_prompt")
    wrap_async(rt.services.llm, "complete", "llm.complete (excluded)")
    box = rt.supervisor.outbox
    if box is not None:
        wrap_async(box, "stream", "outbox.stream")
        wrap_async(box, "send", "outbox.send (finish)")
    wrap_sync(rt.services, "report", "services.report")

    prof.enable()

    def undo() -> None:
        prof.disable()
        for obj, attr, orig, own in reversed(patched):
            if own:
                setattr(obj, attr, orig)
            else:
                delattr(obj, attr)  # the class attribute shows through again

    return undo


def _profile_lines(stages: dict[str, list[float]], turns, prof: cProfile.Profile, top: int = 12) -> list[str]:
    answered = [t for t in turns if t.responded]
    n_ans = max(1, len(answered))
    ov = [t.overhead_ms for t in answered]
    lines = [
        f"instrumented pass: {len(turns)} turns, {len(answered)} answered; overhead p50 {common.fmt_value(common.percentile(ov, 50), 'ms')}"
        f" (wrappers + cProfile make it slower than the clean pass)",
        "stage times (ms; share = stage total / total overhead of answered turns):",
    ]
    total_ov = sum(ov) or 1.0
    rows = []
    for name, xs in stages.items():
        rows.append((sum(xs), name, xs))
    for s, name, xs in sorted(rows, reverse=True):
        excluded = "(excluded)" in name
        share = "" if excluded else f", {100 * s / total_ov:4.1f}% of overhead"
        lines.append(
            f"  {name:<44} calls {len(xs):5d}  p50 {common.percentile(xs, 50):7.3f}  p99 {common.percentile(xs, 99):7.3f}"
            f"  per answered turn {s / n_ans:7.3f}{share}"
        )
    st = pstats.Stats(prof)
    entries = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        entries.append((tt, ct, nc, file, f"{_short(file)}:{line}({fn})"))
    idle = sum(e[0] for e in entries if ("poll" in e[4] and "epoll" in e[4]) or "select.select" in e[4])
    busy = sum(e[0] for e in entries) - idle
    lines.append(
        f"cProfile of the event-loop thread: busy {busy:.2f} s, idle in epoll {idle:.2f} s "
        f"(for a coroutine, cum = time on the loop between its awaits, summed over resumptions)"
    )
    root = str(common.REPO_ROOT) + "/"
    ours = [e for e in entries if e[3].startswith(root) and "/benchmarks/" not in e[3]]
    ours.sort(key=lambda e: e[1], reverse=True)
    lines.append(f"  Kith functions, top {top} by cumulative on-loop time (ms per answered turn = cum / {n_ans}):")
    for tt, ct, nc, _, where in ours[:top]:
        lines.append(f"    {ct * 1000:8.1f} ms cum {ct * 1000 / n_ans:7.3f}/turn {tt * 1000:7.1f} ms own {nc:7d} calls  {where}")
    others = sorted((e for e in entries if not ("epoll" in e[4] and "poll" in e[4])), reverse=True)
    lines.append(f"  everything, top {top // 2} by own time (excluding idle):")
    for tt, _ct, nc, _, where in others[: top // 2]:
        lines.append(f"    {tt * 1000:8.1f} ms own {100 * tt / (busy or 1):5.1f}% of busy {nc:7d} calls  {where}")
    return lines


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in file:
            return file.split(marker, 1)[1]
    root = str(common.REPO_ROOT) + "/"
    return file[len(root):] if file.startswith(root) else file


if __name__ == "__main__":
    sys.exit(common.main_single("turn_overhead", run))
