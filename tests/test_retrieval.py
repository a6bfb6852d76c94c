"""Recall stages (memory/retrieval.py) on real data: query handling, score fusion, speaker mentions,
neighbouring turns — and the chat boundary on the staged path (neighbour reads included).

Real data: the first three sessions of LoCoMo conversation conv-26 (58 turns of two speakers,
imported through ``import_transcript`` as the benchmark does) and the first 300 messages of the
#ubuntu slice 2009-03-03_10. The real embedding model, real LanceDB in tmp_path.
"""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import default_config
from benchmarks.recall_locomo import conversation_transcript, data_path, parse_session_date
from memory.retrieval import (
    DEFAULT,
    Candidate,
    Fusion,
    RetrievalSettings,
    find_speakers,
    neighbour_ids,
    propagate,
    query_terms,
)
from memory.vector_rows import MemoryRow, content_text, fts_terms
from memory.vectors import VectorMemory

pytestmark = pytest.mark.anyio

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UBUNTU = SHARED / "ubuntu-irc" / "2009-03-03_10.jsonl"
LOCOMO_CHAT = -1004200000001
OTHER_CHAT = -1004200000002
NO_NEIGHBOURS = replace(DEFAULT, neighbour_weight=0.0, neighbour_weight_2=0.0)


# ---------------------------------------------------------------------- fixtures


def locomo_lines(chat_id: int, sessions=(1, 2, 3)) -> tuple[list[dict], dict[str, int]]:
    """The transcript lines of the first sessions of conv-26 and ``{dia_id: message_id}``."""
    conv = json.loads(data_path().read_text(encoding="utf-8"))[0]
    c = conv["conversation"]
    keep = {f"session_{i}" for i in sessions}
    sub = {"conversation": {k: v for k, v in c.items() if k.removesuffix("_date_time") in keep}, "sample_id": "conv-26"}
    lines, ids = conversation_transcript(sub, chat_id)
    return lines, {d: m for m, d in ids.items()}


def write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
async def recall_data(tmp_path_factory, st_model):
    """One data dir (the real import path) holding: the LoCoMo sessions as chat A; the same turns
    with the same message ids but other words as chat B (any neighbour read that crossed chats would
    return them); the first 300 #ubuntu messages. Yields (memory, {dia_id: message_id})."""
    from actors.runtime import open_memory
    from memory.importer import import_transcript

    tmp = tmp_path_factory.mktemp("retrieval")
    lines, ids = locomo_lines(LOCOMO_CHAT)
    other = [dict(line, chat_id=OTHER_CHAT, text=f"chat B secret {line['message_id']}: {line['text'][::-1]}") for line in lines]
    ubuntu = UBUNTU.read_text(encoding="utf-8").splitlines()[:300]
    async with open_memory(default_config(), tmp / "data", model=st_model) as memory:
        for name, content in (("a", lines), ("b", other)):
            await import_transcript(memory, write(tmp / f"{name}.jsonl", content))
        (tmp / "ubuntu.jsonl").write_text("\n".join(ubuntu) + "\n", encoding="utf-8")
        await import_transcript(memory, tmp / "ubuntu.jsonl")
        yield memory, ids
        memory.retrieval = DEFAULT


async def ranks(memory, question: str, wanted: list[int], settings, k: int = 10, chat_id: int = LOCOMO_CHAT) -> list[int]:
    """1-based rank of each wanted message id in the top k (99 when missing)."""
    memory.retrieval = settings
    try:
        got = [h.message_id for h in (await memory.recall(chat_id, question, k)).hits]
    finally:
        memory.retrieval = DEFAULT
    return [got.index(w) + 1 if w in got else 99 for w in wanted]


# ---------------------------------------------------------------------- query handling


def test_query_terms_drop_question_words_and_keep_the_topic():
    assert query_terms(fts_terms("What did Caroline research?")) == ["caroline", "research"]
    assert query_terms(fts_terms("How do I find out which package provides Python.h?")) == [
        "find", "package", "provides", "python", "h"
    ]
    # nothing but stop words: they are all there is to search for, so they stay
    assert query_terms(fts_terms("Who is it?")) == ["who", "is", "it"]
    assert query_terms(fts_terms("What did Caroline research?"), drop_stop_words=False) == ["what", "did", "caroline", "research"]
    assert query_terms([]) == []


def test_find_speakers_names_senders_and_strips_them_for_the_embedding():
    speakers = {"Caroline", "Melanie", "nickrud", "John Smith", "The", "Al"}
    m = find_speakers("What did Caroline's sister tell melanie?", speakers)
    assert m.names == {"Caroline", "Melanie"}
    assert m.stripped == "What did sister tell ?"
    # a whole name, or the first name of a multi-word one; whole words only
    assert find_speakers("did John Smith reply?", speakers).names == {"John Smith"}
    assert find_speakers("did John reply?", speakers).names == {"John Smith"}
    assert find_speakers("Carolines and Carol and Johnny", speakers).names == frozenset()
    # stop words and very short names are never taken as mentions
    assert find_speakers("The answer is Al's", speakers).names == frozenset()
    assert find_speakers("ask NICKRUD about apt-file", speakers).stripped == "ask about apt-file"
    # a question that is only a name leaves nothing to embed ("" → the caller embeds it whole)
    assert find_speakers("Caroline?", speakers).stripped == ""
    assert find_speakers("", speakers).names == frozenset() and find_speakers("hi", ()).stripped == "hi"


def test_content_carries_sender_and_day():
    d = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    assert content_text("Caroline", "hi there", d) == "Caroline 8 May 2023: hi there"
    assert content_text("", "x", None) == ": x"
    assert parse_session_date("1:56 pm on 8 May, 2023") == d
    assert parse_session_date("12:48 am on 1 February, 2023") == datetime(2023, 2, 1, 0, 48, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_session_date("yesterday")


def test_settings_validate_and_list_their_ablations():
    with pytest.raises(ValueError):
        RetrievalSettings(fusion="max")
    with pytest.raises(ValueError):
        RetrievalSettings(neighbour_floor=1.5)
    labels = [label for label, _ in DEFAULT.ablations()]
    assert len(labels) == len(set(labels)) >= 6
    assert all(s != DEFAULT for _, s in DEFAULT.ablations())
    plain = DEFAULT.plain()
    assert not plain.neighbours and plain.speaker_boost == 0 and not plain.strip_speakers


# ---------------------------------------------------------------------- fusion and neighbours


def _row(mid: int, name: str = "u", kind: str = "message") -> dict:
    return {"chat_id": 1, "message_id": mid, "user_id": 1, "user_name": name, "kind": kind, "text": f"t{mid}", "date": None}


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs + (0.0,) * (4 - len(xs)), dtype=np.float32)
    return v / np.linalg.norm(v)


def test_score_fusion_prefers_the_row_both_legs_found():
    q = _unit(1.0)
    vec_only, both, fts_only = _unit(1.0, 0.45), _unit(1.0, 0.6), _unit(0.2, 1.0)
    vector_rows = [dict(_row(1), _cos=float(vec_only @ q)), dict(_row(2), _cos=float(both @ q))]
    fts_rows = [dict(_row(3, "Caroline"), _score=10.0, vector=fts_only), dict(_row(2), _score=9.0, vector=both)]
    f = Fusion(vector_rows, fts_rows, q, DEFAULT)
    order = [c.row["message_id"] for c in f.best(3)]
    assert order[0] == 2  # second in each leg, first overall
    top = f.best(1)[0]
    assert set(top.parts) == {"vector", "fts", "fused"} and top.parts["fts"] == 9.0
    assert top.parts["fused"] == pytest.approx(0.9 + DEFAULT.vector_weight * top.cos_norm)
    # a row only the full-text leg found still has an exact cosine (from its stored vector)
    assert f.candidates[("message", 3)].cos == pytest.approx(float(fts_only @ q))
    # the sender named in the question gets the boost, visible in the parts
    g = Fusion(vector_rows, fts_rows, q, DEFAULT, mentioned={"Caroline"})
    assert g.candidates[("message", 3)].parts["speaker"] == DEFAULT.speaker_boost
    assert "speaker" not in g.candidates[("message", 2)].parts
    # rank fusion: scaled so the best row has 1.0
    r = Fusion(vector_rows, fts_rows, q, replace(DEFAULT, fusion="rrf"))
    assert r.best(1)[0].row["message_id"] == 2 and r.best(1)[0].fused == pytest.approx(1.0)


def test_neighbour_ids_and_propagation():
    assert neighbour_ids([10, 12], 2, known={10, 11}) == [8, 9, 12, 13, 14]
    settings = replace(DEFAULT, neighbour_weight=0.5, neighbour_weight_2=0.25, neighbour_floor=0.5, neighbour_span=4)
    cands = []
    for mid, fused, cos_norm in [(10, 2.0, 0.0), (11, 0.2, 1.0), (12, 0.1, 0.0), (30, 0.3, 1.0)]:
        c = Candidate(_row(mid), fused=fused, cos_norm=cos_norm)
        c.parts = {"fused": fused}
        cands.append(c)
    doc = Candidate(_row(11, kind="document"), fused=5.0, cos_norm=1.0)
    propagate([*cands, doc], settings)
    by = {c.row["message_id"]: c for c in cands}
    assert by[11].neighbour == pytest.approx(0.5 * 2.0 * 1.0)  # next to the strong row, similar itself
    assert by[12].neighbour == pytest.approx(0.25 * 2.0 * 0.5)  # two away, no similarity of its own
    assert by[10].neighbour == pytest.approx(0.5 * 0.2 * 0.5)
    assert by[30].neighbour == 0.0 and "neighbour" not in by[30].parts  # 18 ids away: not a neighbour
    assert by[11].score == pytest.approx(0.2 + 1.0) and by[11].parts["neighbour"] == pytest.approx(1.0)
    assert doc.neighbour == 0.0  # another kind is another sequence


# ---------------------------------------------------------------------- real conversations


@pytest.mark.parametrize(
    "question, evidence",
    [
        # D2:4 "...Great that you're prioritizing self-care." — D2:5 "...me-time each day - running, reading..."
        ("How does Melanie prioritize self-care?", "D2:5"),
        # D3:15 "How long have you been married?" — D3:16 "5 years already! ..."
        ("How long have Mel and her husband been married?", "D3:16"),
    ],
)
async def test_the_turn_that_answers_next_to_a_hit_is_pulled_in(recall_data, question, evidence):
    memory, ids = recall_data
    want = [ids[evidence]]
    assert (await ranks(memory, question, want, DEFAULT))[0] <= 3
    assert (await ranks(memory, question, want, NO_NEIGHBOURS))[0] > 5
    hits = (await memory.recall(LOCOMO_CHAT, question, 10)).hits
    hit = next(h for h in hits if h.message_id == want[0])
    assert hit.parts["neighbour"] > 0 and hit.score == pytest.approx(hit.parts["fused"] + hit.parts["neighbour"])


async def test_speaker_names_out_of_the_embedded_question(recall_data):
    memory, ids = recall_data
    # D2:7 "...Any fun plans for the summer?" — D2:8 (Caroline) "Researching adoption agencies — ..."
    q, want = "What are Caroline's plans for the summer?", [ids["D2:8"]]
    full = (await ranks(memory, q, want, DEFAULT))[0]
    kept = (await ranks(memory, q, want, replace(DEFAULT, strip_speakers=False)))[0]
    assert full <= 2 < kept
    hit = next(h for h in (await memory.recall(LOCOMO_CHAT, q, 5)).hits if h.message_id == want[0])
    assert hit.user_name == "Caroline" and hit.parts["speaker"] == DEFAULT.speaker_boost


async def test_full_method_beats_the_plain_legs_on_these_sessions(recall_data):
    memory, ids = recall_data
    conv = json.loads(data_path().read_text(encoding="utf-8"))[0]
    qs = [
        (qa["question"], [ids[e] for e in qa["evidence"]])
        for qa in conv["qa"]
        if qa["category"] in (1, 2, 3, 4) and qa["evidence"] and all(e in ids for e in qa["evidence"])
    ]
    assert len(qs) >= 15

    async def recall_at_5(settings, mode="hybrid") -> float:
        memory.retrieval = settings
        try:
            total = 0.0
            for q, ev in qs:
                got = {h.message_id for h in (await memory.recall(LOCOMO_CHAT, q, 5, mode=mode)).hits}
                total += len(got & set(ev)) / len(ev)
            return total / len(qs)
        finally:
            memory.retrieval = DEFAULT

    full = await recall_at_5(DEFAULT)
    assert full >= 0.6
    assert full > await recall_at_5(None)  # the bare rank fusion of before
    assert full > await recall_at_5(DEFAULT, "fts")
    assert full > await recall_at_5(DEFAULT, "vector")


async def test_ubuntu_question_finds_the_apt_file_answer(recall_data):
    memory, _ = recall_data
    chat = -1002009030310
    rec = await memory.recall(chat, "How do I find out which package provides Python.h?", 5)
    assert rec.hits[0].message_id == 90 and rec.hits[0].user_name == "nickrud" and "apt-file" in rec.hits[0].text
    assert set(rec.hits[0].parts) >= {"vector", "fts", "fused"}
    assert rec.embed_ms > 0 and rec.search_ms > 0
    rec = await memory.recall(chat, "what did nickrud say about apt-file", 3)
    assert rec.hits[0].message_id == 90 and rec.hits[0].parts.get("speaker") == DEFAULT.speaker_boost


# ---------------------------------------------------------------------- the chat boundary


async def test_staged_recall_never_leaves_the_chat(recall_data):
    """Chat B holds the same message ids as chat A (with other words): the legs and the neighbour
    reads around A's hits must only ever see A's rows — also for B's own words as the question."""
    memory, ids = recall_data
    a_ids = set(ids.values())
    queries = [
        "How long have Mel and her husband been married?",
        "How does Melanie prioritize self-care?",
        "chat B secret 17",
        "What did Caroline research?",
        "apt-file Python.h",
        "?",
        "Caroline",
    ]
    for q in queries:
        for chat, other in ((LOCOMO_CHAT, OTHER_CHAT), (OTHER_CHAT, LOCOMO_CHAT)):
            for settings in (DEFAULT, NO_NEIGHBOURS, replace(DEFAULT, fusion="rrf")):
                memory.retrieval = settings
                hits = (await memory.recall(chat, q, 25)).hits
                assert all(h.chat_id == chat for h in hits), (q, chat)
                if chat == LOCOMO_CHAT:
                    assert all(h.message_id in a_ids and not h.text.startswith("chat B") for h in hits), q
                else:
                    assert all(h.text.startswith("chat B") for h in hits), q
    memory.retrieval = DEFAULT
    # the recent window stays out, neighbours included
    q = "How long have Mel and her husband been married?"
    window = {ids[d] for d in ("D3:14", "D3:15", "D3:16", "D3:17", "D3:18")}
    hits = (await memory.recall(LOCOMO_CHAT, q, 25, exclude_ids=window)).hits
    assert hits and not window & {h.message_id for h in hits}


async def test_speakers_follow_adds_and_deletes(tmp_path):
    vec = _unit(1.0)
    when = datetime(2024, 1, 1, tzinfo=UTC)
    async with VectorMemory(tmp_path / "memory", dim=4) as vm:
        await vm.add([MemoryRow(1, 1, 11, "Alice", "hello", when, vec), MemoryRow(2, 1, 22, "Bob", "hi", when, vec)])
        assert await vm.speakers(1) == {"Alice"} and await vm.speakers(2) == {"Bob"}
        await vm.add([MemoryRow(1, 2, 33, "Carol", "hey", when, vec)])
        assert await vm.speakers(1) == {"Alice", "Carol"}
        await vm.delete(1, user_id=11)
        assert await vm.speakers(1) == {"Carol"}
        assert await vm.speakers(3) == frozenset()
    # a fresh process reads them from the table
    async with VectorMemory(tmp_path / "memory", dim=4) as vm:
        assert await vm.speakers(1) == {"Carol"}
        hits = await vm.recall(1, "hey Carol", vec, 5, settings=DEFAULT)
        assert [h.message_id for h in hits] == [2] and hits[0].parts["speaker"] == DEFAULT.speaker_boost
        assert await vm.recall(1, "hey", vec, 0, settings=DEFAULT) == []
