"""Second full-text hops of recall, built from the best rows of the first (``memory.retrieval``).

A multi-hop or open-domain question ("What did Caroline do after the race?", "What are Melanie's
hobbies?") is answered by several turns, and only some of them share words with the question; the
others share words with the turns that do — the name of the place, the person, the day. After
fusion and the neighbouring turns, the ``feedback_docs`` best rows (the pseudo-relevant set) give
the terms of one more BM25 query over the same chat, and its rows join the candidates:

- **entity links** (``entity_weight``): the named entities of those rows — capitalised words not
  at the start of a sentence, numbers — that the question does not already hold and that are not
  a sender of the chat (every row's content names its sender), at most ``feedback_terms``, ranked
  by the summed scores of the rows holding them. A row of the second hop gains ``entity_weight`` ×
  its normalised BM25 of that query, scaled like a neighbour's bonus by its own similarity to the
  question (``neighbour_floor + (1 - neighbour_floor) × cos_norm``): a line that names the same
  thing but is unrelated to the question is lifted less.
- **RM3** (``rm3_weight``; Abdul-Jaleel et al., TREC 2004; Anserini's defaults: 10 documents, 10
  terms, original query weight 0.5): the relevance model P(w|R) ∝ Σ_d score(d) · P(w|d) over those
  rows (stop words out, P(w|d) = 1 / distinct terms of d: chat lines seldom repeat a word), its
  ``feedback_terms`` likeliest terms as the second query; the lexical part of every candidate
  becomes ``(1 - rm3_weight) · its BM25 / max + rm3_weight · its feedback BM25 / max`` — BM25 being
  a sum over query terms, this is the interpolated query with the feedback terms weighted alike
  (LanceDB's match query has no per-term weight).

Both hops read LanceDB's full-text index once each (concurrently), after fusion: unlike the
first full-text leg they cannot hide behind the question's embedding. Query decomposition by an
LLM (sub-questions per hop) is not done here: recall has no LLM, and the turn's model is not called
before recall. Nothing here knows any data set.

Measured on the LoCoMo development set (``benchmarks/recall_locomo.py``, ``+`` rows; 760
questions, recall@10 / @25; openvino fp32, AMD EPYC, 2 shared cores, 2026-12-06; dev numbers), on
top of the full method's 77.5 / 86.5 (@5 68.5): entity links 77.6 / 86.8 (@5 69.7; multi-hop
+0.5 / +0.2, open-domain ±0 / +2.3, single-hop and temporal ±0 at 10; recall@10 better in 1 of the 5
conversations, worse in none) for ~4 ms more search after the embedding (recall p95 over 25 ms);
RM3 76.6 / 86.2 (@5 63.9; worse in all 5 conversations: the best chat lines share their small
talk — "wow", "awesome", "love" — more than their topic, and RM3 has no idf to tell them apart).
Both stay off (``RetrievalSettings.entity_weight`` / ``rm3_weight`` 0); ``kith bench recall_locomo``
keeps measuring them (its ``+`` rows).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable

from providers.language import STOP_WORDS

from .retrieval import Candidate, Fusion, RetrievalSettings
from .vector_rows import Row

__all__ = ["entity_terms", "merge_entity_hop", "merge_rm3_hop", "rm3_terms"]

#: a word that starts with a capital (any script that has case) or a number; "'s" and the like cut
_ENTITY_RE = re.compile(r"(?<![\w'’])(?:[^\W\d_a-z][\w'’-]*|\d[\d.,:/-]*\d|\d)", re.UNICODE)
_SENTENCE_END = re.compile(r"(?:^|[.!?…:;\"“”()\[\]]|\n)\s*$")
_WORD_RE = re.compile(r"\w+", re.UNICODE)

Reduce = Callable[[list[str]], list[str]]


def _weights(sources: list[Candidate]) -> list[float]:
    """Each source row's weight in the feedback: its score over the best score (positive)."""
    top = max((c.score for c in sources), default=0.0)
    return [max(c.score, 0.0) / top if top > 0 else 1.0 for c in sources]


def entity_words(text: str) -> list[str]:
    """The entity-like words of ``text``: capitalised words not at a sentence's start (nor "I"),
    numbers, each once, in order."""
    out: dict[str, None] = {}
    for m in _ENTITY_RE.finditer(text or ""):
        w = m.group(0).rstrip("'’-").split("'")[0].split("’")[0]
        if not w:
            continue
        if w[0].isdigit():
            out.setdefault(w, None)
            continue
        if _SENTENCE_END.search(text[: m.start()]) or w.lower() in STOP_WORDS or len(w) < 2:
            continue
        out.setdefault(w, None)
    return list(out)


def entity_terms(sources: list[Candidate], reduce: Reduce, query_terms: Collection[str], speakers: Collection[str],
                 n: int) -> list[str]:
    """At most ``n`` index terms of the entities of ``sources`` (best first), not in the question
    nor naming a sender, by the summed weights of the rows holding them."""
    names = _name_words(speakers)
    skip = set(query_terms) | set(reduce(sorted(names)))
    score: dict[str, float] = {}
    for c, w in zip(sources, _weights(sources)):
        words = [x.lower() for x in entity_words(c.row.get("text") or "")]
        for t in set(reduce([x for x in words if not _names_a_sender(x, names)])):
            if t not in skip:
                score[t] = score.get(t, 0.0) + w
    return [t for t, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _name_words(speakers: Collection[str]) -> frozenset[str]:
    return frozenset(w.lower() for sp in speakers for w in _WORD_RE.findall(sp))


def _names_a_sender(word: str, names: frozenset[str]) -> bool:
    """``word`` is a sender's name word or a short form of one ("Mel" for Melanie, 3+ letters)."""
    return word in names or (len(word) >= 3 and any(n.startswith(word) for n in names))


def rm3_terms(sources: list[Candidate], reduce: Reduce, n: int, speakers: Collection[str] = ()) -> list[str]:
    """The ``n`` likeliest terms of the relevance model of ``sources`` (stop words and the chat's
    sender names out: every row's content holds its sender's)."""
    names = _name_words(speakers)
    p: dict[str, float] = {}
    for c, w in zip(sources, _weights(sources)):
        words = [x.lower() for x in _WORD_RE.findall(c.row.get("text") or "")]
        terms = set(reduce([x for x in words if x not in STOP_WORDS and len(x) > 1 and not _names_a_sender(x, names)]))
        for t in terms:
            p[t] = p.get(t, 0.0) + w / len(terms)
    return [t for t, _ in sorted(p.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _normalised(rows: list[Row]) -> dict[tuple[str, int], float]:
    top = max((float(r["_score"]) for r in rows), default=0.0)
    return {(r["kind"], int(r["message_id"])): float(r["_score"]) / top for r in rows} if top > 0 else {}


def merge_entity_hop(fusion: Fusion, rows: list[Row], settings: RetrievalSettings, terms: Iterable[str]) -> None:
    """Add the rows of the entity hop (each with ``_score`` and ``vector``) to ``fusion``'s
    candidates and give each its bonus (see the module)."""
    norm = _normalised(rows)
    if not norm:
        return
    fusion.add_rows(rows)
    label = ", ".join(list(terms)[:3])
    floor = settings.neighbour_floor
    for key, s in norm.items():
        c = fusion.candidates[key]
        bonus = settings.entity_weight * s * (floor + (1.0 - floor) * c.cos_norm)
        if bonus > 0:
            c.feedback += bonus
            c.parts["entity"] = bonus
            c.stages["entity"] = f"entity link ({label})"


def merge_rm3_hop(fusion: Fusion, rows: list[Row], settings: RetrievalSettings) -> None:
    """Add the rows of the RM3 hop to ``fusion``'s candidates and interpolate every candidate's
    lexical part with its feedback BM25 (see the module)."""
    norm = _normalised(rows)
    if not norm:
        return
    fusion.add_rows(rows)
    lam = settings.rm3_weight
    for key, c in fusion.candidates.items():
        own = c.parts.get("fts")
        lexical = (own / fusion.bmax if own and fusion.bmax > 0 else 0.0) * (c.parts.get("coverage", 1.0) / fusion.best_coverage)
        s = norm.get(key, 0.0)
        delta = lam * (s - lexical)
        if delta:
            c.feedback += delta
            c.parts["rm3"] = delta
            if s > 0:
                c.stages["rm3"] = "pseudo-relevance feedback (RM3)"
