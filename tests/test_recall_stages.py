"""The recall stages for stories (issue #27 item 3): session expansion (``memory.retrieval.propagate``
with ``session_span``), entity links and RM3 feedback (``memory.feedback``, second full-text hops),
and what each hit says about why it was recalled (legs' ranks, stages).

Real data: the first four sessions of LoCoMo conversation conv-26 (imported through
``import_transcript`` as the benchmark does) as chat A, the same turns with the same ids but other
words as chat B; the real embedding model, real DuckDB and LanceDB in tmp_path.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from benchmarks.common import default_config
from memory.feedback import entity_terms, entity_words, rm3_terms
from memory.retrieval import DEFAULT, Candidate, RetrievalSettings, propagate
from tests.test_retrieval import locomo_lines, write

pytestmark = pytest.mark.anyio

CHAT_A = -1004270000001
CHAT_B = -1004270000002
NO_SESSION = replace(DEFAULT, session_span=0)
ENTITY = replace(DEFAULT, entity_weight=0.5)
RM3 = replace(DEFAULT, rm3_weight=0.5)
QUESTIONS = [
    "What did Caroline research?",
    "Where did Caroline move from 4 years ago?",
    "What activities does Melanie partake in?",
    "What LGBTQ+ events has Caroline participated in?",
    "What career path has Caroline decided to persue?",
    "When did Melanie paint a sunrise?",
]


def _row(mid: int, date: datetime | None, text: str = "", name: str = "u") -> dict:
    return {"chat_id": 1, "message_id": mid, "user_id": 1, "user_name": name, "kind": "message", "text": text, "date": date}


def _reduce(words: list[str]) -> list[str]:
    return list(dict.fromkeys(w.lower() for w in words))


# ---------------------------------------------------------------------- units


def test_session_expansion_reaches_further_within_a_session_and_never_across_one():
    t0 = datetime(2023, 5, 8, 13, 0, tzinfo=UTC)
    # turns 1..8 one minute apart (a session); turn 9 a day later (the next session)
    dates = {mid: t0 + timedelta(minutes=mid) for mid in range(1, 9)} | {9: t0 + timedelta(days=1)}
    fused = {1: 2.0} | {mid: 0.0 for mid in range(2, 10)} | {9: 0.0}
    cands = [Candidate(_row(mid, dates[mid]), fused=fused[mid], cos_norm=1.0) for mid in range(1, 10)]
    propagate(cands, DEFAULT)
    by = {c.row["message_id"]: c for c in cands}
    w1, w2 = DEFAULT.neighbour_weight, DEFAULT.neighbour_weight_2
    assert by[2].neighbour == pytest.approx(w1 * 2.0) and by[3].neighbour == pytest.approx(w2 * 2.0)
    assert by[4].neighbour == pytest.approx(w2 * w1 * 2.0)  # three away: the decay continued
    assert by[7].neighbour == pytest.approx(w2 * w1**4 * 2.0)  # six away: the last one reached
    assert by[8].neighbour == 0.0  # seven away
    assert by[4].stages["neighbour"] == "neighbour of 1"
    # without the stage: ±2 only
    for c in cands:
        c.neighbour = 0.0
    propagate(cands, NO_SESSION)
    assert by[3].neighbour > 0 and by[4].neighbour == 0.0

    # a pause of more than 30 minutes ends a session: no bonus crosses it, not even to the next turn
    late = [Candidate(_row(1, t0), fused=2.0, cos_norm=1.0), Candidate(_row(2, t0 + timedelta(minutes=31)), cos_norm=1.0),
            Candidate(_row(3, t0 + timedelta(minutes=32)), cos_norm=1.0)]
    propagate(late, DEFAULT)
    assert [c.neighbour for c in late] == [0.0, 0.0, 0.0] and "neighbour" not in late[1].stages
    propagate(late, NO_SESSION)  # the stage off: id order alone, as before
    assert late[1].neighbour == pytest.approx(w1 * 2.0)


def test_settings_list_the_new_stages():
    with pytest.raises(ValueError):
        RetrievalSettings(rm3_weight=1.5)
    with pytest.raises(ValueError):
        RetrievalSettings(session_span=-1)
    assert DEFAULT.session_span == 6 and not DEFAULT.feedback  # measured: see memory/feedback.py
    assert DEFAULT.span == 6 and NO_SESSION.span == DEFAULT.neighbour_span
    labels = [label for label, _ in DEFAULT.additions()]
    assert any("entity" in label for label in labels) and any("RM3" in label for label in labels)
    assert any(s.session_span == 0 for _, s in DEFAULT.ablations())
    plain = DEFAULT.plain()
    assert not plain.session_span and not plain.feedback


def test_entity_words_are_names_and_numbers_not_sentence_starts():
    text = "Thanks! We went to Sweden with Matt Patterson in 2022. Great trip, I loved it and Mel came too."
    assert entity_words(text) == ["Sweden", "Matt", "Patterson", "2022", "Mel"]
    assert entity_words("Caroline's necklace is from her grandma.") == []  # a sentence's first word


def test_entity_terms_skip_the_question_and_the_senders():
    src = [Candidate(_row(1, None, "My trip to Sweden with Matt, Mel!"), fused=2.0),
           Candidate(_row(2, None, "Photos from Sweden and Paris."), fused=1.0)]
    terms = entity_terms(src, _reduce, query_terms=["paris"], speakers={"Melanie", "Caroline"}, n=10)
    assert terms == ["sweden", "matt"]  # Sweden in both rows first; Paris asked, Mel a sender's short name
    assert entity_terms(src, _reduce, [], {"Melanie"}, n=1) == ["sweden"]


def test_rm3_terms_weight_rows_by_score_and_drop_stop_words_and_senders():
    src = [Candidate(_row(1, None, "adoption agencies are the dream"), fused=2.0),
           Candidate(_row(2, None, "Caroline, adoption takes time"), fused=1.0)]
    terms = rm3_terms(src, _reduce, 3, speakers={"Caroline"})
    assert terms[0] == "adoption" and "the" not in terms and "caroline" not in terms and len(terms) == 3


# ---------------------------------------------------------------------- real conversation


@pytest.fixture(scope="module")
async def stages_data(tmp_path_factory, st_model):
    """Chat A: LoCoMo conv-26 sessions 1-4; chat B: the same ids with other words. Yields (memory, ids)."""
    from actors.runtime import open_memory
    from memory.importer import import_transcript

    tmp = tmp_path_factory.mktemp("stages")
    lines, ids = locomo_lines(CHAT_A, sessions=(1, 2, 3, 4))
    other = [dict(line, chat_id=CHAT_B, text=f"chat B secret {line['message_id']}: {line['text'][::-1]}") for line in lines]
    async with open_memory(default_config(), tmp / "data", model=st_model) as memory:
        for name, content in (("a", lines), ("b", other)):
            await import_transcript(memory, write(tmp / f"{name}.jsonl", content))
        yield memory, ids, {line["message_id"]: line["date"] for line in lines}
        memory.retrieval = DEFAULT


async def _recall(memory, settings, q: str, k: int = 10, chat_id: int = CHAT_A):
    memory.retrieval = settings
    try:
        return (await memory.recall(chat_id, q, k)).hits
    finally:
        memory.retrieval = DEFAULT


async def test_neighbour_bonuses_stay_within_a_session(stages_data):
    memory, _, dates = stages_data
    far = 0
    for q in QUESTIONS:
        for h in await _recall(memory, DEFAULT, q, 25):
            assert h.chat_id == CHAT_A
            for stage in h.stages:
                if stage.startswith("neighbour of "):
                    source = int(stage.removeprefix("neighbour of "))
                    assert dates[source] == dates[h.message_id]  # a LoCoMo session: one date per session
                    far += abs(source - h.message_id) > 2
    assert far  # the stage reached past ±2 somewhere
    for q in QUESTIONS:  # without it, bonuses cross sessions as before
        assert len(await _recall(memory, NO_SESSION, q, 25)) == 25


async def test_entity_links_pull_in_other_mentions_within_the_chat(stages_data):
    memory, _, _ = stages_data
    linked = []
    for q in QUESTIONS:
        hits = await _recall(memory, ENTITY, q, 25)
        assert all(h.chat_id == CHAT_A and "secret" not in h.text for h in hits)
        for h in hits:
            assert h.score == pytest.approx(h.parts["fused"] + h.parts.get("neighbour", 0.0) + h.parts.get("entity", 0.0))
            if "entity" in h.parts:
                assert any(s.startswith("entity link (") for s in h.stages)
                linked.append(h)
    assert linked
    moved = 0
    for q in QUESTIONS:  # the hop moves rows: some linked row ranks higher than without it
        before = [h.message_id for h in await _recall(memory, DEFAULT, q, 25)]
        after = [h.message_id for h in await _recall(memory, ENTITY, q, 25)]
        moved += any(m not in before[: i + 1] for i, m in enumerate(after) if i < len(before))
    assert moved
    off = await _recall(memory, DEFAULT, QUESTIONS[1], 25)
    assert not any("entity" in h.parts for h in off)


async def test_rm3_interpolates_the_lexical_part(stages_data):
    memory, _, _ = stages_data
    hits = await _recall(memory, RM3, "What did Caroline research?", 25)
    assert all(h.chat_id == CHAT_A for h in hits)
    assert any("pseudo-relevance feedback (RM3)" in h.stages for h in hits)
    for h in hits:
        assert h.score == pytest.approx(h.parts["fused"] + h.parts.get("neighbour", 0.0) + h.parts.get("rm3", 0.0))


async def test_hot_and_cold_recall_agree_with_the_hops(stages_data):
    """The second hops on a hot chat (vectors from RAM) rank as on LanceDB."""
    memory, _, _ = stages_data
    both = replace(DEFAULT, entity_weight=0.5, rm3_weight=0.5)
    for q in QUESTIONS[:3]:
        memory.vectors.hot.drop(CHAT_A)
        cold = await _recall(memory, both, q)
        assert memory.vectors.hot.get(CHAT_A) is not None  # loaded after the cold recall
        hot = await _recall(memory, both, q)
        assert [h.message_id for h in hot] == [h.message_id for h in cold]
        assert [h.stages for h in hot] == [h.stages for h in cold]


async def test_hits_say_which_legs_found_them(stages_data):
    memory, _, _ = stages_data
    hits = await _recall(memory, DEFAULT, "What did Caroline research?", 10)
    assert any(h.fts_rank == 1 for h in hits) and any(h.vector_rank == 1 for h in hits)
    assert all(h.fts_rank is not None or h.vector_rank is not None or h.stages for h in hits)
    assert all(s for h in hits for s in h.stages)
    memory.retrieval = None  # the bare RRF hybrid ranks the legs too
    try:
        rrf = (await memory.recall(CHAT_A, "What did Caroline research?", 5)).hits
    finally:
        memory.retrieval = DEFAULT
    assert all(h.fts_rank is not None or h.vector_rank is not None for h in rrf) and all(not h.stages for h in rrf)
