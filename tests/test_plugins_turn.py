"""Tools in a turn (issue #25): the chat's actor offers the plugins' tools to a model that can call
them, shows a line per call before the answer, and stores the answer alone.

Real parts: DuckDB and LanceDB in tmp_path, the real embedding model, litellm over real HTTP to the
local test server (tests/llm_server.py, whose ``CALL`` lines script the tool calls), the real
``Calculator`` tool. The plugins here are a minimal ``actors.handlers.Plugins`` (the seam under test);
the governed ``PluginHost`` has its own tests.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import duckdb
import pytest

from actors.events import Incoming, Sender
from actors.handlers import ChatContext, Plugins, TurnTools
from actors.services import Services
from actors.settings import UserSettings
from config.models import Config, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from features.plugins.base import ToolContext
from features.plugins.calculator import Calculator
from features.registry import HANDLERS
from providers.tools import ToolCall, ToolOutcome
from tests.llm_server import llm_server
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

KEY_ENV = "KITH_TEST_KEY"


class CalculatorOnly:
    """Plugins with the calculator alone; records who asked for tools and the calls it ran."""

    def __init__(self) -> None:
        self.calc = Calculator()
        self.asked: list[tuple[int, int, str | None]] = []
        self.ran: list[ToolCall] = []

    async def tools_for(self, ctx: ChatContext, user_id: int, tier: str | None,
                        user_settings: UserSettings, thread_id: int | None = None) -> TurnTools | None:
        self.asked.append((ctx.chat_id, user_id, tier))

        async def run(call: ToolCall) -> ToolOutcome:
            self.ran.append(call)
            tc = ToolContext(ctx.chat_id, user_id, "UTC", datetime.now(UTC), "en")
            return await self.calc.run(call.args or {}, tc)

        return TurnTools([self.calc.spec], run, lambda call: self.calc.notice(call.args or {}), max_steps=2)


def config(server_url: str, *, tools: bool | None = True) -> Config:
    models = {"recall": ModelSpec(model="kith/recall"),
              "remote": ModelSpec(model="openai/ok-remote", api_base=server_url, api_key_env=KEY_ENV, tools=tools,
                                  context_tokens=4096)}
    return Config(settings=Settings(models=models, default_model="remote"), tiers=TiersConfig())


def with_plugins(plugins: Plugins):
    @asynccontextmanager
    async def open_plugins(svc: Services) -> AsyncIterator[Plugins | None]:
        yield plugins

    return dataclasses.replace(HANDLERS, open_plugins=open_plugins)


async def ask(cfg: Config, tmp_path, st_model, plugins: Plugins, text: str, **kw):
    holder: dict = {}

    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    turns: list = []
    async with open_runtime(cfg, tmp_path, make, model=st_model, on_turn=turns.append,
                            handlers=with_plugins(plugins)) as rt:
        await rt.supervisor.tell(7, Incoming(7, "private", 100, Sender(7, "ann"), text, datetime.now(UTC), **kw))
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
    return holder["outbox"], turns


def stored_reply(tmp_path) -> str:
    con = duckdb.connect(str(tmp_path / "kith.duckdb"), read_only=True)
    try:
        return con.execute("SELECT text FROM messages WHERE role = 'assistant'").fetchone()[0]
    finally:
        con.close()


async def test_a_tool_call_is_run_shown_before_the_answer_and_the_answer_alone_is_stored(
        tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    plugins = CalculatorOnly()
    outbox, turns = await ask(config(llm_server.base_url), tmp_path, st_model, plugins,
                              'count please\nCALL calculator {"expression": "2*(3+4)"}')
    (turn,) = turns
    assert turn.error is None and turn.responded
    assert plugins.asked == [(7, 7, "free")]
    assert [c.name for c in plugins.ran] == ["calculator"]
    shown = outbox.sent[-1].text
    notice = plugins.calc.notice({"expression": "2*(3+4)"})
    assert shown.startswith(notice + "\n\n")  # the call's line heads the reply
    answer = shown[len(notice) + 2:]
    assert "14" in answer  # the model got the tool's result (the test server echoes it)
    assert stored_reply(tmp_path) == answer  # the notice is not part of the stored reply
    tools_sent = [r.body.get("tools") for r in llm_server.requests if r.body.get("tools")]
    assert tools_sent and tools_sent[0][0]["function"]["name"] == "calculator"
    # the result reached the model as quoted data, in the tool message
    tool_msgs = [m for r in llm_server.requests for m in r.body.get("messages", []) if m.get("role") == "tool"]
    assert tool_msgs and "<tool_output>" in tool_msgs[0]["content"] and "14" in tool_msgs[0]["content"]


async def test_a_model_that_cannot_call_tools_answers_without_them(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    plugins = CalculatorOnly()
    outbox, turns = await ask(config(llm_server.base_url, tools=False), tmp_path, st_model, plugins, "what is 2*(3+4)?")
    assert turns[0].responded and turns[0].error is None
    assert plugins.asked == []  # never asked: the model takes no tools
    assert not any(r.body.get("tools") for r in llm_server.requests)
    assert not outbox.sent[-1].text.startswith("🧮")


async def test_parallel_calls_each_get_a_line(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    plugins = CalculatorOnly()
    script = 'two sums\nCALL calculator {"expression": "1+1"}\nCALL calculator {"expression": "6*7"}'
    outbox, _turns = await ask(config(llm_server.base_url), tmp_path, st_model, plugins, script)
    shown = outbox.sent[-1].text
    lines = shown.split("\n\n", 1)[0].split("\n")
    assert lines == [plugins.calc.notice({"expression": "1+1"}), plugins.calc.notice({"expression": "6*7"})]
    assert sorted(json.loads(c.arguments)["expression"] for c in plugins.ran) == ["1+1", "6*7"]


async def test_the_offline_model_is_offered_no_tools(tmp_path, st_model, monkeypatch):
    plugins = CalculatorOnly()
    cfg = Config(settings=Settings(), tiers=TiersConfig())
    _outbox, turns = await ask(cfg, tmp_path, st_model, plugins, "hello")
    assert turns[0].responded and plugins.asked == [] and plugins.ran == []
