"""Commands and buttons through the real pipeline (stores in tmp_path, real model, kith/recall)."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from actors.events import ButtonPress, CommandEvent, Incoming, Sender
from config.models import Config, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from memory.transcripts import read_transcript
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

GROUP = -1001
ADMIN, MEMBER = Sender(10, "Ada"), Sender(11, "Bob")


def cfg() -> Config:
    models = {"recall": ModelSpec(model="kith/recall"), "other": ModelSpec(model="kith/recall", label="Other")}
    return Config(settings=Settings(models=models), tiers=TiersConfig())


class Chat:
    """Drives one runtime: ``say`` a message, ``cmd`` a command, ``press`` a button; collects turns."""

    def __init__(self, rt, outbox):
        self.rt, self.outbox, self.turns, self.n = rt, outbox, [], 100
        rt.services.on_turn = self.turns.append

    async def _go(self, chat_id, ev):
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)

    async def say(self, chat_id, who, text, **kw):
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        await self._go(chat_id, Incoming(chat_id, ctype, self.n, who, text, datetime.now(UTC), **kw))
        return self.n

    async def cmd(self, chat_id, who, command, args=""):
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        await self._go(chat_id, CommandEvent(chat_id, ctype, self.n, who, command, args, datetime.now(UTC)))
        return self.outbox.sent[-1]

    async def press(self, chat_id, who, message_id, data):
        await self._go(chat_id, ButtonPress(chat_id, message_id, who, data, f"q{self.n}"))


def runtime(tmp_path, st_model, holder):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), admins={(GROUP, ADMIN.user_id)})
        return holder["outbox"]

    return open_runtime(cfg(), tmp_path, make, model=st_model)


async def test_model_keyboard_press_switches_the_model_for_the_next_turn(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        await chat.say(5, MEMBER, "hello?")
        assert chat.turns[-1].model == "recall"
        menu = await chat.cmd(5, MEMBER, "model")
        labels = [b.text for row in menu.buttons for b in row]
        assert labels == ["✓ recall", "Other"]
        await chat.press(5, MEMBER, menu.message_id, "model:other")
        assert holder["outbox"].answered[-1][1] == "Model: other"
        await chat.say(5, MEMBER, "and now?")
        assert chat.turns[-1].model == "other"
        menu = await chat.cmd(5, MEMBER, "model")
        assert [b.text for row in menu.buttons for b in row] == ["recall", "✓ Other"]


async def test_settings_refused_for_members_applied_for_admins_and_kept_across_restart(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        refused = await chat.cmd(GROUP, MEMBER, "settings", "keywords linux")
        assert "only this group's admins" in refused.text
        await chat.say(GROUP, MEMBER, "anyone using linux here")
        assert chat.turns[-1].responded is False
        ok = await chat.cmd(GROUP, ADMIN, "settings", "keywords linux, kernel")
        assert "keywords: linux, kernel" in ok.text
        await chat.say(GROUP, MEMBER, "which linux kernel is best")
        assert chat.turns[-1].responded is True
    async with runtime(tmp_path, st_model, holder) as rt:  # a restart: settings come back from DuckDB
        chat = Chat(rt, holder["outbox"])
        await chat.say(GROUP, MEMBER, "my Kernel panics")
        assert chat.turns[-1].responded is True
        shown = await chat.cmd(GROUP, ADMIN, "settings")
        assert "keywords: linux, kernel" in shown.text


async def test_forget_erases_my_messages_from_both_stores_and_from_recall(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        await chat.say(GROUP, MEMBER, "my secret recipe uses cardamom and saffron")
        await chat.say(GROUP, ADMIN, "saffron is expensive though")
        await rt.memory.flush()
        hits = (await rt.memory.recall(GROUP, "cardamom saffron recipe", 10)).hits
        assert MEMBER.user_id in {h.user_id for h in hits}
        done = await chat.cmd(GROUP, MEMBER, "forget")
        assert "1 of your messages" in done.text
        hits = (await rt.memory.recall(GROUP, "cardamom saffron recipe", 10)).hits
        assert MEMBER.user_id not in {h.user_id for h in hits}
        assert ADMIN.user_id in {h.user_id for h in hits}
        assert await rt.memory.store.messages.count(GROUP, user_id=MEMBER.user_id) == 0
        # and the bot's next answer does not quote it
        await chat.say(GROUP, ADMIN, "what was the secret recipe?", mentions_bot=True)
        assert "cardamom" not in chat.turns[-1].reply_text


async def test_role_flow_and_buttons(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        prompt = await chat.cmd(7, MEMBER, "role")
        assert [b.data for row in prompt.buttons for b in row] == ["role:cancel", "role:delete"]
        await chat.say(7, MEMBER, "Speak like a pirate.")
        assert holder["outbox"].sent[-1].text == "Persona saved."
        assert (await rt.memory.store.settings.user(MEMBER.user_id))["role"] == "Speak like a pirate."
        assert await rt.memory.store.messages.count(7) == 0  # the persona is not conversation
        prompt = await chat.cmd(7, MEMBER, "role")
        assert "Speak like a pirate." in prompt.text
        await chat.press(7, MEMBER, prompt.message_id, "role:delete")
        assert "role" not in await rt.memory.store.settings.user(MEMBER.user_id)


async def test_reset_clears_context_and_reset_all_deletes_after_confirmation(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        for i in range(3):
            await chat.say(9, MEMBER, f"note {i}: the meeting is on Tuesday")
        await chat.cmd(9, MEMBER, "reset")
        await chat.say(9, MEMBER, "when is the meeting?")
        # the old notes are no longer in the context window, so they can be recalled as memories
        assert {h.text for h in chat.turns[-1].hits} & {f"note {i}: the meeting is on Tuesday" for i in range(3)}
        confirm = await chat.cmd(9, MEMBER, "reset", "all")
        assert [b.data for row in confirm.buttons for b in row] == [f"reset:confirm:{MEMBER.user_id}", "reset:cancel"]
        await chat.press(9, ADMIN, confirm.message_id, f"reset:confirm:{MEMBER.user_id}")  # someone else
        assert await rt.memory.store.messages.count(9) > 0
        await chat.press(9, MEMBER, confirm.message_id, f"reset:confirm:{MEMBER.user_id}")
        assert await rt.memory.store.messages.count(9) == 0
        assert await rt.memory.vectors.count(9) == 0


async def test_export_is_a_reimportable_transcript(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        await chat.say(GROUP, MEMBER, "первое сообщение")
        await chat.say(GROUP, ADMIN, "second one?", mentions_bot=True)
        refused = await chat.cmd(GROUP, MEMBER, "export")  # a group's history is its admins' by default
        assert refused.document is None and "Only this group's admins" in refused.text
        doc = await chat.cmd(GROUP, ADMIN, "export")
    assert doc.document is not None
    path = tmp_path / "export.jsonl"
    path.write_bytes(doc.document)
    msgs = [m for m in read_transcript(path) if hasattr(m, "chat_id")]
    assert [m.text for m in msgs][:2] == ["первое сообщение", "second one?"]
    assert len(msgs) == 3 and msgs[2].role == "assistant"
    assert all(json.loads(line)["chat_id"] == GROUP for line in doc.document.decode().splitlines())


async def test_history_memory_and_unknown_commands(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        await chat.say(GROUP, MEMBER, "the printer on floor 3 is broken")
        assert "Only this group's admins" in (await chat.cmd(GROUP, MEMBER, "history", "5")).text
        assert "Only this group's admins" in (await chat.cmd(GROUP, MEMBER, "reset")).text
        await chat.cmd(GROUP, ADMIN, "settings", "history members")  # the admins open it to everyone
        hist = await chat.cmd(GROUP, MEMBER, "history", "5")
        assert "the printer on floor 3 is broken" in hist.text
        mem = await chat.cmd(GROUP, MEMBER, "memory")
        assert "1 message stored" in mem.text and "1 message of yours" in mem.text
        why = await chat.cmd(GROUP, MEMBER, "memory", "printer broken")
        assert "the printer on floor 3 is broken" in why.text and "score" in why.text
        unknown = await chat.cmd(GROUP, MEMBER, "frobnicate")
        assert "Unknown command /frobnicate" in unknown.text


async def test_allowed_users_limit_who_triggers_the_bot_but_everyone_is_remembered(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        await chat.cmd(GROUP, ADMIN, "settings", f"allowed_users {ADMIN.user_id}")
        before = len(holder["outbox"].sent)
        mid = await chat.say(GROUP, MEMBER, "hey bot, what is new?", mentions_bot=True)
        await chat.cmd(GROUP, MEMBER, "help")
        assert len(holder["outbox"].sent) == before  # neither the message nor the command is answered
        assert [m.text for m in await rt.memory.store.messages.get(GROUP, [mid])] == ["hey bot, what is new?"]
        await chat.say(GROUP, ADMIN, "and for me?", mentions_bot=True)
        assert len(holder["outbox"].sent) == before + 1
        await chat.cmd(GROUP, ADMIN, "settings", "allowed_users default")
        await chat.say(GROUP, MEMBER, "now?", mentions_bot=True)
        assert len(holder["outbox"].sent) == before + 3  # the settings reply and the answer


async def test_the_shared_quota_is_shown_as_one_total_in_model_and_usage(tmp_path, st_model):
    from config.models import Quotas, Tier
    from memory.types import UsageRecord

    tiers = TiersConfig(tiers={"free": Tier(quotas=Quotas(requests_per_day={"*": 30}))})
    config = Config(settings=cfg().settings, tiers=tiers)
    holder: dict = {}

    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    async with open_runtime(config, tmp_path, make, model=st_model) as rt:
        chat = Chat(rt, holder["outbox"])
        now = datetime.now(UTC)
        for alias in ("recall", "recall", "other"):
            rt.services.admission.record(UsageRecord(now, 7, MEMBER.user_id, "chat", alias, 10, 5, 0.0, 1.0))
        usage = (await chat.cmd(7, MEMBER, "usage")).text
        model = await chat.cmd(7, MEMBER, "model")
    assert "recall, other (shared): 3 / 30 requests" in usage
    labels = [b.text for row in model.buttons for b in row]
    assert all("(27/30 shared today)" in label for label in labels), labels


# ---------------------------------------------------------------- /admin (telegram.owners)

OWNER = Sender(42, "Olga")


def owner_runtime(tmp_path, st_model, holder):
    from config.loader import SHIPPED_TIERS, load_config
    from config.models import TelegramSettings

    tiers = load_config(SHIPPED_TIERS.parent / "kith.yaml", env={}).tiers  # free / premium / unlimited
    models = {"recall": ModelSpec(model="kith/recall")}
    config = Config(settings=Settings(models=models, telegram=TelegramSettings(owners=(OWNER.user_id,))), tiers=tiers)

    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    return open_runtime(config, tmp_path, make, model=st_model)


async def test_admin_is_for_owners_in_private_and_grants_apply_at_once(tmp_path, st_model):
    holder: dict = {}
    async with owner_runtime(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder["outbox"])
        await chat.say(GROUP, MEMBER, "the printer on floor two jams again")
        await chat.say(5, MEMBER, "hello there")
        # not an owner: exactly what an unknown command gets
        assert (await chat.cmd(5, MEMBER, "admin")).text == (await chat.cmd(5, MEMBER, "nosuch")).text.replace("nosuch", "admin")
        assert "overview" not in (await chat.cmd(5, MEMBER, "admin", "grant user:11 premium")).text
        assert (await rt.services.admission.subs.get("user", 11)) is None
        # an owner in a group: no overview there (it names other chats)
        assert "private chat" in (await chat.cmd(GROUP, OWNER, "admin")).text
        text = (await chat.cmd(OWNER.user_id, OWNER, "admin")).text
        assert text.startswith("**Admin overview**") and "chat actors: " in text and "Today (UTC):" in text
        assert f"({GROUP}): 1 message" in text and "Subscriptions: 0 active" in text
        # grant by id, for this chat, revoke; each applies to the running admission at once
        assert (await chat.cmd(OWNER.user_id, OWNER, "admin", "grant user:11 premium 30")).text.startswith("user:11: premium, until ")
        assert (await rt.services.admission.profile(5, MEMBER.user_id)).tier == "premium"
        assert (await chat.cmd(GROUP, OWNER, "admin", "grant here unlimited")).text == f"chat:{GROUP}: unlimited, no expiry."
        assert (await rt.services.admission.profile(GROUP, 99)).tier == "unlimited"
        assert "user:11 premium" in (await chat.cmd(OWNER.user_id, OWNER, "admin")).text
        assert (await chat.cmd(OWNER.user_id, OWNER, "admin", "revoke user:11")).text == "user:11: revoked."
        assert (await rt.services.admission.profile(5, MEMBER.user_id)).tier == "free"
        # by reply: the owner answers a member's message in a group; the member is the target
        by_reply = CommandEvent(GROUP, "supergroup", 900, OWNER, "admin", "grant premium 7", datetime.now(UTC), reply_to_user=77)
        await chat._go(GROUP, by_reply)
        assert holder["outbox"].sent[-1].text.startswith("user:77: premium, until ")
        assert (await rt.services.admission.profile(77, 77)).tier == "premium"  # (GROUP itself is unlimited now)
        await chat._go(GROUP, replace(by_reply, message_id=901, args="revoke"))
        assert holder["outbox"].sent[-1].text == "user:77: revoked."
        # an explicit target wins over the reply
        await chat._go(GROUP, replace(by_reply, message_id=902, args="grant user:78 premium"))
        assert holder["outbox"].sent[-1].text == "user:78: premium, no expiry."
        # mistakes get the usage line, never a traceback
        assert "unknown tier" in (await chat.cmd(OWNER.user_id, OWNER, "admin", "grant user:11 gold")).text
        assert "DAYS must be a number" in (await chat.cmd(OWNER.user_id, OWNER, "admin", "grant user:11 premium soon")).text
        assert (await chat.cmd(OWNER.user_id, OWNER, "admin", "frobnicate")).text.startswith("/admin · /admin grant")
