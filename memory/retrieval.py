"""Retrieval stages of recall: query handling, score fusion, speaker mentions, neighbouring turns.

``Memory.recall`` runs, for one chat (every LanceDB read pre-filtered to it):

1. **query handling** — the question is embedded with the chat's speaker names taken out
   (``strip_speakers``: messages are embedded without their sender, so "What did Caroline
   research?" embedded with the name lands on greetings that say "Caroline" rather than on what she
   said); the full-text query drops function and question words (``query_terms``).
2. **candidates** — the vector leg (cosine) and the full-text leg (BM25 over ``content`` =
   sender, date and text) each return ``pool`` rows; the full-text leg also returns the rows'
   vectors, so every candidate has an exact cosine.
3. **score fusion** (``Fusion``) — ``coverage / max coverage · bm25 / max bm25 + vector_weight · min-max(cos)``
   over the candidates (a row both legs like beats a row one leg loves; ranks would throw the
   margins away), plus ``speaker_boost`` for a row whose sender the question names. ``coverage`` is
   the share of the query's distinct terms the row holds (Lucene's "coord" factor): BM25's length
   normalisation and the cosine of a short line to a short question used to put two-word replies
   holding one term (or only the sender's name) above the message holding them all.
4. **neighbouring turns** (``propagate``) — the turns around the ``neighbour_sources`` best
   full-text hits are read while the question is still being embedded (``neighbour_ids``; around
   the best vector hits instead, afterwards, when full text found nothing) and scored like the
   candidates (cosine, sender); each row then inherits
   ``neighbour_weight`` of the better fused score of the turns next to it (±1) or
   ``neighbour_weight_2`` of the turns two away (±2): the answer to a question often only makes
   sense next to the question ("what did you research?" — "adoption agencies"). A row keeps
   ``neighbour_floor`` of that bonus whatever it says and the rest in proportion to its own
   (normalised) similarity, so in an interleaved channel an unrelated line next to a strong hit is
   not lifted as far as a related one. **Session expansion** (``session_span``): within one session
   (no pause over ``session_gap_s``, 30 minutes) the bonus reaches turns up to 6 away with the ±1/±2
   weights' decay continued (0.35, 0.25, 0.17, 0.12), and no bonus crosses a session break: a story
   is told over a few turns of one sitting, and the turn after a day's pause belongs to another.
   The reach ends where that decay falls below a tenth of the hit's score (turn 7 would get 0.08);
   30 minutes is the common session timeout; neither was fitted to a data set.
5. **second hops** (``memory.feedback``; off by default, see there): entity links and RM3
   pseudo-relevance feedback, one more full-text query each, built from the best rows.

Measured on the LoCoMo development set (``python -m benchmarks.recall_locomo``; recall@10/@25 over
760 questions; openvino, 2026-12-06): the legs fused by score alone 64.7/73.8; full method 77.5/86.5
(77.3/86.5 without session expansion — multi-hop +0.4, single-hop +0.2, temporal and open-domain ±0
at 10, recall@5 −0.3; recall@10 better in 3 of the 5 conversations, worse in 1 by 0.3; 76.0/86.2
before the coverage factor; 75.9/86.1 with it switched off now; 78.2/86.6 with the plain
share of terms, which cost Russian inflected-word recall 3.7 points: see ``Fusion.coverage``);
without neighbours 73.3/82.2; speaker names kept in the embedded question 73.5/82.4; without the
speaker boost 76.4/85.4; rank fusion instead of score fusion 73.0/84.4; no date in the content
76.1/85.2; stop words kept in the full-text query 78.3/86.0 (the list mainly makes the query shorter).
``RetrievalSettings.ablations()`` lists the switches the benchmark turns off one at a time.
Nothing here knows about any data set: the same code serves Telegram groups and IRC logs.

Tried for multi-hop questions and not kept (LoCoMo dev, recall@10/@25, 2026-12-06, against the full
method's 77.5/86.5, multi-hop 44.1/65.5 — dev numbers): **session diversity** (greedy top k, each row
already taken from the same session multiplying a row's score by c, "host crowding"): c = 0.9
74.4/84.4 (multi-hop 45.5), 0.7 66.6/78.5 — the answer of a single-hop question is often the third
or fourth row of the one right session; crowding only the neighbour bonus: 0.8 75.4/84.7.
**Dense pseudo-relevance feedback** (Rocchio: the question's vector plus β · the mean vector of the d
best rows, the vector leg and fusion run again): d 3 β 0.5 77.7/86.5, d 5 β 1 77.0/85.7 (noise).
**Contextual embeddings** (a turn embedded after the previous turn of its session), the vector leg
alone: 61.6/76.4 → 59.4/72.0 (temporal −15, open-domain −14 at 10). **MMR** over the best 50 (each
row's score minus λ · its largest cosine to a row already taken): λ 0.1 77.6/86.1, 0.5 77.0/86.0
(multi-hop 44.0, 42.6). **A second vector leg over the named speaker's rows** (10–60 more rows when the
question names a member): 77.5–77.2/86.5–85.8 — the evidence is already among the candidates (at
rank ≤ 100 for 85 % of the multi-hop evidence), it is ranked low (pools of 300). **Larger pools** (60–300 per leg):
77.2–78.8/85.7–86.1, noise around the default. 62 % of the multi-hop evidence missed at 10 shares no
content word with the question (speaker names aside). What multi-hop lacks is
evidence that shares no word and little meaning with the question ("activities" → "a pottery
class"): query planning by an LLM (``actors.query_plan``) and memory entries address it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from providers.language import STOP_WORDS, held_terms

from .types import MemoryHit
from .vector_rows import RRF_K, Row, content_text

__all__ = [
    "DEFAULT",
    "Candidate",
    "Fusion",
    "Mentions",
    "RetrievalSettings",
    "find_speakers",
    "ids_around_fts",
    "neighbour_ids",
    "propagate",
    "query_terms",
    "to_hit",
]

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_MIN_NAME_LEN = 3  # a name term shorter than this is never taken as a mention


@dataclass(frozen=True, slots=True)
class RetrievalSettings:
    """Knobs of the recall stages (defaults: the measured best on the development set).

    fusion: ``"score"`` (normalised scores, weighted sum) or ``"rrf"`` (reciprocal rank, scaled to
    a best row of 1.0, for comparison). pool: candidates per leg. vector_weight: weight of the
    min-max normalised cosine against BM25 / max BM25. speaker_boost: added when the row's sender
    is named in the question. strip_speakers: embed the question without the chat's speaker names.
    drop_stop_words: leave function/question words out of the full-text query.
    foreign_vector_weight: share of ``vector_weight`` kept for a question in a language the
    embedding model was not trained on (``Memory.embedding_languages``; all-MiniLM-L6-v2 knows
    English): its cosine is then a weak signal, and full text leads.
    coverage: scale a row's BM25 part by the share of the query's distinct terms it holds
    (``Fusion.coverage``; Lucene's classic "coord" factor), so that a short row holding one of
    them no longer outranks the row that holds them all.
    neighbour_weight / neighbour_weight_2: share of the fused score of the turn ±1 / ±2 away that a
    row inherits (0 and 0 switch the stage off). neighbour_floor: part of that bonus a row gets
    even with no similarity of its own (the rest scales with its min-max cosine).
    neighbour_sources: how many of the best full-text hits have their surrounding turns read
    (measured: around the best 10 full-text hits is as good as around the best 20 fused ones, and
    can be read during the embedding). neighbour_span: message ids searched on each side of them
    (and the largest id gap still taken as adjacent; bot replies and deleted messages leave gaps).
    session_span: 0 (off), or how many turns away a row still inherits from a hit when every turn
    between them belongs to the same session — no two consecutive turns more than ``session_gap_s``
    apart (30 minutes: the usual inactivity timeout of a web or chat session): turn ±d (d ≥ 3)
    inherits ``neighbour_weight_2 · neighbour_weight^(d-2)`` (the ±1/±2 weights' decay, continued),
    and with the stage on, no neighbour bonus crosses a session break.
    entity_weight / rm3_weight: 0 (off), or the weight of a second full-text hop built from the
    ``feedback_docs`` best rows (``memory.feedback``): their named entities (entity links) or their
    ``feedback_terms`` most likely terms (RM3 pseudo-relevance feedback).
    """

    fusion: str = "score"
    pool: int = 30
    vector_weight: float = 1.0
    speaker_boost: float = 0.2
    strip_speakers: bool = True
    drop_stop_words: bool = True
    foreign_vector_weight: float = 0.5
    coverage: bool = True
    neighbour_weight: float = 0.7
    neighbour_weight_2: float = 0.5
    neighbour_floor: float = 0.5
    neighbour_sources: int = 10
    neighbour_span: int = 4
    session_span: int = 6
    session_gap_s: float = 1800.0
    entity_weight: float = 0.0
    rm3_weight: float = 0.0
    feedback_docs: int = 10
    feedback_terms: int = 10

    def __post_init__(self) -> None:
        if self.fusion not in ("score", "rrf"):
            raise ValueError(f"fusion must be 'score' or 'rrf', not {self.fusion!r}")
        if self.pool < 1 or self.neighbour_sources < 0 or self.neighbour_span < 1:
            raise ValueError("pool >= 1, neighbour_sources >= 0 and neighbour_span >= 1 are required")
        if not 0.0 <= self.neighbour_floor <= 1.0:
            raise ValueError("neighbour_floor must be within 0..1")
        if self.session_span < 0 or self.feedback_docs < 1 or self.feedback_terms < 1 or not 0.0 <= self.rm3_weight <= 1.0:
            raise ValueError("session_span >= 0, feedback_docs >= 1, feedback_terms >= 1 and rm3_weight within 0..1 are required")

    @property
    def span(self) -> int:
        """Message ids read on each side of a neighbour source."""
        return max(self.neighbour_span, self.session_span if self.session_span > 2 else 0)

    @property
    def feedback(self) -> bool:
        return self.entity_weight > 0 or self.rm3_weight > 0

    @property
    def neighbours(self) -> bool:
        return self.neighbour_sources > 0 and (self.neighbour_weight > 0 or self.neighbour_weight_2 > 0)

    def ablations(self) -> list[tuple[str, RetrievalSettings]]:
        """``(label, settings)`` with one stage switched off each, for the benchmark's ablation rows."""
        return [
            ("rank fusion (RRF) instead of score fusion", replace(self, fusion="rrf")),
            ("no neighbouring turns", replace(self, neighbour_weight=0.0, neighbour_weight_2=0.0)),
            ("neighbours ±1 only", replace(self, neighbour_weight_2=0.0)),
            ("neighbour bonus not scaled by own similarity", replace(self, neighbour_floor=1.0)),
            ("no speaker boost", replace(self, speaker_boost=0.0)),
            ("speaker names kept in the embedded query", replace(self, strip_speakers=False)),
            ("stop words kept in the BM25 query", replace(self, drop_stop_words=False)),
            ("full vector weight in any language", replace(self, foreign_vector_weight=1.0)),
            ("no term coverage factor", replace(self, coverage=False)),
            ("pool 60 per leg", replace(self, pool=60)),
            *([("no session expansion (neighbours ±2, across sessions)", replace(self, session_span=0))]
              if self.session_span else []),
        ]

    def additions(self) -> list[tuple[str, RetrievalSettings]]:
        """``(label, settings)`` with one of the stages that are off switched on each (standard or
        first-principles parameters, see the class), for the benchmark's rows."""
        rows = []
        if not self.session_span:
            rows.append(("session expansion (±6 turns, 30 min gap)", replace(self, session_span=6)))
        if not self.entity_weight:
            rows.append(("entity links (second hop, weight 0.5)", replace(self, entity_weight=0.5)))
        if not self.rm3_weight:
            rows.append(("RM3 feedback (10 docs, 10 terms, 0.5)", replace(self, rm3_weight=0.5)))
        return rows

    def plain(self) -> RetrievalSettings:
        """Every stage off: the two legs fused by score alone."""
        return replace(
            self, speaker_boost=0.0, strip_speakers=False, drop_stop_words=False, coverage=False, neighbour_weight=0.0,
            neighbour_weight_2=0.0, session_span=0, entity_weight=0.0, rm3_weight=0.0,
        )


DEFAULT = RetrievalSettings()


# ---------------------------------------------------------------------- query handling


def query_terms(terms: Iterable[str], drop_stop_words: bool = True) -> list[str]:
    """The full-text terms worth searching: ``terms`` (from ``vectors.fts_terms``) without stop
    words — unless nothing else is left ("who is it?"), then all of them."""
    terms = list(terms)
    if not drop_stop_words:
        return terms
    kept = [t for t in terms if t not in STOP_WORDS]
    return kept or terms


def _name_forms(name: str) -> list[str]:
    """Lower-cased ways a question can name a sender: the whole name and its first word (the
    first name), when long enough and not a stop word."""
    words = [w.lower() for w in _WORD_RE.findall(name or "")]
    if not words:
        return []
    forms = []
    full = " ".join(words)
    if len(full) >= _MIN_NAME_LEN and full not in STOP_WORDS:
        forms.append(full)
    if len(words) > 1 and len(words[0]) >= _MIN_NAME_LEN and words[0] not in STOP_WORDS:
        forms.append(words[0])
    return forms


@lru_cache(maxsize=256)
def _speaker_index(speakers: frozenset[str]) -> tuple[dict[tuple[str, ...], frozenset[str]], int]:
    """``{name form as a word tuple: the senders it names}`` and the longest form, per speaker set."""
    by_form: dict[tuple[str, ...], set[str]] = {}
    longest = 1
    for sp in speakers:
        for form in _name_forms(sp):
            key = tuple(form.split())
            by_form.setdefault(key, set()).add(sp)
            longest = max(longest, len(key))
    return {k: frozenset(v) for k, v in by_form.items()}, longest


@dataclass(frozen=True, slots=True)
class Mentions:
    """Which of the chat's senders a question names, and the question with those names taken out."""

    names: frozenset[str] = frozenset()  # the senders' names as stored (``user_name``)
    stripped: str = ""  # the question without the name words ("" when nothing is left)


def find_speakers(query: str, speakers: Collection[str]) -> Mentions:
    """Find the chat's ``speakers`` named in ``query`` (whole words, case-insensitive, possessive
    "'s" included; a multi-word name by its full form or its first word). Cost: one pass over the
    question's words plus one dict lookup each; the speaker set may be large (an IRC channel)."""
    if not query or not speakers:
        return Mentions(frozenset(), query or "")
    by_form, longest = _speaker_index(frozenset(speakers))
    spans = [(m.start(), m.end(), m.group(0).lower()) for m in _WORD_RE.finditer(query)]
    found: set[str] = set()
    cut: list[tuple[int, int]] = []
    i = 0
    while i < len(spans):
        for n in range(min(longest, len(spans) - i), 0, -1):
            key = tuple(w for _, _, w in spans[i : i + n])
            if key in by_form:
                found |= by_form[key]
                end = spans[i + n - 1][1]
                if query[end : end + 2] in ("'s", "’s"):
                    end += 2
                cut.append((spans[i][0], end))
                i += n
                break
        else:
            i += 1
    if not cut:
        return Mentions(frozenset(), query)
    out, pos = [], 0
    for a, b in cut:
        out.append(query[pos:a])
        pos = b
    out.append(query[pos:])
    stripped = re.sub(r"\s+", " ", "".join(out)).strip()
    return Mentions(frozenset(found), stripped if _WORD_RE.search(stripped) else "")


# ---------------------------------------------------------------------- fusion


@dataclass(slots=True)
class Candidate:
    """One row considered for a recall: the row (``_RESULT_COLUMNS``), its leg scores, its fused
    score and the bonus it inherits from its neighbours."""

    row: Row
    cos: float | None = None
    bm25: float | None = None
    vector_rank: int | None = None
    fts_rank: int | None = None
    fused: float = 0.0
    coverage: float = 1.0  # share of the query's distinct full-text terms the row holds (``Fusion.coverage``)
    cos_norm: float = 0.0  # min-max normalised cosine within the query's candidates, 0..1
    speaker: float = 0.0
    neighbour: float = 0.0
    feedback: float = 0.0  # what the second full-text hops add (``memory.feedback``)
    parts: dict[str, float] = field(default_factory=dict)
    stages: dict[str, str] = field(default_factory=dict)  # stage -> what it did ("neighbour": "neighbour of 41")

    @property
    def key(self) -> tuple[str, int]:
        return (self.row["kind"], int(self.row["message_id"]))

    @property
    def score(self) -> float:
        return self.fused + self.neighbour + self.feedback


def _cos(query_vector: np.ndarray | None, vec: np.ndarray | None) -> float | None:
    if query_vector is None or vec is None:
        return None
    return float(np.dot(np.asarray(vec, dtype=np.float32), query_vector))


class Fusion:
    """Fuses the two legs of one query and scores any further row of the same query alike.

    vector_rows: best first, each with ``_cos``. fts_rows: best first, each with ``_score`` (BM25)
    and ``vector``. Normalisation constants come from the candidates: max BM25, min/max cosine.
    terms: the full-text query's terms (as the index reduces words, ``providers.language``), for the
    coverage factor; none: no factor.
    """

    def __init__(
        self,
        vector_rows: list[Row],
        fts_rows: list[Row],
        query_vector: np.ndarray | None,
        settings: RetrievalSettings,
        mentioned: Collection[str] = (),
        terms: Collection[str] = (),
    ) -> None:
        self.settings = settings
        self.query_vector = query_vector
        self.mentioned = frozenset(mentioned)
        self.terms = frozenset(terms)
        self.candidates: dict[tuple[str, int], Candidate] = {}
        for rank, r in enumerate(vector_rows, start=1):
            c = self._get(r)
            c.cos, c.vector_rank = float(r["_cos"]), rank
        for rank, r in enumerate(fts_rows, start=1):
            c = self._get(r)
            c.bm25, c.fts_rank = float(r["_score"]), rank
            if c.cos is None:
                c.cos = _cos(query_vector, r.get("vector"))
        cos = [c.cos for c in self.candidates.values() if c.cos is not None]
        self.cmin, self.cmax = (min(cos), max(cos)) if cos else (0.0, 0.0)
        self.best_coverage = 1.0
        if settings.coverage and self.terms and settings.fusion == "score":
            for c in self.candidates.values():
                if c.bm25:
                    c.coverage = self.coverage(c.row)
            self.best_coverage = max((c.coverage for c in self.candidates.values() if c.bm25), default=1.0) or 1.0
        self.bmax = max((c.bm25 for c in self.candidates.values() if c.bm25), default=0.0)
        self.rrf_max = max((self._rrf(c) for c in self.candidates.values()), default=0.0)
        for c in self.candidates.values():
            self._score(c)

    def _get(self, r: Row) -> Candidate:
        key = (r["kind"], int(r["message_id"]))
        c = self.candidates.get(key)
        if c is None:
            row = {k: v for k, v in r.items() if k not in ("vector", "_cos", "_score")}
            c = self.candidates[key] = Candidate(row)
        return c

    @staticmethod
    def _rrf(c: Candidate) -> float:
        return sum(1.0 / (RRF_K + r) for r in (c.vector_rank, c.fts_rank) if r is not None)

    def cos_norm(self, cos: float | None) -> float:
        if cos is None or self.cmax - self.cmin < 1e-9:
            return 0.0
        return min(1.0, max(0.0, (cos - self.cmin) / (self.cmax - self.cmin)))

    def coverage(self, row: Row) -> float:
        """The share of the query's distinct terms that ``row`` holds, its ``content`` (sender, day,
        text) reduced as the index reduced it: 1.0 when it holds them all (or there are none).

        BM25 sums its terms' weights, but its length normalisation lifts a short row far above a
        long one (a term weighs up to (k1 + 1) / (1 + k1 (1 - b)) = 1.7 times its weight at average
        length in a very short row, 0.55 times in a row three times that long), and all-MiniLM-L6-v2
        gives a short line a high cosine to a short question: a two-word reply that holds the
        rarest query term, or only the sender's name, outranked the message that holds every term.
        Scaling the BM25 part by this share is Lucene's classic "coord" factor; it has no constant.
        ``_score`` divides it by the best share among the full-text hits (as BM25 by the best BM25):
        when no row holds every term — a query word in another inflection the stemmer does not
        meet — the rows holding the most keep their full weight against the vector leg's rows.
        (Russian inflected-word recall@10: 84.0 % with the plain share, 87.7 without a factor.)"""
        if not self.terms:
            return 1.0
        held = _row_terms(_content(row), row.get("text") or "")
        return len(self.terms & held) / len(self.terms)

    def _score(self, c: Candidate) -> None:
        s = self.settings
        parts: dict[str, float] = {}
        if c.cos is not None:
            parts["vector"] = c.cos
        if c.bm25 is not None:
            parts["fts"] = c.bm25
        c.cos_norm = self.cos_norm(c.cos)
        if s.fusion == "rrf":
            fused = self._rrf(c) / self.rrf_max if self.rrf_max > 0 else 0.0
        else:
            lexical = c.bm25 / self.bmax if c.bm25 and self.bmax > 0 else 0.0
            if lexical and s.coverage and self.terms:
                parts["coverage"] = c.coverage
                lexical *= c.coverage / self.best_coverage
            fused = lexical + s.vector_weight * c.cos_norm
        if s.speaker_boost and c.row.get("user_name") in self.mentioned:
            c.speaker = s.speaker_boost
            parts["speaker"] = s.speaker_boost
            c.stages["speaker"] = "sender named in the question"
        c.fused = fused + c.speaker
        parts["fused"] = c.fused
        c.parts = parts

    def add_rows(self, rows: Iterable[Row]) -> None:
        """Rows found only as neighbours (each with ``vector``): scored by cosine and sender alone."""
        for r in rows:
            key = (r["kind"], int(r["message_id"]))
            if key in self.candidates:
                continue
            c = self._get(r)
            c.cos = _cos(self.query_vector, r.get("vector"))
            self._score(c)

    def best(self, n: int) -> list[Candidate]:
        return sorted(self.candidates.values(), key=_order)[:n]

    def ids_around_best(self) -> list[int]:
        """The message ids around the ``neighbour_sources`` best candidates that are not candidates
        yet (what the neighbour stage reads when the full-text leg found nothing)."""
        s = self.settings
        sources = [c.row["message_id"] for c in self.best(s.neighbour_sources)]
        return neighbour_ids(sources, s.span, {mid for _, mid in self.candidates})


def _content(row: Row) -> str:
    return content_text(row.get("user_name") or "", row.get("text") or "", row.get("date"), row.get("source"), row.get("page"))


@lru_cache(maxsize=2048)
def _row_terms(content: str, text: str) -> frozenset[str]:
    """The distinct terms the index may hold for a row (``language.held_terms``)."""
    return held_terms(content, text)


def _order(c: Candidate) -> tuple[float, float, int]:
    return (-c.score, -(c.cos if c.cos is not None else -2.0), c.row["message_id"])


# ---------------------------------------------------------------------- neighbouring turns


def neighbour_ids(sources: Iterable[int], span: int, known: Collection[int] = ()) -> list[int]:
    """The message ids within ``span`` of any source id, minus the ``known`` ones (already
    scored), sorted: what the neighbour stage reads. Each row read costs a random read in lance
    (~20 us), so rows the legs already returned are not read again."""
    want = {i for s in sources for i in range(int(s) - span, int(s) + span + 1)}
    return sorted(want.difference(known))


def ids_around_fts(fts_rows: list[Row], settings: RetrievalSettings) -> list[int]:
    """The message ids around the ``neighbour_sources`` best full-text hits (``fts_rows``, best
    first), minus those hits: what the neighbour stage reads."""
    sources = [r["message_id"] for r in fts_rows[: settings.neighbour_sources]]
    return neighbour_ids(sources, settings.span, {r["message_id"] for r in fts_rows})


def propagate(candidates: Iterable[Candidate], settings: RetrievalSettings) -> None:
    """Give every candidate ``neighbour_weight`` × the best fused score of the rows next to it (±1)
    or ``neighbour_weight_2`` × that of the rows two away (±2) — with ``session_span``, also
    ``neighbour_weight_2 · neighbour_weight^(d-2)`` × that of a row d turns away in the same session
    — whichever is most, scaled by ``neighbour_floor + (1 - neighbour_floor) × its own normalised
    cosine``.

    Rows are ordered by message id per kind; adjacent known rows more than ``neighbour_span`` ids
    apart are not neighbours (something unseen may lie between them); with ``session_span`` neither
    are rows more than ``session_gap_s`` apart in time (another session).
    """
    w1, w2, gap = settings.neighbour_weight, settings.neighbour_weight_2, settings.neighbour_span
    floor = settings.neighbour_floor
    weights = [(1, w1), (2, w2)]
    if settings.session_span > 2 and w1 > 0 and w2 > 0:
        weights += [(d, w2 * w1 ** (d - 2)) for d in range(3, settings.session_span + 1)]
    by_kind: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_kind.setdefault(c.row["kind"], []).append(c)
    for rows in by_kind.values():
        rows.sort(key=lambda c: c.row["message_id"])
        ids = [int(c.row["message_id"]) for c in rows]
        n = len(rows)
        session = _sessions(rows, ids, gap, settings.session_gap_s) if settings.session_span else None
        for p, c in enumerate(rows):
            bonus, source = 0.0, None
            for step, w in weights:
                if w <= 0:
                    continue
                for q in (p - step, p + step):
                    if not (0 <= q < n and abs(ids[q] - ids[p]) <= gap * step):
                        continue
                    if session is not None and session[q] != session[p]:
                        continue
                    if w * rows[q].fused > bonus:
                        bonus, source = w * rows[q].fused, ids[q]
            bonus *= floor + (1.0 - floor) * c.cos_norm
            c.neighbour = bonus
            c.stages.pop("neighbour", None)
            if bonus > 0:
                c.parts["neighbour"] = bonus
                c.stages["neighbour"] = f"neighbour of {source}"


def _sessions(rows: list[Candidate], ids: list[int], id_gap: int, time_gap_s: float) -> list[int]:
    """A session number per row (ordered by id): a new one after an id gap of more than ``id_gap``
    or a pause of more than ``time_gap_s`` seconds."""
    out, n = [], 0
    prev: tuple[int, float | None] | None = None
    for c, mid in zip(rows, ids):
        d = c.row.get("date")
        t = d.timestamp() if d is not None else None
        if prev is not None:
            pid, pt = prev
            if mid - pid > id_gap or (t is not None and pt is not None and abs(t - pt) > time_gap_s):
                n += 1
        out.append(n)
        prev = (mid, t)
    return out


def to_hit(c: Candidate, hit_factory: Callable[..., MemoryHit]) -> MemoryHit:
    """The ``MemoryHit`` of a ranked candidate; ``parts`` keep every component of its score,
    ``stages`` what the stages did to it."""
    return hit_factory(c.row, c.score, dict(c.parts), vector_rank=c.vector_rank, fts_rank=c.fts_rank,
                       stages=tuple(c.stages.values()))
