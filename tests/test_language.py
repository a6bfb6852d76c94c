"""Language-aware full text: detection, reduction, and recall across inflections — real LanceDB in
tmp_path, the real embedding model, real Russian dialogue (RusDraCor) beside real #ubuntu lines."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from memory.vector_rows import MemoryRow, schema
from memory.vectors import VectorMemory
from providers.language import (
    detect,
    detect_or_none,
    index_terms,
    ngrams,
    normalize_arabic,
    query_terms,
    query_words,
    split_words,
    words,
)
from tests.reindexing import refused_then_reindexed

pytestmark = pytest.mark.anyio

RU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ru-dialogue"


@pytest.mark.parametrize("text, lang", [
    ("а где моя видеокарта, которую я вчера купил?", "ru"),
    ("де моя відеокарта, яку я вчора купив?", "uk"),
    ("ну", "ru"),
    ("where did I put the graphics card I bought yesterday?", "en"),
    ("wo ist die Grafikkarte, die ich gestern gekauft habe?", "de"),
    ("¿dónde está la tarjeta gráfica que compré ayer?", "es"),
    ("où est la carte graphique que j'ai achetée hier ?", "fr"),
    ("ok", "en"),  # too short to tell: English
    ("12345 :)", "en"),
    ("我们明天去北京看长城", "zh"),
    ("這個bug怎麼修", "zh"),  # Han outweighs the Latin letters (a Han character counts two)
    ("東京駅の近くでラーメンを食べました", "ja"),  # kana: Japanese
    ("كَتَبَ الوَلَدُ الدَّرْسَ", "ar"),
    ("شكرا", "ar"),
    ("обновил Ubuntu", "ru"),
])
def test_detect(text: str, lang: str) -> None:
    assert detect(text) == lang


def test_inflected_forms_reduce_to_one_term() -> None:
    # Russian case endings, Ukrainian, German, Spanish, French plurals: message side and query side agree
    def meet(message: str, query: list[str], lang: str) -> set[str]:
        return set(index_terms(message, lang).split()) & set(query_terms(query, lang))

    assert meet("Купил новую видеокарту", ["видеокарта"], "ru") == {"видеокарт"}
    assert meet("нет видеокарты и видеокартой", ["видеокарта"], "ru") == {"видеокарт"}
    assert index_terms("the printers were jamming", "en") == "the printer were jam"  # (the index drops the stop words)
    assert meet("де моя відеокарта", ["відеокарту"], "uk")
    assert meet("Zwei Grafikkarten", ["Grafikkarte"], "de")
    assert meet("dos tarjetas", ["tarjeta"], "es")
    assert meet("deux cartes", ["carte"], "fr")
    assert meet("Ёлка", ["елка"], "ru")
    # a Latin word in a Russian message is reduced as English, and the other way round
    assert meet("обновил drivers", ["driver"], "en")
    # a text taken for Spanish still meets an English query on its English stems
    assert "quokka" in set(index_terms("zanzibar quokka telemetry", "es").split()) & set(query_terms(["quokka"], "en"))
    # English stop words leave a query unless nothing else is left; other languages keep every word
    # (their BM25 weighs frequent words down; the lists at hand hold content words such as время)
    assert query_terms(["where", "graphics", "card"], "en") == query_terms(["graphics", "card"], "en")
    assert query_terms(["where"], "en") == ["where"]
    assert query_terms(["где", "время", "видеокарта"], "ru") == ["где", "врем", "видеокарт"]


def _rows(texts: list[tuple[str, str]], chat_id: int, vectors) -> list[MemoryRow]:
    t0 = datetime(2015, 3, 1, 12, tzinfo=UTC)
    return [MemoryRow(chat_id, i + 1, 100 + i, user, text, t0 + timedelta(minutes=i), vectors[i])
            for i, (user, text) in enumerate(texts)]


def _ru_lines(n: int) -> list[tuple[str, str]]:
    out = []
    with (RU / sorted(p.name for p in RU.glob("*.jsonl"))[0]).open(encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            if len(o["text"]) > 20:
                out.append((o["user"], o["text"]))
            if len(out) >= n:
                break
    return out


async def test_a_russian_query_finds_other_case_endings(tmp_path, embedder) -> None:
    planted = [("Анна", "Вчера я купила новую видеокарту, старая сгорела."),
               ("Борис", "Ключи от гаража лежат в синей шкатулке на комоде.")]
    texts = _ru_lines(200) + planted
    vecs = await embedder.embed([t for _, t in texts])
    async with VectorMemory(tmp_path / "vm") as vm:
        assert vm.multilingual
        await vm.add(_rows(texts, -100, vecs))
        card = await vm.search(-100, "видеокарта", None, 5, mode="fts")
        assert [h.text for h in card][:1] == [planted[0][1]]  # видеокарта ← видеокарту
        keys = await vm.search(-100, "где ключ от гаражей?", None, 5, mode="fts")
        assert keys and keys[0].text == planted[1][1]  # ключ, гаражей ← ключи, гаража
        q = "видеокарта сгорела"
        hybrid = await vm.search(-100, q, await embedder.embed_one(q), 5)
        assert hybrid[0].text == planted[0][1]


async def test_a_table_made_before_terms_keeps_working_until_reindex(tmp_path, embedder) -> None:
    import lancedb

    # a table with the schema of the previous release (no ``terms``), as an upgrade finds it
    texts = [("ann", "the printer on floor two keeps jamming"), ("bob", "coffee machine is broken again")]
    vecs = await embedder.embed([t for _, t in texts])
    old = schema(384, terms=False)
    db = await lancedb.connect_async(str(tmp_path / "vm"))
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    await db.create_table("memories", data=pa.table({
        "id": [f"-5:message:{i}" for i in (1, 2)], "chat_id": [-5, -5], "message_id": [1, 2], "user_id": [1, 2],
        "user_name": ["ann", "bob"], "kind": ["message"] * 2, "text": [t for _, t in texts],
        "content": [f"{u}: {t}" for u, t in texts], "date": [t0, t0],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vecs, np.float32).reshape(-1)), 384),
        "source": pa.array([None, None], pa.string()), "page": pa.array([None, None], pa.int32()),
        "parent": pa.array([None, None], pa.int64())}, schema=old))
    async with VectorMemory(tmp_path / "vm") as vm:
        assert not vm.multilingual  # searched as before (its index stems English itself)
        assert (await vm.search(-5, "printers jammed", None, 3, mode="fts"))[0].text == texts[0][1]
        more = MemoryRow(-5, 3, 3, "cy", "the stapler jams too", t0, await embedder.embed_one("the stapler jams too"))
        await vm.add([more])
        assert await vm.count(-5) == 3


async def test_reindex_upgrades_an_old_table_to_language_aware_search(tmp_path, st_model) -> None:
    from actors.runtime import VECTORS_DIR, open_memory
    from config.loader import load_config
    from memory.maintenance import reindex
    from memory.types import StoredMessage

    data = tmp_path / "data"
    async with VectorMemory(data / VECTORS_DIR, language_aware=False):  # the earlier format, as an upgrade finds it
        pass
    t0 = datetime(2015, 3, 1, 12, tzinfo=UTC)
    said = ["Вчера я купила новую видеокарту, старая сгорела.", "Пойдём гулять в парк после обеда."]
    async with open_memory(load_config(None, env={}), data, model=st_model) as memory:
        for i, text in enumerate(said, 1):
            memory.remember(StoredMessage(-7, i, 5, "Анна", text, t0 + timedelta(minutes=i)))
        await memory.flush()
        assert not memory.vectors.multilingual
        before = await memory.recall(-7, "видеокарта", 1, mode="fts")
        assert before.hits == []  # the English-only index does not know Russian endings
        assert await reindex(memory) == 2
        assert memory.vectors.multilingual
        after = await memory.recall(-7, "видеокарта", 1, mode="fts")
        assert [h.text for h in after.hits] == [said[0]]
    async with open_memory(load_config(None, env={}), data, model=st_model) as memory:
        assert memory.vectors.multilingual  # the upgrade is kept


async def test_a_change_of_embedding_model_and_dimension_needs_a_reindex_which_re_embeds(tmp_path, st_model) -> None:
    """memory.embedding_model: a real sentence-transformers model of another width (all-MiniLM-L6-v2
    plus a 384→128 projection, saved as a user would save a multilingual one). The bot refuses the
    old table with a clear message; `kith memory reindex` re-embeds into a 128-wide table."""
    from sentence_transformers import SentenceTransformer, models

    from actors.runtime import open_memory
    from config.loader import load_config
    from config.models import Config, MemorySettings, Settings, TiersConfig
    from memory.types import StoredMessage
    from providers.torch_encoder import default_model_path

    other = tmp_path / "minilm-128"
    base = SentenceTransformer(default_model_path(), device="cpu")
    dense = models.Dense(384, 128, bias=False, activation_function=__import__("torch").nn.Identity())
    SentenceTransformer(modules=[*base, dense, models.Normalize()], device="cpu").save(str(other))
    data, t0 = tmp_path / "data", datetime(2015, 3, 1, 12, tzinfo=UTC)
    said = ["Вчера я купила новую видеокарту, старая сгорела.", "Пойдём гулять в парк после обеда."]
    async with open_memory(load_config(None, env={}), data, model=st_model) as memory:
        for i, text in enumerate(said, 1):
            memory.remember(StoredMessage(-7, i, 5, "Анна", text, t0 + timedelta(minutes=i)))
        await memory.flush()
        assert (memory.vectors.embedding_model, memory.vectors.dim) == ("all-MiniLM-L6-v2", 384)

    cfg = Config(settings=Settings(memory=MemorySettings(embedding_model=other, embed_backend="torch")), tiers=TiersConfig())
    await refused_then_reindexed(
        cfg, data, r"all-MiniLM-L6-v2 embeddings \(384 dimensions\).*minilm-128 \(128.*kith memory reindex")
    async with open_memory(cfg, data) as memory:
        assert (memory.vectors.embedding_model, memory.vectors.dim) == ("minilm-128", 128)
        hits = (await memory.recall(-7, "купила видеокарту", 1, mode="vector")).hits
        assert [h.text for h in hits] == [said[0]]


def test_embedding_model_must_be_a_sentence_transformers_directory(tmp_path) -> None:
    from config.errors import ConfigError
    from config.loader import load_config

    (tmp_path / "empty").mkdir()
    for value in (tmp_path / "nowhere", tmp_path / "empty"):
        path = tmp_path / "kith.yaml"
        path.write_text(f"memory:\n  embedding_model: {value}\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
        assert "embedding_model" in str(info.value) and "kith.yaml" in str(info.value) and ":2" in str(info.value)


async def test_a_question_in_a_language_the_embedding_model_does_not_know_leans_on_full_text(tmp_path, st_model) -> None:
    """all-MiniLM-L6-v2 was trained on English: for a Russian question its cosine counts
    ``foreign_vector_weight`` (half) in the fused score; with a model of any language, in full."""
    from actors.runtime import open_memory
    from config.loader import load_config
    from memory.retrieval import DEFAULT
    from memory.types import StoredMessage

    lines = [json.loads(x) for x in (RU / "rusdracor_2_gorky-na-dne.jsonl").read_text(encoding="utf-8").splitlines()[:200] if x.strip()]
    async with open_memory(load_config(None, env={}), tmp_path / "d", model=st_model) as memory:
        assert memory.embedding_languages == frozenset({"en"})
        for i, m in enumerate(lines, 1):
            memory.remember(StoredMessage(-9, i, 1, m["user"], m["text"], datetime(2015, 3, 1, tzinfo=UTC) + timedelta(minutes=i)))
        await memory.flush()
        memory.retrieval = DEFAULT.plain()  # fusion alone: fused = bm25/max + weight · min-max(cos)

        async def fused_minus_fts(q: str) -> dict[int, float]:
            hits = (await memory.recall(-9, q, 5)).hits
            return {h.message_id: h.parts["fused"] - (h.parts.get("fts", 0.0) / max(x.parts.get("fts", 0.0) for x in hits) if h.parts.get("fts") else 0.0)
                    for h in hits}

        q = "где мой паспорт и деньги"
        half = await fused_minus_fts(q)
        memory.embedding_languages = None  # a multilingual model: the vector leg counts in full
        full = await fused_minus_fts(q)
        both = set(half) & set(full)
        assert both and all(abs(full[i] - 2 * half[i]) < 1e-6 for i in both)
        en_half = await fused_minus_fts("where is my passport")
        memory.embedding_languages = frozenset({"en"})
        assert await fused_minus_fts("where is my passport") == en_half  # English questions: unchanged


# ---------------------------------------------------------------------- other scripts


def test_han_and_kana_runs_become_characters_and_bigrams() -> None:
    assert ngrams("北京烤鸭") == ["北", "京", "烤", "鸭", "北京", "京烤", "烤鸭"]
    assert ngrams("猫") == ["猫"]
    # a whole Chinese sentence was one word of 17 characters (and a longer one was dropped)
    assert split_words("我们明天去北京看长城，然后吃烤鸭。") == ["我们明天去北京看长城", "然后吃烤鸭"]
    long = "这是一个没有空格的很长很长的句子" * 4
    assert len(long) > 40 and words(long) == [long]  # kept: n-grams, not a hash
    assert words("a" * 41) == []  # a run of another script that long still is not a word
    # script changes cut a word; Latin words in Chinese text keep their English stems
    assert split_words("iPhone手机2023年") == ["iPhone", "手机", "2023", "年"]
    assert index_terms("新买的iPhone手机坏了", "zh").split() == [
        "新", "买", "的", "新买", "买的", "iphon", "手", "机", "坏", "了", "手机", "机坏", "坏了"]
    # full-width Latin and half-width kana read as the ordinary forms (NFKC)
    assert index_terms("ＵＳＢ", "en") == "usb" and index_terms("ﾗｰﾒﾝ") == index_terms("ラーメン")


def test_a_query_is_cut_as_a_message_is() -> None:
    message = set(index_terms("提醒一下：周五之前要交报销单，小王负责收。").split())
    query = query_terms(query_words("要交报销单"), "zh")
    assert query == ["要", "交", "报", "销", "单", "要交", "交报", "报销", "销单"] and set(query) <= message
    # Chinese and Japanese are cut alike, so a kanji-only query finds a Japanese message
    assert detect("東京駅") == "zh" and set(query_terms(["東京駅"], "zh")) <= set(index_terms("東京駅の近くです").split())
    assert query_terms(["ラーメン"], "ja") == ["ラ", "ー", "メ", "ン", "ラー", "ーメ", "メン"]


def test_arabic_is_normalised_then_stemmed() -> None:
    # harakat, tatweel, hamza on alef, alef maqsura, ta marbuta; the article with و ف ب ك ل before it
    assert normalize_arabic("الْمَدْرَسَةُ") == normalize_arabic("المدرسه") == "مدرسه"
    assert normalize_arabic("إلى") == normalize_arabic("الى") == "الي"
    assert normalize_arabic("كتـــاب") == "كتاب"
    assert normalize_arabic("والكتاب") == normalize_arabic("بالكتاب") == normalize_arabic("للكتاب") == "كتاب"
    assert normalize_arabic("الم") == "الم"  # too short to hold an article
    # vowelled or not, with or without the hamza, definite or not: one term
    forms = ["السَّيَّارَةُ", "السيارة", "سيارة", "السياره", "بالسيارة", "والسيارة"]
    assert len({index_terms(f, "ar") for f in forms}) == 1
    assert index_terms("أَكَلَ الوَلَدُ التُّفَّاحَةَ") == index_terms("اكل الولد التفاحه")
    # a vowelled word is one word (Python's \w does not match harakat: it used to fall apart)
    assert split_words("كَتَبَ الدَّرْسَ") == ["كَتَبَ", "الدَّرْسَ"]
    assert query_terms(query_words("الْكِتَابُ"), "ar") == query_terms(query_words("كتاب"), "ar") == ["كتاب"]
    # Arabic-Indic digits are digits
    assert index_terms("عام ٢٠٢٣") == index_terms("عام 2023")


def test_other_unspaced_scripts_are_cut_into_letter_bigrams() -> None:
    thai = "ภาษาไทยง่ายนิดเดียว"  # no spaces between words; vowel signs are combining marks
    terms = index_terms(thai).split()
    assert "ง่า" in terms and "่" not in terms  # a letter keeps the marks on it
    assert set(query_terms(query_words("ง่าย"), "en")) <= set(terms)
    # Devanagari vowel signs no longer cut a Hindi word
    assert split_words("हिंदी भाषा") == ["हिंदी", "भाषा"]


def test_detection_of_nothing_tells_nothing() -> None:
    assert detect_or_none("12345 :)") is None and detect_or_none("👍") is None


def test_warm_loads_the_detector_so_the_first_message_does_not_wait() -> None:
    from providers import language

    language._identifier.cache_clear()
    assert language.would_load("a sentence long enough to ask the detector")
    language.warm()
    assert not language.would_load("a sentence long enough to ask the detector")
