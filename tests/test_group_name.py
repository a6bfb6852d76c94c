"""A name per group (``/settings name Jarvis``, the tier feature ``custom_name``), through the Telegram
transport on real pyrogram updates (tests/tg_harness.py) and the whole bot (``serve``): the group's
admins set and clear it, members may not; the bot answers to it as to a mention (whole word, any case)
and says it in the system prompt the model gets (litellm over HTTP to the local test server); a
member whose tier here lacks the feature — neither theirs nor the group's has it — does not wake it."""
from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from config.models import Config, Features, ModelSpec, Plan, Settings, Tier, TiersConfig
from operations.bot import serve
from tests.llm_server import llm_server as llm_server
from tests.tg_harness import TelegramHarness, bot_served, pyrogram_errors

pytestmark = pytest.mark.anyio

PERSONA = "In this chat your name is Jarvis"


@pytest.fixture(autouse=True)
def no_pyrogram_errors(caplog):
    yield
    assert pyrogram_errors(caplog) == []


def config(llm_server) -> Config:
    settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                "ok": ModelSpec(model="openai/ok-model", api_base=llm_server.base_url)}, default_model="ok")
    tiers = TiersConfig(tiers={"free": Tier(features=Features(custom_name=False)),
                               "premium": Tier(features=Features(custom_name=True))},
                        plans={"month": Plan(tier="premium", days=30, price=250)})
    return Config(settings=settings, tiers=tiers)


@asynccontextmanager
async def running_bot(tmp_path, st_model, llm_server) -> AsyncIterator[tuple[TelegramHarness, object]]:
    async with bot_served(config(llm_server), tmp_path, st_model) as (h, app):
        yield h, app


def system_prompts(llm_server) -> list[str]:
    return [r.body["messages"][0]["content"] for r in llm_server.requests if r.path.endswith("/chat/completions")]


async def test_admins_name_the_bot_and_it_answers_to_that_name(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    async with running_bot(tmp_path, st_model, llm_server) as (h, app):
        ann, bob = h.user(42, "Ann"), h.user(43, "Bob")
        g = h.supergroup(700, "Ops")
        h.members[(g, 42)] = "admin"
        h.members[(g, 43)] = "member"
        sup, store = app.runtime.supervisor, app.runtime.memory.store

        async def said(user, text: str) -> tuple[int, list]:
            mid = await h.group(g, user, text)
            await h.settle(sup)
            return mid, h.replies_to(g, mid)

        _mid, (refused,) = await said(ann, "/settings name Jarvis")  # the free tier lacks custom_name
        assert refused.text.startswith("A name of my own in a group isn't part of the free tier."), refused.text
        assert "name" not in await store.settings.chat(g)
        _mid, silent = await said(bob, "Jarvis, are you there?")
        assert silent == []

        await app.runtime.services.admission.subs.grant("chat", g, "premium", None, "test")  # the group's premium unlocks it
        _mid, (no,) = await said(bob, "/settings name Jarvis")
        assert "only this group's admins" in no.text
        _mid, (saved,) = await said(ann, "/settings name Jarvis")
        assert "name: Jarvis" in saved.text
        assert (await store.settings.chat(g))["name"] == "Jarvis"

        before = len(system_prompts(llm_server))
        _mid, answered = await said(bob, "hey JARVIS, what is the wifi password?")
        assert len(answered) == 1 and answered[0].text.startswith("echo:")
        assert len(system_prompts(llm_server)) == before + 1 and PERSONA in system_prompts(llm_server)[-1]
        _mid, inside = await said(bob, "the Jarvisson report is due")  # not a whole word
        assert inside == []

        _mid, (shown,) = await said(ann, "/settings")
        assert "name: Jarvis" in shown.text
        _mid, (cleared,) = await said(ann, "/settings name off")
        assert "name: Kith (default)" in cleared.text and "name" not in await store.settings.chat(g)
        _mid, silent = await said(bob, "Jarvis?")
        assert silent == []

        _mid, (mentioned,) = await said(bob, "@kith_bot hello")  # a mention still works; the prompt names no Jarvis
        assert mentioned.text.startswith("echo:") and PERSONA not in system_prompts(llm_server)[-1]


async def test_without_the_feature_the_name_does_not_wake_the_bot_unless_the_member_has_premium(tmp_path, st_model,
                                                                                                   llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    async with running_bot(tmp_path, st_model, llm_server) as (h, app):
        ann, bob = h.user(42, "Ann"), h.user(43, "Bob")
        g = h.supergroup(701, "Free group")
        await app.runtime.memory.store.settings.set_chat(g, {"name": "Jarvis"})  # set while the group had premium
        sup = app.runtime.supervisor
        free = await h.group(g, bob, "Jarvis, what's new?")
        await h.settle(sup)
        assert h.replies_to(g, free) == [] and system_prompts(llm_server) == []
        await app.runtime.services.admission.subs.grant("user", 42, "premium", None, "test")  # Ann's own premium
        hers = await h.group(g, ann, "jarvis, what's new?")
        await h.settle(sup)
        assert len(h.replies_to(g, hers)) == 1 and PERSONA in system_prompts(llm_server)[-1]
