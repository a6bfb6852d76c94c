"""The ``PluginHost`` in a real runtime (DuckDB and LanceDB in tmp_path, the real embedding model):
the tools a turn gets are exactly the governed ones, each call is recorded as usage and counted
against ``tool_calls_per_day`` (rebuilt from the stored usage after a restart), the tool's context
is the turn's (never the model's arguments), the log names arguments but never shows their values;
and ``/plugins`` through real chat actors: a group member cannot toggle, an admin can within the
limit, and over the limit or outside the tier gets the /billing button."""
from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from actors.events import ButtonPress, CommandEvent, Sender
from actors.settings import UserSettings
from config.models import Config, ModelSpec, Plan, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from features.plugins.base import ToolContext, ToolOutcome, ToolSpec
from features.plugins.host import PluginHost
from providers.tools import ToolCall
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

GROUP = -1001
ADMIN, MEMBER = Sender(10, "Ada"), Sender(11, "Bob")
TIERS = TiersConfig(
    default_tier="free",
    tiers={"free": Tier(plugins=("time", "calculator", "memory_search", "web"), plugin_limit=2,
                        quotas=Quotas(tool_calls_per_day=2)),
           "premium": Tier(plugins=("*",), plugin_limit=-1)},
    plans={"month": Plan(tier="premium", days=30, price=250)},
)


def cfg() -> Config:
    return Config(settings=Settings(models={"recall": ModelSpec(model="kith/recall")}), tiers=TIERS)


def runtime(tmp_path, st_model, holder):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), admins={(GROUP, ADMIN.user_id)})
        return holder["outbox"]

    return open_runtime(cfg(), tmp_path, make, model=st_model)


async def in_chat(rt, chat_id: int, work):
    """Run ``work(ctx)`` inside the chat's actor (the ``ChatContext`` a turn gives the plugins)."""
    return await rt.supervisor.call(chat_id, work)


def call(name: str, **args: Any) -> ToolCall:
    import json

    return ToolCall.parse(f"c-{name}", name, json.dumps(args))


class Recorder:
    """A tool that keeps the context of each call."""

    plugin = "recorder"
    spec = ToolSpec("recorder", "Records its calls.", {"type": "object", "properties": {"token": {"type": "string"}}})

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, Any], ToolContext]] = []

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        self.seen.append((args, ctx))
        return ToolOutcome("recorded")

    def notice(self, args: dict[str, Any]) -> str:
        return "📼 recorded"


# ---------------------------------------------------------------------- tools_for


async def test_tools_for_is_the_governed_set_and_the_quota_counts_each_call(tmp_path, st_model) -> None:
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        host = rt.plugins
        assert isinstance(host, PluginHost) and host.reminders is not None
        names = [p.name for p in host.catalog()]
        assert names[:4] == ["time", "calculator", "memory_search", "reminders"] and "web" in names

        async def offered(ctx, user=MEMBER.user_id, tier="free"):
            tools = await host.tools_for(ctx, user, tier, UserSettings())
            return None if tools is None else [s.name for s in tools.specs]

        # the free default: the allowed, configured plugins in catalog order, up to the limit of 2
        assert await in_chat(rt, GROUP, offered) == ["time", "calculator"]
        # premium: every configured plugin (no web: not configured)
        premium = await in_chat(rt, GROUP, lambda ctx: offered(ctx, tier="premium"))
        assert set(premium) >= {"time", "calculator", "memory_search"} and "web_search" not in premium
        assert len(premium) > 3  # the reminders' tools too
        # no tiers at all: everything configured
        assert await in_chat(rt, GROUP, lambda ctx: offered(ctx, tier=None)) == premium

        async def choose(ctx):
            await ctx.save_chat_settings(ctx.settings.with_(plugins=["reminders", "memory_search", "calculator"]))

        await in_chat(rt, GROUP, choose)  # reminders is not in free: memory_search and calculator, in that order
        assert await in_chat(rt, GROUP, offered) == ["memory_search", "calculator"]

        async def two_calls_then_spent(ctx):
            tools = await host.tools_for(ctx, MEMBER.user_id, "free", UserSettings())
            a = await tools.run(call("calculator", expression="2*(3+4)"))
            b = await tools.run(call("calculator", expression="1/0"))  # an error outcome still counts
            c = await tools.run(call("calculator", expression="1+1"))  # the quota is spent mid-turn
            return a, b, c, tools.notice(call("calculator", expression="2*(3+4)"))

        a, b, c, notice = await in_chat(rt, GROUP, two_calls_then_spent)
        assert a.text.strip().endswith("14") and not a.error and b.error
        assert c.error and "quota" in c.text and "2*(3+4)" in notice
        assert await in_chat(rt, GROUP, offered) is None
        why = await in_chat(rt, GROUP, lambda ctx: host.why_no_tools(ctx, MEMBER.user_id, "free"))
        assert "2 of today's tool calls" in why
        assert await in_chat(rt, GROUP, lambda ctx: offered(ctx, user=ADMIN.user_id)) == ["memory_search", "calculator"]
        await rt.memory.flush()
        rows = [r for r in await rt.memory.store.usage.rows() if r.kind == "tool"]
        assert [(r.chat_id, r.user_id, r.model, r.prompt_tokens, r.cost_usd) for r in rows] == [
            (GROUP, MEMBER.user_id, "calculator", 0, 0.0)] * 2
    async with runtime(tmp_path, st_model, holder) as rt:  # a restart: the quota is rebuilt from usage
        assert await in_chat(rt, GROUP, lambda ctx: rt.plugins.tools_for(ctx, MEMBER.user_id, "free", UserSettings())) is None
        assert await in_chat(rt, GROUP, lambda ctx: rt.plugins.tools_for(ctx, ADMIN.user_id, "free", UserSettings())) is not None


async def test_a_calls_context_is_the_turns_and_its_values_are_not_logged(tmp_path, st_model, caplog) -> None:
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        rec = Recorder()
        host = PluginHost(rt.services, [rec])

        async def run(ctx):
            tools = await host.tools_for(ctx, MEMBER.user_id, "premium", UserSettings(timezone="Asia/Tokyo"))
            assert [s.name for s in tools.specs] == ["recorder"]
            with caplog.at_level(logging.INFO, logger="features.plugins.host"):
                return await tools.run(call("recorder", token="sk-very-secret-value", chat_id=999))

        out = await in_chat(rt, 77, run)
        assert out.text == "recorded"
        _args, tctx = rec.seen[0]
        assert tctx.chat_id == 77 and tctx.user_id == MEMBER.user_id and tctx.timezone == "Asia/Tokyo"
        assert tctx.language == "en" and tctx.now.tzinfo is not None
        assert "sk-very-secret-value" not in caplog.text and "token, chat_id" in caplog.text
        # without the member's own zone: kith.yaml's plugins.timezone
        await in_chat(rt, 77, lambda ctx: _run_plain(host, ctx))
        assert rec.seen[-1][1].timezone == "UTC"


async def _run_plain(host: PluginHost, ctx) -> None:
    tools = await host.tools_for(ctx, MEMBER.user_id, "premium", UserSettings())
    await tools.run(call("recorder"))


# ---------------------------------------------------------------------- /plugins


class Chat:
    def __init__(self, rt, outbox):
        self.rt, self.outbox, self.n = rt, outbox, 100

    async def cmd(self, chat_id, who, args=""):
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        await self.rt.supervisor.tell(chat_id, CommandEvent(chat_id, ctype, self.n, who, "plugins", args, datetime.now(UTC)))
        await self.rt.supervisor.wait_idle(chat_id)
        return self.outbox.sent[-1]

    async def press(self, chat_id, who, message_id, data):
        self.n += 1
        await self.rt.supervisor.tell(chat_id, ButtonPress(chat_id, message_id, who, data, f"q{self.n}"))
        await self.rt.supervisor.wait_idle(chat_id)
        return self.outbox.answered[-1]


def message(outbox: LocalOutbox, chat_id: int, message_id: int):
    return next(m for m in outbox.sent if m.chat_id == chat_id and m.message_id == message_id)


async def test_plugins_command_admins_toggle_within_the_limit_members_cannot(tmp_path, st_model) -> None:
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        box: LocalOutbox = holder["outbox"]
        chat = Chat(rt, box)

        seen = await chat.cmd(GROUP, MEMBER)
        assert "✅ **time**: on" in seen.text and "✅ **calculator**: on" in seen.text
        assert "⏸ **memory_search**" in seen.text and "🔒 **reminders**: not in the free tier" in seen.text
        assert "⚫ **web**: not set up" in seen.text and "2 of at most 2" in seen.text
        assert "cannot call tools" in seen.text  # the offline model takes no tools
        assert "Tool calls today: 0 / 2." in seen.text
        assert not seen.buttons and "Only this group's admins" in seen.text
        answered = await chat.press(GROUP, MEMBER, seen.message_id, "plug:time")
        assert "Only this group's admins" in answered[1]
        assert "Only this group's admins" in (await chat.cmd(GROUP, MEMBER, "off time")).text

        menu = await chat.cmd(GROUP, ADMIN)
        assert [b.data for b in menu.flat_buttons()] == ["plug:time", "plug:calculator", "plug:memory_search",
                                                         "plug:reminders"]
        # over the limit: refused with the plans
        before = len(box.sent)
        await chat.press(GROUP, ADMIN, menu.message_id, "plug:memory_search")
        refusal = box.sent[-1]
        assert len(box.sent) == before + 1 and "2 plugins on" in refusal.text
        assert [b.data for b in refusal.flat_buttons()] == ["billing:show"]
        # not in the tier: refused with the plans too
        await chat.press(GROUP, ADMIN, menu.message_id, "plug:reminders")
        assert "not part of the free tier" in box.sent[-1].text and box.sent[-1].flat_buttons()[0].data == "billing:show"
        # off, then another on: the list is edited in place
        assert await chat.press(GROUP, ADMIN, menu.message_id, "plug:time") == (f"q{chat.n}", "time: off")
        assert "➕ **time**: off" in message(box, GROUP, menu.message_id).text
        assert await chat.press(GROUP, ADMIN, menu.message_id, "plug:memory_search") == (f"q{chat.n}", "memory_search: on")
        edited = message(box, GROUP, menu.message_id).text
        assert "✅ **memory_search**: on" in edited and "⏸ **time**" in edited
        assert (await rt.memory.store.settings.chat(GROUP))["plugins"] == ["calculator", "memory_search"]
        tools = await in_chat(rt, GROUP, lambda ctx: rt.plugins.tools_for(ctx, MEMBER.user_id, "free", UserSettings()))
        assert [s.name for s in tools.specs] == ["calculator", "memory_search"]
        assert "not set up" in (await chat.cmd(GROUP, ADMIN, "on web")).text

        # a private chat is the member's own: they toggle for themselves
        mine = await chat.cmd(MEMBER.user_id, MEMBER, "off calculator")
        assert mine.text.startswith("calculator is off.") and mine.buttons
        assert (await rt.memory.store.settings.chat(MEMBER.user_id))["plugins"] == ["time"]
        assert (await rt.memory.store.settings.chat(GROUP))["plugins"] == ["calculator", "memory_search"]
        # a press in a private chat whose id is not the member's (the terminal's chat, `kith chat --as`)
        # is still theirs: no admin check, and the list it edits says so
        TERMINAL = 1
        listed = await chat.cmd(TERMINAL, MEMBER)
        assert listed.text.endswith("Press a plugin to turn it on or off for you.")
        await chat.press(TERMINAL, MEMBER, listed.message_id, "plug:time")
        assert "time" not in (await rt.memory.store.settings.chat(TERMINAL))["plugins"]  # turned off, by them
        edited = message(box, TERMINAL, listed.message_id).text
        assert "**time**: off" in edited and edited.endswith("Press a plugin to turn it on or off for you.")
