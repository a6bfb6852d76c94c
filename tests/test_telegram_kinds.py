"""Newer Telegram message kinds through the offline harness (tests/tg_harness.py): the Stop button on
a streamed draft, ephemeral replies in groups, rich messages for tables. Real pyrogram parsing and
dispatch; Telegram's servers are replaced at ``client.invoke``; the model is the local HTTP test
server (tests/llm_server.py) behind litellm.
"""
from __future__ import annotations

import functools
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import duckdb
import pytest
from pyrogram import raw

from config.models import Config, LLMSettings, ModelSpec, Quotas, Settings, Tier, TiersConfig
from operations.bot import serve
from providers.recall_model import estimate_tokens
from tests.llm_server import FakeLLMServer
from tests.tg_harness import TelegramHarness, bot_served, pyrogram_errors, rpc_error
from transports.telegram.outbox import TelegramOutbox
from transports.telegram.render import has_table

pytestmark = pytest.mark.anyio

WORDS = [f"word{i:02d}" for i in range(60)]


@pytest.fixture(autouse=True)
def no_pyrogram_errors(caplog):
    yield
    assert pyrogram_errors(caplog) == []


def db_rows(data_dir: Path, sql: str) -> list:
    con = duckdb.connect(str(data_dir / "kith.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@asynccontextmanager
async def bot_on(tmp_path, st_model, server: FakeLLMServer, model: str, tiers: TiersConfig | None = None):
    """The bot served on a harness client, answering with ``model`` of the test server; yields (harness, app)."""
    settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                "remote": ModelSpec(model=f"openai/{model}", api_base=server.base_url, context_tokens=4096)},
                        default_model="remote", llm=LLMSettings(stream_edit_interval_s=0.05))
    async with bot_served(Config(settings=settings, tiers=tiers or TiersConfig()), tmp_path, st_model) as (h, app):
        yield h, app


def draft_actions(h: TelegramHarness, chat_id: int) -> list:
    return [c.action for c in h.calls if isinstance(c, raw.functions.messages.SetTyping)
            and isinstance(c.action, raw.types.SendMessageTextDraftAction) and h._chat_id_of_input(c.peer) == chat_id]


# ---------------------------------------------------------------------- 1. Stop on a streamed draft


async def test_stop_on_a_streamed_draft_ends_the_generation_and_keeps_what_was_said(tmp_path, st_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer() as server:
        async with bot_on(tmp_path, st_model, server, "drip-0.1") as (h, app):
            ann = h.user(42, "Ann")
            mid = await h.private(ann, "ANSWER " + " ".join(WORDS))  # 60 words, one every 0.1 s
            await h.until(lambda: len(draft_actions(h, 42)) >= 3)
            actions = draft_actions(h, 42)
            assert all(a.can_stop and a.keep_on_stop for a in actions)  # the draft shows a Stop button
            draft_id = actions[-1].random_id
            stop = raw.types.UpdateUserTyping(user_id=42, action=raw.types.SendMessageStopDraftAction(random_id=draft_id))
            await h.deliver(stop, chat_id=42, user_ids=(42,))
            await h.settle(app.runtime.supervisor)
            await h.until(lambda: server.cut)  # the model's stream was closed
            replies = h.replies_to(42, mid)
            drafts_after = len(draft_actions(h, 42))
            await anyio.sleep(0.3)
            assert len(draft_actions(h, 42)) == drafts_after  # nothing more is streamed
            await app.runtime.memory.flush()
    (reply,) = replies
    said = reply.text.split()
    assert 0 < len(said) < len(WORDS) and said == WORDS[:len(said)]  # what was generated until Stop, as the reply
    assert server.cut[0] < len(WORDS)
    ((prompt_tokens, completion_tokens),) = db_rows(tmp_path, "SELECT prompt_tokens, completion_tokens FROM usage")
    assert prompt_tokens > 0
    assert completion_tokens == estimate_tokens(" ".join(said))  # the partial output, not the whole answer
    assert completion_tokens < estimate_tokens(" ".join(WORDS))
    stored = db_rows(tmp_path, f"SELECT text FROM messages WHERE message_id = {reply.message_id}")
    assert stored == [(" ".join(said),)]


async def test_a_stop_for_a_draft_no_reply_streams_is_ignored(tmp_path, st_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer() as server:
        async with bot_on(tmp_path, st_model, server, "ok-x") as (h, app):
            ann = h.user(42, "Ann")
            mid = await h.private(ann, "ANSWER all of it")
            await h.settle(app.runtime.supervisor)
            stop = raw.types.UpdateUserTyping(user_id=42, action=raw.types.SendMessageStopDraftAction(random_id=12345))
            await h.deliver(stop, chat_id=42, user_ids=(42,))
            await h.settle(app.runtime.supervisor)
            assert [r.text for r in h.replies_to(42, mid)] == ["all of it"]
            assert app.router.stats.ignored == 1
    assert server.cut == []


# ---------------------------------------------------------------------- 2. ephemeral replies in groups


async def test_memory_and_profile_in_a_group_are_seen_by_the_asker_only_and_a_refusal_falls_back_for_good(tmp_path, st_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer() as server:
        async with bot_on(tmp_path, st_model, server, "ok-x") as (h, app):
            ann = h.user(42, "Ann")
            g, other = h.supergroup(700, "Team"), h.supergroup(701, "Other")
            asked = await h.group(g, ann, "/memory@kith_bot")
            await h.settle(app.runtime.supervisor)
            assert h.replies_to(g, asked) == []  # nothing the whole group sees
            (eph,) = h.ephemeral
            assert h.ephemeral_to == [42] and eph.chat_id == g and eph.reply_to == asked
            assert "This chat" in eph.text and eph.entities  # formatted like a normal reply

            h.fail(raw.functions.ephemeral.SendMessage, rpc_error("BOT_METHOD_INVALID"))
            refused = await h.group(g, ann, "/profile@kith_bot")
            again = await h.group(g, ann, "/memory@kith_bot")
            elsewhere = await h.group(other, ann, "/profile@kith_bot")
            private = await h.private(ann, "/profile")
            await h.settle(app.runtime.supervisor)
            assert [r.text.splitlines()[0] for r in h.replies_to(g, refused)] == ["Ann"]  # the normal reply instead
            assert len(h.replies_to(g, again)) == 1  # this chat: normal replies from now on, Telegram not asked again
            assert len(h.replies_to(42, private)) == 1  # a private chat: always a normal reply
            assert h.replies_to(other, elsewhere) == [] and h.ephemeral_to == [42, 42]  # other groups still ephemeral
            assert h.count(raw.functions.ephemeral.SendMessage) == 3
            assert app.outbox.stats.ephemeral == 2 and app.outbox.stats.ephemeral_fallbacks == 1


async def test_a_refusal_in_a_group_is_seen_by_the_refused_member_only(tmp_path, st_model, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    tiers = TiersConfig(default_tier="free", tiers={"free": Tier(models=("*",), quotas=Quotas(requests_per_day={"*": 1}))})
    with FakeLLMServer() as server:
        async with bot_on(tmp_path, st_model, server, "ok-x", tiers) as (h, app):
            ann = h.user(42, "Ann")
            g = h.supergroup(702, "Quota")
            first = await h.group(g, ann, "@kith_bot ANSWER the one answer of the day")
            await h.settle(app.runtime.supervisor)
            second = await h.group(g, ann, "@kith_bot ANSWER another")
            await h.settle(app.runtime.supervisor)
            assert [r.text for r in h.replies_to(g, first)] == ["the one answer of the day"]
            assert h.replies_to(g, second) == []
            (refusal,) = h.ephemeral
            assert h.ephemeral_to == [42] and refusal.reply_to == second and refusal.text


# ---------------------------------------------------------------------- 3. rich messages for tables

TABLE = "Two plans:\n\n| plan | price |\n|------|------:|\n| free | 0 |\n| plus | 5 |\n\nPick one."


class Clock:
    """A monotonic clock the test moves by hand; its sleep moves it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await anyio.sleep(0)


def rich_calls(h: TelegramHarness) -> int:
    return sum(1 for c in h.calls if isinstance(c, raw.functions.messages.SendMessage) and c.rich_message is not None)


async def test_an_answer_with_a_table_goes_as_a_rich_message_and_a_refusal_falls_back_to_the_rendering():
    clock = Clock()
    h = await TelegramHarness.create()
    h.user(42, "Ann")
    await h.start()
    try:
        out = TelegramOutbox(h.client, clock=clock, sleep=clock.sleep)
        stream = await out.stream(42, reply_to=5)  # a quick private answer
        sent = await stream.finish(TABLE)
        assert (h.sent[-1].kind, h.sent[-1].text, h.sent[-1].reply_to) == ("rich", TABLE, 5)
        assert sent.message_id == h.sent[-1].message_id and out.sent_by_bot(42, sent.message_id)

        g = h.supergroup(710, "Tables")  # a group streams by edits: the progress message gives way
        stream = await out.stream(g, reply_to=6)
        clock.t += 10
        await stream.update("Two plans:")
        progress = h.sent[-1]
        assert progress.kind == "text"
        await stream.finish(TABLE)
        assert (h.sent[-1].kind, h.sent[-1].text, h.sent[-1].reply_to) == ("rich", TABLE, 6)
        assert h.deleted == [(g, progress.message_id)]

        await (await out.stream(42)).finish("no table | here")  # a pipe is not a table
        assert h.sent[-1].kind == "text" and rich_calls(h) == 2

        other = h.supergroup(711, "Old clients")
        h.fail(raw.functions.messages.SendMessage, rpc_error("BOT_METHOD_INVALID"))
        await (await out.stream(other, reply_to=7)).finish(TABLE)
        fallback = h.sent[-1]
        assert fallback.kind == "text" and fallback.reply_to == 7
        assert "free" in fallback.text and "|---" not in fallback.text  # the usual rendering
        await (await out.stream(other)).finish(TABLE)  # refused once: not asked again in this chat
        assert rich_calls(h) == 3 and h.sent[-1].kind == "text"
        assert (out.stats.rich, out.stats.rich_fallbacks) == (2, 1)
    finally:
        await h.stop()


def test_tables_are_found_outside_code_fences_only():
    assert has_table(TABLE)
    assert has_table("|a|b|\n|:-:|---|")
    assert not has_table("a | b\nnot a delimiter")
    assert not has_table("```\n| a | b |\n|---|---|\n```")
    assert has_table("| one column |\n|---|")
    assert not has_table("---\n| a |")
    assert not has_table("a | b\n---")  # a heading underline, not a delimiter row
