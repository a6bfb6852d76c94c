"""Full-text recall in other scripts, end to end: Chinese and Japanese cut into characters and
bigrams, Arabic normalised and stemmed, and the ranking of short messages — real LanceDB in a
tmp dir, the real embedding model, the real import path; real Russian dialogue (RusDraCor) beside
the synthetic Chinese and Arabic chats of ``benchmarks.recall_scripts`` (there is no real Chinese or
Arabic chat data here)."""
from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benchmarks.common import default_config
from benchmarks.recall_scripts import CHATS, make_queries, synthetic_chat, typed
from memory.retrieval import DEFAULT

pytestmark = pytest.mark.anyio

GOGOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ru-dialogue" / "rusdracor_1_gogol-revizor.jsonl"
JA_CHAT = -1009100000003
SYNTHETIC = 300  # messages per synthetic chat

# planted in the Arabic chat: one message vowelled, one not; queries ask for each the other way
AR_VOWELLED = "سَافَرَتْ فَاطِمَةُ إِلَى الْمَغْرِبِ لِزِيَارَةِ جَدَّتِهَا فِي الصَّيْفِ"
AR_PLAIN = "اشترى كريم سيارة جديدة من المعرض الذي بجانب المستشفى"
JAPANESE = [
    "東京駅の近くで新しいラーメン屋を見つけました",
    "明日の会議は十時からです。資料を忘れないでください",
    "週末は京都へ紅葉を見に行く予定です",
    "駅前のカフェでコーヒーを飲みながら待っています",
    "昨日買ったパソコンがもう壊れてしまった",
    "了解です！",
    "ありがとうございます",
    "大阪の天気はどうですか？",
]


def _lines(chat_id: int, texts: list[str], users: tuple[str, ...] = ("葵", "蓮", "陽菜")) -> list[dict]:
    t0 = datetime(2025, 4, 1, 9, tzinfo=UTC)
    return [{"chat_id": chat_id, "message_id": i + 1, "date": (t0 + timedelta(minutes=i)).isoformat(),
             "user": users[i % len(users)], "text": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
async def scripts(tmp_path_factory, st_model):
    """One data dir: the synthetic Chinese and Arabic chats (two Arabic messages planted) and a few
    Japanese lines. Yields (memory, data dir, ids of the planted Arabic messages)."""
    from actors.runtime import open_memory
    from memory.importer import import_transcript

    tmp = tmp_path_factory.mktemp("scripts")
    zh = synthetic_chat("zh", SYNTHETIC)
    ar = synthetic_chat("ar", SYNTHETIC)
    n = len(ar)
    ar += [dict(ar[-1], message_id=n + 1, text=AR_VOWELLED), dict(ar[-1], message_id=n + 2, text=AR_PLAIN)]
    path = tmp / "chats.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in zh + ar + _lines(JA_CHAT, JAPANESE)),
                    encoding="utf-8")
    async with open_memory(default_config(), tmp / "data", model=st_model) as memory:
        await import_transcript(memory, path)
        await memory.flush()
        yield memory, tmp / "data", (n + 1, n + 2)


@pytest.fixture(scope="module")
async def gogol(tmp_path_factory, st_model):
    """Gogol's «Ревизор» (925 real speeches) alone in a data dir (BM25's statistics are the table's)."""
    from actors.runtime import open_memory
    from memory.importer import import_transcript

    async with open_memory(default_config(), tmp_path_factory.mktemp("gogol") / "data", model=st_model) as memory:
        await import_transcript(memory, GOGOL)
        await memory.flush()
        yield memory


async def _rank(memory, chat_id: int, query: str, message_id: int, *, mode: str = "hybrid", k: int = 10) -> int:
    ids = [h.message_id for h in (await memory.recall(chat_id, query, k, mode=mode)).hits]
    return ids.index(message_id) + 1 if message_id in ids else 99


async def test_chinese_phrases_are_found_by_full_text_and_hybrid_search(scripts):
    memory, _, _ = scripts
    chat = CHATS["zh"]
    rows = [(m["message_id"], m["text"]) for m in synthetic_chat("zh", SYNTHETIC)]
    queries = make_queries({chat: rows}, 40)
    assert len(queries) == 40 and all(len(q) >= 4 for _, _, q in queries)
    for mode in ("fts", "hybrid"):
        found = [await _rank(memory, c, q, m, mode=mode) <= 10 for c, m, q in queries]
        assert sum(found) >= 0.95 * len(queries), mode
    # the phrase is inside a sentence of 15-20 characters with no space: it used to be one "word"
    target = next(m for m, t in rows if t.startswith("提醒一下") and len(t) > 20)
    text = dict(rows)[target]
    phrase = text[5:11]
    assert await _rank(memory, chat, phrase, target, mode="fts") <= 3


async def test_kith_memory_search_fts_finds_a_chinese_phrase(scripts):
    """``kith memory search CHAT "…" --mode fts``: the operation the CLI runs (here on the open
    memory, as a running bot runs it for the CLI)."""
    from rich.console import Console

    from operations.registry import Resources, Streams, get

    memory, _, _ = scripts
    rows = synthetic_chat("zh", SYNTHETIC)
    target = next(m for m in rows if "把" in m["text"] and "带到" in m["text"])
    phrase = target["text"][target["text"].index("把"):target["text"].index("带到") + 4]
    buf = io.StringIO()
    code = await get("memory.search").fn(
        Resources(default_config(), memory.store, memory.vectors, memory), Streams(Console(file=buf), Console(file=io.StringIO())),
        chat_id=CHATS["zh"], queries=[[None, phrase]], k=5, mode="fts", as_json=True)
    hits = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert code == 0 and hits[0]["message_id"] == target["message_id"] and phrase in hits[0]["text"]


async def test_arabic_with_or_without_harakat_finds_the_same_message(scripts):
    memory, _, (vowelled, plain) = scripts
    chat = CHATS["ar"]
    for mode in ("fts", "hybrid"):
        # the message is vowelled, the query is not (and drops the hamza, as people type)
        assert await _rank(memory, chat, "سافرت فاطمة الى المغرب", vowelled, mode=mode) == 1
        assert await _rank(memory, chat, typed(AR_VOWELLED)[:30], vowelled, mode=mode) == 1
        # the message is plain, the query is vowelled and says "the car" where the message says "a car"
        assert await _rank(memory, chat, "السَّيَّارَةُ الْجَدِيدَةُ مِنَ الْمَعْرِضِ", plain, mode=mode) == 1
        assert await _rank(memory, chat, "اشْتَرَى كَرِيمٌ سَيَّارَةً", plain, mode=mode) == 1
        assert await _rank(memory, chat, "بِالْمَعْرِضِ", plain, mode=mode) == 1
    hit = (await memory.recall(chat, "جَدَّتِهَا فِي الصَّيْفِ", 1, mode="fts")).hits[0]
    assert hit.text == AR_VOWELLED  # the stored text keeps its harakat


async def test_japanese_is_found_by_kanji_and_by_kana(scripts):
    memory, _, _ = scripts
    for mode in ("fts", "hybrid"):
        assert await _rank(memory, JA_CHAT, "東京駅", 1, mode=mode) == 1  # kanji only: read as Chinese, cut alike
        assert await _rank(memory, JA_CHAT, "ラーメン屋", 1, mode=mode) == 1
        assert await _rank(memory, JA_CHAT, "紅葉を見に", 3, mode=mode) == 1
        assert await _rank(memory, JA_CHAT, "パソコンが壊れた", 5, mode=mode) == 1


@pytest.mark.parametrize("query, message_id", [
    ("вы в Бога", 26),  # «Слава Богу.» held one term of three, in three words
    ("скажи почтмейстеру", 590),  # «Читайте сами.», said by the Почтмейстер: his name is in its content
])
async def test_a_short_message_no_longer_outranks_the_one_holding_every_term(gogol, query, message_id):
    """Real dialogue: without the coverage factor a reply of two or three words that holds one query
    term (or only the sender's name) leads — BM25's length normalisation lifts a tiny row, and
    all-MiniLM-L6-v2 gives short Russian lines a high cosine to a short query — and the speech
    holding every term is below the top five. With it, that speech is first."""
    from providers.language import index_terms, query_terms, query_words

    memory = gogol
    chat = -1009000000001
    memory.retrieval = replace(DEFAULT, coverage=False)
    try:
        before = (await memory.recall(chat, query, 10)).hits
    finally:
        memory.retrieval = DEFAULT
    ids = [h.message_id for h in before]
    assert message_id not in ids[:5]
    terms = set(query_terms(query_words(query), "ru"))
    assert len(before[0].text.split()) <= 3 and not terms <= set(index_terms(before[0].text).split())
    after = (await memory.recall(chat, query, 10)).hits
    assert after[0].message_id == message_id
    assert after[0].parts["coverage"] == 1.0 and all(h.parts.get("coverage", 1.0) <= 1.0 for h in after)
    short = next(h for h in after if h.message_id == before[0].message_id) if before[0].message_id in [h.message_id for h in after] else None
    assert short is None or short.parts["coverage"] < 1.0
