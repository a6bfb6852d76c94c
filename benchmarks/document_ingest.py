"""Document ingest: pages/s of a real-text PDF, recall@5 of its facts by page, other chats' turns meanwhile.

Issue #9: "Document ingest (pages/s including embedding, a 100-page PDF) and recall of planted facts
by page (recall@5). Targets: ≥ 20 pages/s; a 15 MB PDF never delays other chats' turns by more than
100 ms (p99 turn overhead measured while it ingests)."

1. **The document** (fpdf2, helvetica 11 pt, A4, Latin-1): the LoCoMo development conversations
   (``recall_locomo.data_path()``) written out turn after turn as ``Speaker: text`` lines, each
   session preceded by a line naming the conversation, the session and its date. A turn never
   straddles a page break, so every dialog turn (``dia_id``) lies on exactly one page. Full: 100
   pages (≈ all five conversations); quick: 20.
2. **Ingest throughput**: ``memory.documents.ingest_document`` + ``Memory.flush()`` into a fresh
   data dir — extraction in the ``DocumentReader`` worker process, chunking, the chunks committed to
   DuckDB, embedded (the real model, loaded before the clock starts) and appended to LanceDB. The
   reader process is started before the clock (a running bot starts it once, on its first document;
   its start time is reported). Extraction alone is timed in-process (``read_document``) on the side.
3. **Recall by page**: every LoCoMo question (categories 1-4) whose evidence turns all lie in the
   document is asked through ``Memory.recall(chat, question, 5)`` (the path the bot uses) and scored
   ``|evidence pages ∩ pages of the top-5 hits| / |evidence pages|``, averaged. A development number:
   the issue sets no target for it.
4. **Other chats while a big PDF ingests** (``open_runtime`` with the shipped ``kith.yaml`` and
   ``tiers.yaml``, offline kith/recall model): K group chats, each with real #ubuntu history already
   in memory, get real #ubuntu lines as turns (all answered) at a fixed pace, round-robin. First with
   nothing else running (baseline), then while a premium user's private chat receives a ~15 MB PDF
   (quick: ~3 MB) as a media message: its text pages are #ubuntu lines then LoCoMo turns, and every
   page carries a small noise image (incompressible random pixels) so the file reaches the size of
   a real scanned-and-illustrated report. The turns sent between the PDF's arrival and its last chunk
   being embedded are the "during ingest" sample. ``TurnReport.overhead_ms`` (total − LLM − query
   embedding) is the headline, as in ``turn_overhead``; also reported: the overhead counted from
   delivery to the actor (inbox wait included), the query embedding (excluded from overhead, but a
   user waits for it too) and the event loop's worst stall. The start-up heap is frozen out of the
   garbage collector as the Telegram bot does (``frozen_startup_heap``).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import math
import re
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, p50_p99, percentile, progress

TARGET_PAGES_S = 20.0
TARGET_DELAY_MS = 100.0

PAGES, QUICK_PAGES = 100, 20
BIG_BYTES, QUICK_BIG_BYTES = 15_000_000, 3_000_000
BIG_PAGES, QUICK_BIG_PAGES = 300, 60
CHATS, QUICK_CHATS = 20, 10
TURNS, QUICK_TURNS = 200, 60  # baseline turns (the ingest phase sends at the same pace until it is over)
HISTORY, QUICK_HISTORY = 100, 40  # #ubuntu messages already in each chat's memory
INTERVAL_S = 0.1  # one turn every 100 ms across the chats (each chat: one every K × 100 ms)
MAX_INGEST_TURNS = 5000
K_RECALL = 5
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}

FONT_PT, LINE_MM, MARGIN_MM = 11, 5.0, 15.0
PAGE_H_MM = 297.0
IMAGE_MM = 10.0  # the noise image sits in a band at the foot of the page, below the text
DOC_CHAT = 7001  # private chat of the document sender (chat id = user id)
DOC_USER = 7001
GROUP_BASE = -1009100000000

_PUNCT = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": ",", "\u201b": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"',
    "\u2032": "'", "\u2033": '"', "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "...", "\u2022": "*",
    "\u00a0": " ", "\u200b": "", "\ufeff": "",
})
_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def latin1(text: str) -> str:
    """``text`` in Latin-1 (the core PDF fonts' range): typographic punctuation made plain, accents
    kept where Latin-1 has the letter, else the base letter, else '?' (emoji)."""
    text = _CTRL.sub(" ", text.translate(_PUNCT))
    out = []
    for ch in text:
        if ord(ch) < 256:
            out.append(ch)
            continue
        base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
        out.append(base if base.strip() else "?")
    return "".join(out)


# ---------------------------------------------------------------------- the documents


def locomo_lines(convs: list[dict]) -> Iterator[tuple[tuple[int, str] | None, str]]:
    """``(key, line)`` for every session header (key None) and dialog turn (key ``(conv, dia_id)``)
    of the conversations, in order."""
    from benchmarks.recall_locomo import turn_text

    for ci, conv in enumerate(convs):
        c = conv["conversation"]
        sessions = sorted(
            (int(k.split("_")[1]), k) for k in c if re.fullmatch(r"session_\d+", k) and isinstance(c[k], list) and c[k]
        )
        for n, key in sessions:
            yield None, latin1(f"{conv.get('sample_id', ci)}, session {n}, {c.get(f'{key}_date_time', '')}:")
            for turn in c[key]:
                text = turn_text(turn)
                if text:
                    yield (ci, turn["dia_id"]), latin1(f"{turn['speaker']}: {text}")


def ubuntu_messages() -> list[dict]:
    """Every line of the #ubuntu transcript slices (``common.slice_files()``) with text, in order."""
    out = []
    for f in common.slice_files():
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                if str(m.get("text") or "").strip():
                    out.append(m)
    return out


@dataclass
class Built:
    data: bytes
    pages: int
    page_of: dict = field(default_factory=dict)  # key -> set of pages (one page unless the text cycled)
    lines: int = 0
    chars: int = 0
    image_bytes: int = 0  # raw pixel bytes of the noise images, all pages
    image_side: int = 0  # pixels a side of each page's noise image (0: none)


def build_pdf(lines: Iterable[tuple[object, str]], pages: int, *, image_side: int = 0, seed: int = 9) -> Built:
    """A PDF of exactly ``pages`` A4 pages filled with ``lines`` (cycled if they run out), each line
    kept whole on one page; ``image_side`` > 0 puts a ``side × side`` RGB noise image on every page."""
    import numpy as np
    from fpdf import FPDF
    from PIL import Image

    source = list(lines)
    if not source:
        raise ValueError("no text to lay out")
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(False)
    pdf.set_font("helvetica", size=FONT_PT)
    pdf.set_creator("kith benchmarks.document_ingest")
    bottom = PAGE_H_MM - MARGIN_MM - (IMAGE_MM + 2 if image_side else 0)
    rng = np.random.default_rng(seed)
    built = Built(b"", pages, image_side=image_side)

    def new_page() -> None:
        pdf.add_page()
        if image_side:
            px = rng.integers(0, 256, size=(image_side, image_side, 3), dtype=np.uint8)
            built.image_bytes += px.nbytes
            pdf.image(Image.fromarray(px, "RGB"), x=MARGIN_MM, y=PAGE_H_MM - MARGIN_MM - IMAGE_MM, w=IMAGE_MM, h=IMAGE_MM)

    new_page()
    i = 0
    while True:
        key, text = source[i % len(source)]
        i += 1
        wrapped = pdf.multi_cell(0, LINE_MM, text, dry_run=True, output="LINES")
        if pdf.get_y() + len(wrapped) * LINE_MM > bottom:
            if pdf.page >= pages:
                break
            new_page()
        for piece in wrapped:
            pdf.cell(0, LINE_MM, piece, new_x="LMARGIN", new_y="NEXT")
        built.lines += 1
        built.chars += len(text)
        if key is not None:
            built.page_of.setdefault(key, set()).add(pdf.page)
    built.data = bytes(pdf.output())
    return built


def build_big_pdf(target_bytes: int, pages: int, convs: list[dict], ubuntu: list[dict]) -> Built:
    """``pages`` pages of #ubuntu lines then LoCoMo turns, with a noise image per page sized so the
    file comes out at about ``target_bytes``."""
    lines = [(None, latin1(f"{m.get('user', '?')}: {m['text']}")) for m in ubuntu]
    lines += [(None, text) for _, text in locomo_lines(convs)]
    text_only = build_pdf(lines, pages)
    per_page = max(0, target_bytes - len(text_only.data)) / pages
    side = max(1, int(math.sqrt(per_page / 3)))  # RGB bytes; random pixels do not deflate
    return build_pdf(lines, pages, image_side=side)


def tiny_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 8, "warm-up page")
    return bytes(pdf.output())


# ---------------------------------------------------------------------- run


def run(quick: bool) -> dict:
    import anyio

    from benchmarks.recall_locomo import data_path
    from memory.documents import read_document

    pages = QUICK_PAGES if quick else PAGES
    convs = json.loads(data_path().read_text(encoding="utf-8"))
    t = time.perf_counter()
    doc = build_pdf(locomo_lines(convs), pages)
    build_s = time.perf_counter() - t
    progress(f"document_ingest: built a {doc.pages}-page PDF of LoCoMo turns ({len(doc.data) / 1e3:.0f} kB, "
             f"{len(doc.page_of)} turns) in {build_s:.1f} s; loading the embedding model")

    model, load_s = common.load_model_timed()
    encode = common.time_encoder(model)  # time inside the model (on the embedder's worker thread)

    cfg = common.default_config()
    media = cfg.settings.media
    # extraction alone, in this process (what the reader process does for the ingest)
    t = time.perf_counter()
    extracted, chunks = read_document(doc.data, "locomo.pdf", "application/pdf", media.chunk_chars, media.max_document_pages)
    extract_s = time.perf_counter() - t
    progress(f"document_ingest: extraction + chunking alone: {extracted.pages} pages, {len(chunks)} chunks in {extract_s:.2f} s")

    with tempfile.TemporaryDirectory(prefix="kith-bench-doc-") as tmp:
        ing = anyio.run(_ingest_and_recall, Path(tmp), model, encode, doc, convs, backend="asyncio")

    # 4. the big PDF while other chats talk
    big_bytes = QUICK_BIG_BYTES if quick else BIG_BYTES
    big_pages = QUICK_BIG_PAGES if quick else BIG_PAGES
    ubuntu = ubuntu_messages()
    t = time.perf_counter()
    big = build_big_pdf(big_bytes, big_pages, convs, ubuntu)
    progress(f"document_ingest: built the big PDF: {big.pages} pages, {len(big.data) / 1e6:.1f} MB "
             f"({big.image_side}² px noise image per page) in {time.perf_counter() - t:.1f} s")
    encode.seconds = 0.0
    encode.calls = encode.items = 0
    with tempfile.TemporaryDirectory(prefix="kith-bench-doc-turns-") as tmp:
        tr = anyio.run(_turns_while_ingesting, Path(tmp), model, big, ubuntu, quick, backend="asyncio")

    return _result(quick, doc, build_s, extracted, chunks, extract_s, ing, big, tr, load_s, encode)


# ---------------------------------------------------------------------- 2 + 3: ingest and recall


class _AsyncTimer:
    """Wraps an async method of an object (instance attribute), summing its wall time and calls."""

    def __init__(self, obj, attr: str) -> None:
        self.obj, self.attr, self.orig = obj, attr, getattr(obj, attr)
        self.seconds = 0.0
        self.calls = 0
        timer = self

        async def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return await timer.orig(*a, **kw)
            finally:
                timer.seconds += time.perf_counter() - t0
                timer.calls += 1

        setattr(obj, attr, timed)

    def undo(self) -> None:
        delattr(self.obj, self.attr)


async def _ingest_and_recall(tmp: Path, model, encode: common.Timed, doc: Built, convs: list[dict]) -> dict:
    from actors.runtime import open_memory
    from benchmarks.recall_locomo import evidence_ids
    from memory.documents import ingest_document

    cfg = common.default_config()
    media = cfg.settings.media
    out: dict = {}
    async with open_memory(cfg, tmp / "data", model=model) as memory:
        # warm-up outside the clock: the reader process (started once per bot) and the model
        t = time.perf_counter()
        await memory.reader.read(tiny_pdf(), "warm.pdf", "application/pdf", max_chars=media.chunk_chars, max_pages=10)
        out["reader_start_s"] = time.perf_counter() - t
        await memory.embedder.embed(["warm-up"])
        encode.seconds = 0.0
        encode.calls = encode.items = 0

        timers = {
            "read (reader process: extract + chunk + transfer)": _AsyncTimer(memory.reader, "read"),
            "store.documents.add (DuckDB commit)": _AsyncTimer(memory.store.documents, "add"),
            "embedder.embed (bulk, incl. queueing)": _AsyncTimer(memory.embedder, "embed"),
            "vectors.add (LanceDB append)": _AsyncTimer(memory.vectors, "add"),
            "vectors.optimize (LanceDB, background)": _AsyncTimer(memory.vectors, "optimize"),
        }
        t0 = time.perf_counter()
        info = await ingest_document(memory, chat_id=DOC_CHAT, message_id=1, user_id=DOC_USER, user_name="Bench",
                                     date=datetime.now(UTC), file_name="locomo.pdf", mime_type="application/pdf",
                                     data=doc.data, max_chars=media.chunk_chars, max_pages=media.max_document_pages)
        t1 = time.perf_counter()
        await memory.flush()
        t2 = time.perf_counter()
        await memory.indexer.settle()  # a running optimize, outside the clock
        t3 = time.perf_counter()
        for tm in timers.values():
            tm.undo()
        out.update(info=info, read_store_s=t1 - t0, total_s=t2 - t0, settle_s=t3 - t2,
                   stages={k: (v.seconds, v.calls) for k, v in timers.items()},
                   encode_s=encode.seconds, encode_calls=encode.calls, encode_items=encode.items,
                   rows=await memory.vectors.count(DOC_CHAT))
        progress(f"document_ingest: ingested {info.pages} pages, {info.chunks} chunks in {t2 - t0:.2f} s "
                 f"({info.pages / (t2 - t0):.1f} pages/s); asking the questions")

        # 3. recall@5 by page
        known_by_conv = {ci: {k[1] for k in doc.page_of if k[0] == ci} for ci in range(len(convs))}
        all_ids = {}
        for ci, conv in enumerate(convs):
            c = conv["conversation"]
            all_ids[ci] = {t["dia_id"] for k in c if re.fullmatch(r"session_\d+", k) and isinstance(c[k], list) for t in c[k]}
        scores: dict[int, list[float]] = {}
        any_hit: list[float] = []
        lat, lat_embed, lat_search, foreign, not_doc = [], [], [], 0, 0
        skipped = 0
        for ci, conv in enumerate(convs):
            if not known_by_conv[ci]:
                continue
            for qa in conv["qa"]:
                cat = int(qa.get("category", 0))
                if cat not in CATEGORIES:
                    continue
                ev = evidence_ids(qa.get("evidence"), all_ids[ci])
                if not ev or any((ci, e) not in doc.page_of for e in ev):
                    skipped += 1
                    continue
                ev_pages = set().union(*(doc.page_of[(ci, e)] for e in ev))
                rec = await memory.recall(DOC_CHAT, str(qa["question"]), K_RECALL)
                lat.append(rec.embed_ms + rec.search_ms)
                lat_embed.append(rec.embed_ms)
                lat_search.append(rec.search_ms)
                foreign += sum(1 for h in rec.hits if h.chat_id != DOC_CHAT)
                not_doc += sum(1 for h in rec.hits if h.source != "locomo.pdf")
                got = {h.page for h in rec.hits[:K_RECALL] if h.source == "locomo.pdf"}
                scores.setdefault(cat, []).append(len(ev_pages & got) / len(ev_pages))
                any_hit.append(1.0 if ev_pages & got else 0.0)
        allv = [v for vs in scores.values() for v in vs]
        out["recall"] = {
            "questions": len(allv),
            "skipped": skipped,
            "all": 100 * sum(allv) / len(allv) if allv else None,
            "any": 100 * sum(any_hit) / len(any_hit) if any_hit else None,
            "cat": {c: (100 * sum(v) / len(v), len(v)) for c, v in sorted(scores.items())},
            "lat": lat,
            "lat_embed": lat_embed,
            "lat_search": lat_search,
            "foreign": foreign,
            "not_doc": not_doc,
        }
        progress(f"document_ingest: recall@{K_RECALL} by page {out['recall']['all']:.1f} % over {len(allv)} questions")
    return out


# ---------------------------------------------------------------------- 4: other chats while a big PDF ingests


@dataclass
class _Phase:
    sent: dict = field(default_factory=dict)  # (chat_id, message_id) -> perf_counter at delivery
    calls: list = field(default_factory=list)  # (texts, seconds) of every model call of the embedder
    stalls: list = field(default_factory=list)  # event-loop oversleep samples (ms)


async def _turns_while_ingesting(tmp: Path, model, big: Built, ubuntu: list[dict], quick: bool) -> dict:
    import anyio

    from actors.events import Incoming, Media, Sender
    from actors.runtime import frozen_startup_heap
    from config import load_config
    from features.app import open_runtime
    from memory.types import StoredMessage
    from transports.local import IdAllocator, LocalOutbox

    cfg = load_config(None, env={})  # the shipped kith.yaml and tiers.yaml (premium: documents, 20 MB files)
    n_chats = QUICK_CHATS if quick else CHATS
    n_turns = QUICK_TURNS if quick else TURNS
    history = QUICK_HISTORY if quick else HISTORY
    chats = [GROUP_BASE - i for i in range(n_chats)]
    block = len(ubuntu) // n_chats
    lines = {cid: ubuntu[i * block:(i + 1) * block] for i, cid in enumerate(chats)}
    if block < history + 10:
        raise RuntimeError(f"too few #ubuntu lines ({len(ubuntu)}) for {n_chats} chats")

    def sender(name: str) -> Sender:
        return Sender(10_000 + int(hashlib.sha1(name.encode()).hexdigest()[:8], 16), name)

    holder: dict = {}
    reports: dict = {}

    def on_turn(rep) -> None:
        reports[(rep.chat_id, rep.message_id)] = (rep, time.perf_counter())

    def make_outbox(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    out: dict = {"chats": n_chats, "history": history}
    async with open_runtime(cfg, tmp / "data", make_outbox, model=model, on_turn=on_turn) as rt:
        mem, sup = rt.memory, rt.supervisor
        subs = rt.services.admission.subs
        await subs.grant("user", DOC_USER, "premium", None, "bench")
        for cid in chats:  # the other chats: no quota or rate limit may refuse a measured turn
            await subs.grant("chat", cid, "unlimited", None, "bench")

        # each chat's history, already in memory
        now = datetime.now(UTC)
        for cid in chats:
            msgs = []
            for j, m in enumerate(lines[cid][:history]):
                s = sender(str(m.get("user") or "?"))
                msgs.append(StoredMessage(cid, j + 1, s.user_id, s.name, str(m["text"]), now - timedelta(minutes=history - j)))
            mem.remember_many(msgs)
        t = time.perf_counter()
        await mem.indexer.settle()
        progress(f"document_ingest: {n_chats} chats × {history} #ubuntu messages in memory ({time.perf_counter() - t:.1f} s)")

        cursor = {cid: history for cid in chats}
        current: list[_Phase | None] = [None]
        encode_sync = mem.embedder.encode_sync

        def recorded(texts, **kw):  # every model call of the shared embedder (on its worker thread)
            t0 = time.perf_counter()
            try:
                return encode_sync(texts, **kw)
            finally:
                if current[0] is not None:
                    current[0].calls.append((len(texts), time.perf_counter() - t0))

        mem.embedder.encode_sync = recorded

        async def send_turn(cid: int, phase: _Phase | None) -> None:
            block_lines = lines[cid]
            m = block_lines[cursor[cid] % len(block_lines)]
            cursor[cid] += 1
            mid = cursor[cid]
            ev = Incoming(cid, "supergroup", mid, sender(str(m.get("user") or "?")), str(m["text"]), datetime.now(UTC),
                          chat_title=f"#ubuntu bench {cid}", respond=True)
            if phase is not None:
                phase.sent[(cid, mid)] = time.perf_counter()
            await sup.tell(cid, ev)

        # warm-up: every chat's actor started and its window loaded; the reader process started
        for cid in chats:
            await send_turn(cid, None)
        await sup.wait_all_idle()
        t = time.perf_counter()
        await mem.reader.read(tiny_pdf(), "warm.pdf", "application/pdf", max_chars=1200, max_pages=10)
        out["reader_start_s"] = time.perf_counter() - t
        await mem.flush()

        async def paced(phase: _Phase, limit: int, stop: anyio.Event | None) -> None:
            t_next = time.perf_counter()
            for i in range(limit):
                if stop is not None and stop.is_set():
                    break
                await send_turn(chats[i % n_chats], phase)
                t_next += INTERVAL_S
                await anyio.sleep(max(0.0, t_next - time.perf_counter()))

        async def watch_loop(phase: _Phase, stop: anyio.Event) -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                await anyio.sleep(0.01)
                phase.stalls.append(max(0.0, (time.perf_counter() - t0 - 0.01) * 1000))

        with frozen_startup_heap():
            # baseline: nothing else running
            base = _Phase()
            current[0] = base
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_loop, base, done)
                await paced(base, n_turns, None)
                await sup.wait_all_idle()
                done.set()
            await mem.indexer.settle()
            progress(f"document_ingest: baseline: {len(base.sent)} turns in {n_chats} chats")

            # the big PDF arrives in the premium user's private chat; the same turns go on meanwhile
            during = _Phase()
            current[0] = during
            downloads = [0]

            async def download() -> bytes:
                downloads[0] += 1
                return big.data

            ingest = {}
            over = anyio.Event()

            async def send_document() -> None:
                ev = Incoming(DOC_CHAT, "private", 1, Sender(DOC_USER, "Bench"), "", datetime.now(UTC),
                              media=Media("document", "application/pdf", len(big.data), "report.pdf", download=download))
                t0 = time.perf_counter()
                await sup.tell(DOC_CHAT, ev)
                await sup.wait_idle(DOC_CHAT)
                t1 = time.perf_counter()
                await mem.flush()  # every chunk embedded and appended
                t2 = time.perf_counter()
                ingest.update(turn_s=t1 - t0, total_s=t2 - t0, t0=t0, t2=t2)
                over.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_loop, during, over)
                tg.start_soon(send_document)
                await paced(during, MAX_INGEST_TURNS, over)
                await over.wait()
            current[0] = None
            await sup.wait_all_idle()
            await mem.indexer.settle()
        progress(f"document_ingest: during ingest: {len(during.sent)} turns; the PDF took {ingest['total_s']:.1f} s")

        docs = await mem.store.documents.list(DOC_CHAT)
        rows = await mem.vectors.count(DOC_CHAT)
        notes_sent = [m.text for m in holder["outbox"].sent if m.chat_id == DOC_CHAT]
    doc_turn = reports.get((DOC_CHAT, 1))

    def phase_stats(phase: _Phase) -> dict:
        turns = []  # (report, delivery → report ms, that minus LLM and query embedding, report time)
        for key, t_sent in phase.sent.items():
            got = reports.get(key)
            if got is None:
                continue
            rep, t_rep = got
            e2e = (t_rep - t_sent) * 1000
            turns.append((rep, e2e, max(0.0, e2e - rep.llm_ms - rep.embed_ms), t_rep))
        # bursts: turns whose replies went out within 100 ms of >= 4 others (released together, e.g. by
        # one embedder call that carried all their queries): does their search wait for each other?
        ends = sorted(t for *_, t in turns)

        def burst(t_rep: float) -> int:
            return bisect.bisect_right(ends, t_rep + 0.1) - bisect.bisect_left(ends, t_rep - 0.1) - 1

        in_burst = [r.search_ms for r, _, _, t in turns if burst(t) >= 4]
        alone = [r.search_ms for r, _, _, t in turns if burst(t) < 4]
        return {
            "burst_search": (len(in_burst), percentile(in_burst, 50), percentile(in_burst, 99)),
            "alone_search": (len(alone), percentile(alone, 50), percentile(alone, 99)),
            "turns": len(turns),
            "missing": len(phase.sent) - len(turns),
            "answered": sum(1 for r, *_ in turns if r.responded),
            "errors": sum(1 for r, *_ in turns if r.error),
            "refused": sum(1 for r, *_ in turns if (r.error or "").startswith("refused")),
            "overhead": p50_p99([r.overhead_ms for r, *_ in turns]),
            "overhead_max": max((r.overhead_ms for r, *_ in turns), default=math.nan),
            "from_delivery": p50_p99([x for _, _, x, _ in turns]),
            "embed": p50_p99([r.embed_ms for r, *_ in turns]),
            "search": p50_p99([r.search_ms for r, *_ in turns]),
            "total": p50_p99([e for _, e, *_ in turns]),
            "stall_max": max(phase.stalls, default=math.nan),
            "stall_p99": percentile(phase.stalls, 99),
            "calls": len(phase.calls),
            "call_texts_p50": percentile([n for n, _ in phase.calls], 50),
            "call_ms": p50_p99([1000 * x for _, x in phase.calls]),
            "call_ms_max": max((1000 * x for _, x in phase.calls), default=math.nan),
            "single_calls": sum(1 for n, _ in phase.calls if n == 1),
        }

    out.update(
        base=phase_stats(base),
        during=phase_stats(during),
        ingest=ingest,
        downloads=downloads[0],
        doc=docs[0] if docs else None,
        rows=rows,
        doc_turn_error=doc_turn[0].error if doc_turn else "no report",
        doc_notes=notes_sent,
    )
    return out


# ---------------------------------------------------------------------- the result


def _result(quick, doc, build_s, extracted, chunks, extract_s, ing, big, tr, load_s, encode) -> dict:
    info = ing["info"]
    total_s = ing["total_s"]
    rec = ing["recall"]
    b, d = tr["base"], tr["during"]
    big_doc = tr["doc"]
    big_pages = big_doc.pages if big_doc else None
    big_chunks = big_doc.chunks if big_doc else None
    ingest = tr["ingest"]
    p99_delta = d["overhead"][1] - b["overhead"][1]
    metrics = [
        metric(f"ingest throughput ({info.pages}-page PDF, incl. embedding)", info.pages / total_s, "pages/s",
               target=(">=", TARGET_PAGES_S)),
        metric("ingest time (extract → chunks → DuckDB → embedded in LanceDB)", total_s, "s"),
        metric("  of which read + stored (ingest_document returns)", ing["read_store_s"], "s"),
        metric("  of which inside the model (encode)", ing["encode_s"], "s"),
        metric("chunks", info.chunks, ""),
        metric("chunk throughput", info.chunks / total_s, "chunks/s"),
        metric("ingest bytes", len(doc.data) / 1e3 / total_s, "kB/s"),
        metric("extraction + chunking alone (in-process)", extract_s, "s"),
        metric("extraction + chunking alone", extracted.pages / extract_s, "pages/s"),
        metric(f"recall@{K_RECALL} by page (dev number)", rec["all"], "%"),
    ]
    for c, (v, n) in rec["cat"].items():
        metrics.append(metric(f"  cat {c} {CATEGORIES[c]} recall@{K_RECALL} ({n} q)", v, "%"))
    metrics += [
        metric(f"questions with ≥ 1 evidence page in the top {K_RECALL}", rec["any"], "%"),
        metric("recall latency p50 (Memory.recall)", percentile(rec["lat"], 50), "ms"),
        metric("recall latency p99 (Memory.recall)", percentile(rec["lat"], 99), "ms"),
        metric("  query embedding p50", percentile(rec["lat_embed"], 50), "ms"),
        metric("  search p50", percentile(rec["lat_search"], 50), "ms"),
        metric("foreign or non-document hits (must be 0)", rec["foreign"] + rec["not_doc"], ""),
        metric("turn overhead p50, baseline", b["overhead"][0], "ms"),
        metric("turn overhead p99, baseline", b["overhead"][1], "ms"),
        metric("turn overhead p50, while the big PDF ingests", d["overhead"][0], "ms"),
        metric("turn overhead p99, while the big PDF ingests", d["overhead"][1], "ms"),
        metric("turn overhead p99 increase while it ingests", p99_delta, "ms", target=("<=", TARGET_DELAY_MS)),
        metric("turn overhead max, baseline", b["overhead_max"], "ms"),
        metric("turn overhead max, while it ingests", d["overhead_max"], "ms"),
        metric("overhead from delivery (inbox wait incl.) p50, baseline", b["from_delivery"][0], "ms"),
        metric("overhead from delivery (inbox wait incl.) p99, baseline", b["from_delivery"][1], "ms"),
        metric("overhead from delivery (inbox wait incl.) p50, while it ingests", d["from_delivery"][0], "ms"),
        metric("overhead from delivery (inbox wait incl.) p99, while it ingests", d["from_delivery"][1], "ms"),
        metric("query embedding p50, baseline (excluded from overhead)", b["embed"][0], "ms"),
        metric("query embedding p99, baseline (excluded from overhead)", b["embed"][1], "ms"),
        metric("query embedding p50, while it ingests (excluded)", d["embed"][0], "ms"),
        metric("query embedding p99, while it ingests (excluded)", d["embed"][1], "ms"),
        metric("recall search p50, baseline", b["search"][0], "ms"),
        metric("recall search p99, baseline", b["search"][1], "ms"),
        metric("recall search p50, while it ingests", d["search"][0], "ms"),
        metric("recall search p99, while it ingests", d["search"][1], "ms"),
        metric("delivery → reply p99, baseline", b["total"][1], "ms"),
        metric("delivery → reply p99, while it ingests", d["total"][1], "ms"),
        metric("delivery → reply p99 increase while it ingests (what a user waits; same bound)",
               d["total"][1] - b["total"][1], "ms", target=("<=", TARGET_DELAY_MS)),
        metric("event-loop worst stall, baseline", b["stall_max"], "ms"),
        metric("event-loop worst stall, while it ingests", d["stall_max"], "ms"),
        metric("embedder model call p50, baseline", b["call_ms"][0], "ms"),
        metric("embedder model call p99, baseline", b["call_ms"][1], "ms"),
        metric("embedder model call p50, while it ingests", d["call_ms"][0], "ms"),
        metric("embedder model call max, while it ingests", d["call_ms_max"], "ms"),
        metric("big PDF: read + stored (its turn)", ingest.get("turn_s"), "s"),
        metric("big PDF: until every chunk is embedded", ingest.get("total_s"), "s"),
        metric("big PDF: throughput", big_pages / ingest["total_s"] if big_pages and ingest.get("total_s") else None, "pages/s"),
        metric("model load (excluded)", load_s, "s"),
        metric("document reader process start (excluded)", ing["reader_start_s"], "s"),
    ]
    stages = ing["stages"]
    profile = [
        (f"{info.pages}-page ingest, {total_s:.2f} s in all; wall time per stage (stages overlap: the "
         "indexer embeds batch n+1 while batch n is appended; the embedder's time includes queueing):"),
    ]
    for name, (secs, calls) in stages.items():
        profile.append(f"  {name:<48} {secs:7.2f} s  {100 * secs / total_s:5.1f} %  {calls:4d} calls")
    profile.append(f"  {'inside the model (encode_batch)':<48} {ing['encode_s']:7.2f} s  "
                   f"{100 * ing['encode_s'] / total_s:5.1f} %  {ing['encode_calls']:4d} calls, {ing['encode_items']} texts")
    profile.append(f"  extraction + chunking alone, in-process: {extract_s:.2f} s ({extracted.chars} chars, "
                   f"{len(chunks)} chunks of ≤ {common.default_config().settings.media.chunk_chars} chars)")
    bs, ba, ds, da = b["burst_search"], b["alone_search"], d["burst_search"], d["alone_search"]
    notes = [
        (f"the document: {doc.pages} A4 pages, helvetica {FONT_PT} pt, {len(doc.data) / 1e3:.0f} kB, {doc.lines} lines "
         f"({doc.chars} chars) of the LoCoMo dev conversations, one dialog turn per line, never across a page; "
         f"built in {build_s:.1f} s (not timed)"),
        (f"recall: {rec['questions']} questions of categories 1-4 whose evidence turns all lie in the document "
         f"({rec['skipped']} others skipped); score = |evidence pages ∩ pages of the top-{K_RECALL} hits| / |evidence pages|"),
        (f"big PDF: {len(big.data) / 1e6:.2f} MB ({len(big.data) / 2**20:.2f} MiB), {big.pages} pages of #ubuntu lines "
         f"and LoCoMo turns, a {big.image_side}² px random-pixel image per page; read as "
         f"{big_pages} pages, {big_chunks} chunks, {tr['rows']} rows in LanceDB; downloaded {tr['downloads']}×"
         + (f"; its turn reported an error: {tr['doc_turn_error']}" if tr["doc_turn_error"] else "")),
        (f"turns: {tr['chats']} group chats with {tr['history']} #ubuntu messages each already in memory; one real "
         f"#ubuntu line every {INTERVAL_S * 1000:.0f} ms round-robin, all answered (kith/recall); baseline "
         f"{b['turns']} turns, during ingest {d['turns']} turns (sent between the PDF's arrival and its last chunk "
         f"embedded); refused {b['refused']}/{d['refused']}, errors {b['errors']}/{d['errors']}, unreported "
         f"{b['missing']}/{d['missing']}"),
        (f"embedder model calls: baseline {b['calls']} ({b['single_calls']} of one text, texts per call p50 "
         f"{b['call_texts_p50']:g}); while it ingests {d['calls']} ({d['single_calls']} of one text, texts per call "
         f"p50 {d['call_texts_p50']:g}). A query waits for the call in progress, and rides in a call topped up "
         "with bulk texts (up to embed_batch) when bulk work is queued"),
        ("recall search (after the query embedding) of turns that finished within 100 ms of ≥ 4 others vs the rest: "
         f"baseline {bs[0]} turns p50 {bs[1]:.1f} / p99 {bs[2]:.1f} ms vs {ba[0]} turns p50 {ba[1]:.1f} / p99 "
         f"{ba[2]:.1f} ms; while it ingests {ds[0]} turns p50 {ds[1]:.1f} / p99 {ds[2]:.1f} ms vs {da[0]} turns "
         f"p50 {da[1]:.1f} / p99 {da[2]:.1f} ms"),
        ("overhead = TurnReport.overhead_ms (total − LLM − query embedding, from the actor taking the message); "
         "'from delivery' also counts the wait in the chat's inbox; the query embedding is excluded from both "
         "but reported, since a user waits for it too. The issue's target is checked on TurnReport.overhead_ms; "
         "the same 100 ms bound is also applied to delivery → reply (LLM and query embedding included: the wait "
         "a user sees), since the query embedding queues behind the document's bulk embedding calls"),
        "the reader process was started before each measurement (a bot starts it once, on its first document)",
    ]
    if tr["doc_notes"]:
        notes.append(f"the bot's note to the PDF's sender: {tr['doc_notes'][-1]!r}")
    return {
        "description": "PDF ingest pages/s (real LoCoMo text, real embeddings), recall@5 by page, other chats' "
                       "turn overhead while a big PDF ingests",
        "params": {
            "pages": doc.pages,
            "pdf_kb": round(len(doc.data) / 1e3),
            "chunks": info.chunks,
            "questions": rec["questions"],
            "big_pdf_mb": round(len(big.data) / 1e6, 2),
            "big_pages": big_pages,
            "big_chunks": big_chunks,
            "chats": tr["chats"],
            "turns_baseline": b["turns"],
            "turns_during_ingest": d["turns"],
            "embedding": encode.label,
            "torch_threads": common.torch_threads(),
            "quick": quick,
        },
        "metrics": metrics,
        "profile": profile,
        "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(common.main_single("document_ingest", run))
