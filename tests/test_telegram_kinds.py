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

from config.models import Config, LLMSettings, ModelSpec, Settings, TiersConfig
from operations.bot import serve
from providers.recall_model import estimate_tokens
from tests.llm_server import FakeLLMServer
from tests.tg_harness import TelegramHarness, pyrogram_errors

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
async def bot_on(tmp_path, st_model, server: FakeLLMServer, model: str):
    """The bot served on a harness client, answering with ``model`` of the test server; yields (harness, app)."""
    settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                "remote": ModelSpec(model=f"openai/{model}", api_base=server.base_url, context_tokens=4096)},
                        default_model="remote", llm=LLMSettings(stream_edit_interval_s=0.05))
    cfg = Config(settings=settings, tiers=TiersConfig())
    h = await TelegramHarness.create()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        app = await tg.start(functools.partial(serve, h.client, cfg, tmp_path, model=st_model, stop=stop))
        try:
            yield h, app
        finally:
            stop.set()


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
