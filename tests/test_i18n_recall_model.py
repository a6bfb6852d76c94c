"""The offline model kith/recall answers in the member's language (``i18n.use``), on every path a
chat actor's call can take: in process (``LLM._recall_in_process``), and through litellm (the ``kith``
custom provider, directly and as a Router fallback), plain and streamed."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

import i18n
from config.models import ModelSpec
from memory.types import MemoryHit
from providers.memory_block import render_memories
from providers.recall_model import HEADER, INTRO, NOTHING_FOUND, intro
from tests.llm_server import FakeLLMServer, llm_server
from tests.test_llm import _close_llms, _key, make_llm, spec

pytestmark = pytest.mark.anyio

T0 = datetime(2009, 3, 3, 10, 1, tzinfo=UTC)
QUOTE = "> ActionParsnip, 2009-03-03 10:01 UTC: exon: if he gets the grub error, run sudo update-grub"

# what a member sees, per interface language (ru: i18n/locales/ru.po)
WORDS = {
    "en": {"header": "From this chat's memory:", "nothing": "I don't have anything in this chat's memory about that yet.",
           "someone": "someone", "intro": INTRO},
    "ru": {"header": "Из памяти этого чата:", "nothing": "В памяти этого чата пока ничего об этом нет.", "someone": "кто-то",
           "intro": "Я — встроенная офлайн-модель Kith: я цитирую память этого чата (кто что сказал и когда), а сами ответы "
                    "не пишу. Чтобы получать настоящие ответы, хост подключает LLM: KITH_MODEL=openai/gpt-4o-mini и ключ "
                    "провайдера в окружении (например, OPENAI_API_KEY) или models: и default_model в kith.yaml."},
}


def with_memories(question: str, hits: list[MemoryHit] | None = None) -> list[dict]:
    hits = [MemoryHit(-1, 1234, 7, "ActionParsnip", "exon: if he gets the grub error, run sudo update-grub", T0, 0.9)] \
        if hits is None else hits
    return [{"role": "system", "content": "You are Kith.\n\n" + render_memories(hits)}, {"role": "user", "content": question}]


async def collect(deltas: list[str], delta: str) -> None:
    deltas.append(delta)


def test_the_catalog_has_the_answer_words() -> None:
    assert i18n.in_language("ru", HEADER) == WORDS["ru"]["header"] != HEADER
    assert i18n.in_language("ru", NOTHING_FOUND) == WORDS["ru"]["nothing"] != NOTHING_FOUND
    assert i18n.in_language("en", HEADER) == HEADER == WORDS["en"]["header"]
    assert i18n.in_language("ru", INTRO) == WORDS["ru"]["intro"] != INTRO


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_the_intro_is_in_the_members_language(lang: str) -> None:
    with i18n.use(lang):
        assert intro() == WORDS[lang]["intro"]
    assert intro() == INTRO  # (outside the block: English)


@pytest.mark.parametrize("lang", ["en", "ru"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("greeting", ["bob: hello", "иван: привет", "thanks!", "кто ты?"])
async def test_small_talk_is_answered_with_the_intro(lang: str, stream: bool, greeting: str) -> None:
    llm = make_llm({"recall": ModelSpec(model="kith/recall")})
    deltas: list[str] = []
    with i18n.use(lang):
        c = await llm.complete("recall", with_memories(greeting), on_delta=(lambda d: collect(deltas, d)) if stream else None)
    assert c.text == WORDS[lang]["intro"]
    if stream:
        assert "".join(deltas) == c.text


@pytest.mark.parametrize("lang", ["en", "ru"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_in_process_answer_is_in_the_members_language(lang: str, stream: bool) -> None:
    llm = make_llm({"recall": ModelSpec(model="kith/recall")})
    deltas: list[str] = []
    on_delta = (lambda d: collect(deltas, d)) if stream else None
    with i18n.use(lang):
        found = await llm.complete("recall", with_memories("bob: how do I fix the grub error?"), on_delta=on_delta)
        if stream:
            assert "".join(deltas) == found.text
        nothing = await llm.complete("recall", [{"role": "user", "content": "what did alice say?"}], on_delta=on_delta)
    assert found.text == f"{WORDS[lang]['header']}\n{QUOTE}"  # the quote itself is data: never translated
    assert nothing.text == WORDS[lang]["nothing"]
    assert i18n.current() == "en"  # (the block's language does not leak)


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_through_litellm_the_custom_provider_sees_the_language(lang: str) -> None:
    import litellm

    msgs = with_memories("bob: how do I fix the grub error?")
    with i18n.use(lang):
        plain = await litellm.acompletion(model="kith/recall", messages=msgs)
        stream = await litellm.acompletion(model="kith/recall", messages=[{"role": "user", "content": "anything?"}],
                                           stream=True, stream_options={"include_usage": True})
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert plain.choices[0].message.content == f"{WORDS[lang]['header']}\n{QUOTE}"
    assert streamed == WORDS[lang]["nothing"]


@pytest.mark.parametrize("lang", ["en", "ru"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_as_a_router_fallback_it_answers_in_the_members_language(llm_server: FakeLLMServer, lang: str,
                                                                       stream: bool) -> None:
    main = spec(llm_server, "error-main", "recall")
    llm = make_llm({"main": main, "recall": ModelSpec(model="kith/recall")})
    deltas: list[str] = []
    with i18n.use(lang):
        c = await llm.complete("main", [{"role": "user", "content": "anything"}],
                               on_delta=(lambda d: collect(deltas, d)) if stream else None)
    assert c.model == "recall" and c.fell_back
    assert c.text == WORDS[lang]["nothing"]


@pytest.mark.parametrize("lang", ["en", "ru"])
async def test_a_nameless_memory_is_said_to_be_someones(lang: str) -> None:
    llm = make_llm({"recall": ModelSpec(model="kith/recall")})
    hits = [MemoryHit(-1, 5, 7, "", "the printer on floor three needs toner", T0, 0.9)]
    with i18n.use(lang):
        c = await llm.complete("recall", with_memories("which printer needs toner?", hits))
    assert c.text == f"{WORDS[lang]['header']}\n> {WORDS[lang]['someone']}, 2009-03-03 10:01 UTC: the printer on floor three needs toner"
