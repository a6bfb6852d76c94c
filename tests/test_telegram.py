"""The Telegram transport on real pyrogram parsing and dispatch, offline (tests/tg_harness.py).

Tests marked "pipeline" run the whole bot through ``serve``: the real client start (GetState,
get_me, recover_gaps), the dispatcher, the router, the supervisor and chat actors, DuckDB and
LanceDB in tmp_path, the real embedding model and the offline kith/recall model.
"""
from __future__ import annotations

import functools
import itertools
import os
import signal
import threading
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import anyio
import pytest
from pyrogram import raw
from pyrogram.errors import FloodWait

from actors.outbox import Button
from config.models import Config, ModelSpec, Settings, TelegramSettings, TiersConfig
from operations.bot import serve
from tests.task_groups import live_tasks
from tests.tg_harness import BOT_ID, TelegramHarness, failing_connect, pyrogram_errors, roundtrip, rpc_error, utf16_offset
from transports.telegram.client import COMMANDS, stop_receiving
from transports.telegram.outbox import TelegramOutbox
from transports.telegram.render import render, utf16_len

pytestmark = pytest.mark.anyio


def config(**telegram) -> Config:
    settings = Settings(models={"recall": ModelSpec(model="kith/recall")}, telegram=TelegramSettings(**telegram))
    return Config(settings=settings, tiers=TiersConfig())


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it (or the test advances it)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += max(0.0, seconds)
        await anyio.sleep(0)


@pytest.fixture(autouse=True)
def no_pyrogram_errors(caplog):
    """The dispatcher only logs handler exceptions: every test also checks nothing was logged."""
    yield
    assert pyrogram_errors(caplog) == []


@asynccontextmanager
async def running_bot(tmp_path, st_model, cfg: Config | None = None, *, clock: FakeClock | None = None, before_start=None, **harness):
    """The bot served on a harness client; yields (harness, BotApp). Leaving stops it gracefully."""
    cfg = cfg or config()
    h = await TelegramHarness.create(**harness)
    if before_start is not None:
        before_start(h)
    outbox = None
    if clock is not None:
        outbox = TelegramOutbox(h.client, cfg.settings.telegram, stream_interval_s=cfg.settings.llm.stream_edit_interval_s,
                                clock=clock, sleep=clock.sleep)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        app = await tg.start(functools.partial(serve, h.client, cfg, tmp_path, model=st_model, outbox=outbox, stop=stop))
        try:
            yield h, app
        finally:
            stop.set()


async def stored(app, chat_id: int) -> list:
    await app.runtime.memory.flush()
    msgs = []
    async for batch in app.runtime.memory.store.messages.iter(chat_id):
        msgs.extend(batch)
    return msgs


# ---------------------------------------------------------------------- the pipeline


async def test_a_private_message_gets_exactly_one_reply(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann", "Lee", "ann")
        mid = await h.private(ann, "hello, do you remember anything?")
        await h.settle(app.runtime.supervisor)
        replies = h.replies_to(42, mid)
        assert len(replies) == 1
        msgs = await stored(app, 42)
    assert [m.text for m in msgs if m.user_id == 42] == ["hello, do you remember anything?"]
    assert [m.user_name for m in msgs if m.user_id == 42] == ["Ann Lee"]
    assert len([m for m in msgs if m.user_id == BOT_ID]) == 1  # the reply is stored under the bot's id
    assert h.commands == [c for c, _ in COMMANDS]  # the command menu was registered at start
    assert h.count(raw.functions.updates.GetDifference) == 1  # gaps recovered at start


async def test_group_triggers_mention_reply_and_keyword(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann, bob = h.user(42, "Ann"), h.user(43, "Bob", username="bob")
        g = h.supergroup(555, "Kith fans")
        await app.runtime.memory.store.settings.set_chat(g, {"keywords": ["kithbot"]})
        sup = app.runtime.supervisor

        quiet = await h.group(g, ann, "the wifi password is hunter2")
        await h.settle(sup)
        assert h.sent == []  # stored, not answered

        text = "@kith_bot what is the wifi password?"
        off, n = utf16_offset(text, "@kith_bot")
        asked = await h.group(g, bob, text, entities=[raw.types.MessageEntityMention(offset=off, length=n)])
        await h.settle(sup)
        (answer,) = h.replies_to(g, asked)

        followup = await h.group(g, ann, "and the guest network?", reply_to=answer.message_id)
        await h.settle(sup)
        assert len(h.replies_to(g, followup)) == 1  # a reply to the bot is addressed to it

        keyword = await h.group(g, bob, "KithBot, any news?")
        other = await h.group(g, bob, "nobody asked the bot this")
        await h.settle(sup)
        assert len(h.replies_to(g, keyword)) == 1
        assert h.replies_to(g, other) == []

        msgs = await stored(app, g)
    user_ids = {m.message_id for m in msgs if m.user_id in (42, 43)}
    assert {quiet, asked, followup, keyword, other} <= user_ids
    assert len([m for m in msgs if m.user_id == BOT_ID]) == len(h.sent) == 3


async def test_a_text_mention_and_an_emoji_before_the_mention_count(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann")
        g = h.supergroup(556, "Emoji")
        text = "🙂🙂 hey Kith, what did we say?"
        off, n = utf16_offset(text, "Kith")
        assert off == 9  # two surrogate pairs + " hey "
        mid = await h.group(g, ann, text, entities=[raw.types.MessageEntityMentionName(offset=off, length=n, user_id=BOT_ID)])
        await h.settle(app.runtime.supervisor)
        assert len(h.replies_to(g, mid)) == 1


async def test_a_redelivered_update_is_stored_and_answered_once(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        h.user(42, "Ann")
        msg = h.message(42, 42, "is anybody there?")
        await h.deliver(msg)
        await h.settle(app.runtime.supervisor)
        await h.deliver(msg)  # Telegram delivers it again (e.g. after a reconnect)
        await h.settle(app.runtime.supervisor)
        assert len(h.replies_to(42, msg.id)) == 1
        assert app.router.stats.duplicates == 1
        msgs = await stored(app, 42)
    assert [m.message_id for m in msgs if m.user_id == 42] == [msg.id]


async def test_updates_missed_while_offline_are_recovered_at_start_and_answered_once(tmp_path, st_model):
    def missed(h: TelegramHarness) -> None:
        h.user(42, "Ann")
        h.pending_difference = [h.message(42, 42, "did you get this while you were away?")]

    async with running_bot(tmp_path, st_model, before_start=missed) as (h, app):
        (msg,) = [m for (c, _), m in h.messages.items() if c == 42]
        await h.settle(app.runtime.supervisor)
        assert len(h.replies_to(42, msg.id)) == 1
        await h.deliver(msg)  # ... and the live copy that raced it
        await h.settle(app.runtime.supervisor)
        assert len(h.replies_to(42, msg.id)) == 1


async def test_a_flood_wait_on_send_delays_the_reply_which_arrives_once(tmp_path, st_model):
    clock = FakeClock()
    async with running_bot(tmp_path, st_model, clock=clock) as (h, app):
        ann = h.user(42, "Ann")
        h.fail(raw.functions.messages.SendMessage, FloodWait(value=3))
        mid = await h.private(ann, "hello after a flood?")
        await h.settle(app.runtime.supervisor)
        assert len(h.replies_to(42, mid)) == 1
        assert h.count(raw.functions.messages.SendMessage) == 2  # the refused call and its retry
        assert 3 in clock.slept  # the wait Telegram asked for
        assert app.outbox.limits.stats.flood_waits == 1


async def test_commands_reach_the_actor_and_commands_for_other_bots_are_ignored(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann")
        g = h.supergroup(557, "Bots")
        sup = app.runtime.supervisor
        private = await h.private(ann, "/help")
        mine = await h.group(g, ann, "/help@kith_bot")
        other = await h.group(g, ann, "/help@other_bot please")
        await h.settle(sup)
        assert len(h.replies_to(42, private)) == 1
        assert len(h.replies_to(g, mine)) == 1
        assert h.replies_to(g, other) == []
        assert "remember" in h.replies_to(42, private)[0].text


async def test_button_press_becomes_a_button_event_and_is_answered(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        h.user(42, "Ann")
        sent = await app.outbox.send_buttons(42, "Pick a model", [[Button("Fast", "model:fast"), Button("Smart", "model:smart")]])
        markup = h.sent[-1].markup
        assert [b.type.data for b in markup.rows[0].buttons] == [b"model:fast", b"model:smart"]
        qid = await h.press(h.users[42], 42, sent.message_id, "model:smart")
        await h.settle(app.runtime.supervisor)
        assert [a[0] for a in h.answers] == [qid]  # the chat actor answered the press
        await app.outbox.edit(42, sent.message_id, "Model: *Smart*")
        assert h.edits[-1].markup is not None  # an edit keeps the keyboard


async def test_a_pre_checkout_query_is_answered_by_the_buyers_chat(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann")
        qid = await h.pre_checkout(ann, "kith:plan:nosuchplan:user:42", 250)
        await h.settle(app.runtime.supervisor)
        (answer,) = h.pre_checkout_answers
        assert answer[0] == qid and answer[1] is False and answer[2]  # no such plan: refused, with a reason


async def test_channel_gate_serves_members_and_tells_others_once(tmp_path, st_model):
    cfg = config(require_channel="@kith_news")
    async with running_bot(tmp_path, st_model, cfg) as (h, app):
        chan = h.channel(999, "Kith news", "kith_news")
        ann, bob = h.user(42, "Ann"), h.user(43, "Bob")
        h.members[(chan, 42)] = "member"
        sup = app.runtime.supervisor
        a1 = await h.private(ann, "hi, member here?")
        b1 = await h.private(bob, "hi, let me in?")
        b2 = await h.private(bob, "please?")
        a2 = await h.private(ann, "again?")
        await h.settle(sup)
        await h.until(lambda: len(h.sent) >= 3)
        assert len(h.replies_to(42, a1)) == len(h.replies_to(42, a2)) == 1
        (notice,) = [s for s in h.sent if s.chat_id == 43]
        assert "https://t.me/kith_news" in notice.text and notice.reply_to == b1
        assert h.replies_to(43, b2) == []
        assert h.count(raw.functions.channels.GetParticipant) == 2  # one per user: cached
        assert await stored(app, 43) == []  # a gated user's messages are not events


async def test_joining_a_group_without_reading_rights_explains_privacy_mode_once(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann")
        g = h.supergroup(558, "New group")
        admin_g = h.supergroup(559, "Admins")
        h.members[(admin_g, BOT_ID)] = "admin"
        await h.added_to_group(g, ann)
        await h.added_to_group(g, ann)  # added again (or the update re-delivered): no second notice
        await h.added_to_group(admin_g, ann)
        await h.added_to_group(g, ann, 43)  # someone else joined
        await h.settle(app.runtime.supervisor)
        await h.until(lambda: len(h.sent) >= 1)
        await anyio.sleep(0.05)
        (notice,) = h.sent
        assert notice.chat_id == g
        assert "/setprivacy" in notice.text and "admin" in notice.text


async def test_a_bot_that_reads_all_messages_sends_no_privacy_notice(tmp_path, st_model):
    async with running_bot(tmp_path, st_model, can_read_all=True) as (h, app):
        ann = h.user(42, "Ann")
        g = h.supergroup(560, "Open bot")
        await h.added_to_group(g, ann)
        await h.settle(app.runtime.supervisor)
        await anyio.sleep(0.05)
        assert h.sent == []
        assert h.count(raw.functions.channels.GetParticipant) == 0


async def test_forum_topics_become_threads_and_replies_stay_in_the_topic(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann")
        f = h.supergroup(561, "Forum", forum=True)
        text = "@kith_bot which topic is this?"
        off, n = utf16_offset(text, "@kith_bot")
        mid = await h.group(f, ann, text, topic=77, entities=[raw.types.MessageEntityMention(offset=off, length=n)])
        await h.settle(app.runtime.supervisor)
        (reply,) = h.replies_to(f, mid)
        assert reply.thread_id == 77
        (msg,) = [m for m in await stored(app, f) if m.message_id == mid]
    assert msg.thread_id == 77 and msg.reply_to is None  # being in a topic is not a reply


async def test_shutdown_waits_for_the_turns_in_flight_and_their_replies_go_out(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, _app):
        for uid in (42, 43, 44):
            h.user(uid, f"U{uid}")
            await h.private(h.users[uid], "a question just before the shutdown?")
        await h.dispatched()  # told to the actors, not answered yet
    assert sorted(s.chat_id for s in h.sent) == [42, 43, 44]
    assert not h.client.is_connected  # the client stopped after the drain


async def test_shutdown_drops_queued_updates_and_rewinds_them_for_the_next_start(tmp_path, st_model):
    rewound = {}
    async with running_bot(tmp_path, st_model) as (h, app):
        ann = h.user(42, "Ann")
        await h.private(ann, "first?")
        await h.settle(app.runtime.supervisor)
        stop_receiving(h.client, app.router)
        # already queued when the bot began to stop: dropped, and its pts remembered
        late = h.message(42, 42, "second?")
        upd = roundtrip(raw.types.UpdateNewMessage(message=late, pts=500, pts_count=1))
        h.client.dispatcher.updates_queue.put_nowait((upd, {42: h.users[42], BOT_ID: h.bot}, {}))
        await h.dispatched()
        # arriving after that: not even acknowledged
        await h.private(ann, "third?")
        await h.dispatched()

        class Storage:
            async def set_update_state(self, states):
                rewound.update({s.id: s.pts for s in states})

        await app.router.rewind(Storage())
        assert len(h.sent) == 1
    assert rewound == {0: 499}
    assert app.router.stats.dropped == 1


# ---------------------------------------------------------------------- outbox on a fake clock


@asynccontextmanager
async def outbox_on(clock: FakeClock, settings: TelegramSettings | None = None, **kw):
    h = await TelegramHarness.create()
    h.user(42, "Ann")
    await h.start()
    try:
        yield h, TelegramOutbox(h.client, settings or TelegramSettings(), clock=clock, sleep=clock.sleep, **kw)
    finally:
        await h.stop()


def long_markdown() -> str:
    para = (
        "**Kith** remembers what was said — _who_ said it and when. See [the docs](https://example.org/kith) "
        "and run `kith chat` 🙂. Ünïcödé and 你好 are fine too. "
    )
    blocks = []
    for i in range(40):
        blocks.append(f"## Section {i}\n\n" + para * 2)
        if i % 9 == 4:
            blocks.append("```python\n" + "\n".join(f"print({j})  # line {j} 🙂" for j in range(30)) + "\n```")
        if i % 13 == 7:
            blocks.append("> " + "a very long quoted line " * 220)  # one line of ~5,000 units inside a quote
    return "\n\n".join(blocks)


RAW_KINDS = {
    raw.types.MessageEntityBold: {"bold"},
    raw.types.MessageEntityItalic: {"italic"},
    raw.types.MessageEntityUnderline: {"underline"},
    raw.types.MessageEntityStrike: {"strikethrough"},
    raw.types.MessageEntityCode: {"code"},
    raw.types.MessageEntityPre: {"pre"},
    raw.types.MessageEntityTextUrl: {"text_link"},
    raw.types.MessageEntityBlockquote: {"blockquote", "expandable_blockquote"},
    raw.types.MessageEntitySpoiler: {"spoiler"},
}


def check_parts(h: TelegramHarness, chat_id: int, markdown: str) -> list:
    whole = render(markdown)
    texts = h.texts(chat_id)
    sent = [s for s in h.sent if s.chat_id == chat_id]
    final = {(e.chat_id, e.message_id): e for e in h.edits}
    parts = [final.get((s.chat_id, s.message_id), s) for s in sent]
    assert len(parts) >= 3
    # nothing lost, nothing added (pyrogram, like Telegram, trims a message without entities)
    assert " ".join(" ".join(texts).split()) == " ".join(whole.text.split())
    start = 0
    for p in parts:
        units = utf16_len(p.text)
        assert 0 < units <= 4096
        for e in p.entities:
            assert e.length > 0 and e.offset >= 0 and e.offset + e.length <= units
            # each entity lies within an entity of the same kind in the whole rendering
            kinds = RAW_KINDS[type(e)]
            g0, g1 = start + e.offset, start + e.offset + e.length
            assert any(o.offset <= g0 and g1 <= o.offset + o.length for o in whole.entities if o.type in kinds), (kinds, g0, g1)
        start += units
    return parts


async def test_a_10000_character_answer_is_split_without_losing_text_or_breaking_entities():
    md = long_markdown()
    assert len(md) > 10_000
    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        first = await out.send(42, md, reply_to=7)
        parts = check_parts(h, 42, md)
        assert first.message_id == h.sent[0].message_id and h.sent[0].reply_to == 7
        assert all(s.reply_to is None for s in h.sent[1:])
        assert sum(len(p.entities) for p in parts) >= len(render(md).entities)  # clipped, never dropped
        # a split at a paragraph keeps whole paragraphs: most parts end with a blank line
        assert sum(p.text.endswith("\n\n") for p in parts[:-1]) >= len(parts) // 2


async def test_a_long_streamed_answer_ends_split_with_the_first_part_edited_in_place():
    md = long_markdown()
    clock = FakeClock()
    async with outbox_on(clock, drafts=False) as (h, out):
        g = h.supergroup(600, "Stream")
        stream = await out.stream(g, reply_to=5)
        clock.t += 5
        await stream.update("**Kith** remembers")
        clock.t += 10
        await stream.finish(md)
        check_parts(h, g, md)
        assert h.sent[0].reply_to == 5
        assert [e.message_id for e in h.edits] == [h.sent[0].message_id]  # the progress message became part 1


async def test_a_quick_answer_is_sent_once_without_progress():
    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        g = h.supergroup(605, "Quick")
        for chat_id in (g, 42):
            stream = await out.stream(chat_id, reply_to=5)
            for word in ("a", "a quick", "a quick answer"):
                await stream.update(word)
                clock.t += 0.05
            await stream.finish("a quick answer")
        assert [s.text for s in h.sent] == ["a quick answer"] * 2
        assert h.edits == [] and h.drafts == []


@pytest.mark.parametrize("chat", ["group", "private"])
async def test_a_60_second_stream_stays_within_the_edit_budget(chat):
    clock = FakeClock()
    interval = 1.0
    async with outbox_on(clock, stream_interval_s=interval) as (h, out):
        chat_id = h.supergroup(601, "Stream") if chat == "group" else 42
        stream = await out.stream(chat_id, reply_to=1)
        text = ""
        for i in range(600):  # 600 deltas over 60 s, 6,000 characters
            text += f"word{i:04d} "
            await stream.update(text)
            clock.t += 0.1
        await stream.finish(text + "**done**")
        budget = 60 / interval + 3
        if chat == "group":
            assert 5 <= len(h.edits) <= 60 / 3 + 3  # groups: at most one edit per 3 s (20/min)
            assert h.drafts == []
        else:
            assert 10 <= len(h.drafts) <= budget  # private chats stream drafts
            assert h.edits == []
        assert len(h.edits) + len(h.drafts) <= budget
        assert " ".join(" ".join(h.texts(chat_id)).split()) == render(text + "**done**").text.strip()
        assert h.texts(chat_id)[-1].endswith("done")
        last = h.edits[-1] if chat == "group" and len(h.sent) == 1 else h.sent[-1]
        assert last.entities and isinstance(last.entities[-1], raw.types.MessageEntityBold)  # formatting survives edits
        assert h.sent[0].reply_to == 1


async def test_a_flood_wait_during_streaming_backs_off_and_loses_nothing():
    clock = FakeClock()
    async with outbox_on(clock, drafts=False) as (h, out):
        g = h.supergroup(602, "Flood")
        stream = await out.stream(g)
        await stream.update("start")
        h.fail(raw.functions.messages.EditMessage, FloodWait(value=10))
        text = "start"
        times = []
        for i in range(300):
            text += " more"
            n = len(h.edits)
            await stream.update(text)
            if len(h.edits) > n:
                times.append(clock.t)
            clock.t += 0.1
        await stream.finish(text)
        assert times and times[0] >= 1000 + 10  # nothing until the FloodWait is over
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 6 for g in gaps)  # the interval doubled (3 s in groups → 6 s)
        assert h.texts(g) == [render(text).text]


async def test_rejected_entities_are_resent_as_plain_text_and_a_vanished_reply_target_is_dropped():
    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        h.fail(raw.functions.messages.SendMessage, rpc_error("ENTITY_BOUNDS_INVALID"))
        await out.send(42, "**bold** and `code`", reply_to=3)
        assert [(s.text, s.entities, s.reply_to) for s in h.sent] == [("bold and code", [], 3)]
        h.fail(raw.functions.messages.SendMessage, rpc_error("REPLY_MESSAGE_ID_INVALID"))
        await out.send(42, "plain words", reply_to=99)
        assert (h.sent[-1].text, h.sent[-1].reply_to) == ("plain words", None)
        assert out.stats.plain_fallbacks == 1 and out.stats.reply_fallbacks == 1


async def test_a_blocked_user_raises_delivery_failed_not_a_pyrogram_error():
    from actors.errors import ActorError

    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        h.fail(raw.functions.messages.SendMessage, rpc_error("USER_IS_BLOCKED", 403))
        with pytest.raises(ActorError, match="USER_IS_BLOCKED"):
            await out.send(42, "hello")


async def test_budgets_space_messages_per_chat_and_per_group():
    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        g = h.supergroup(603, "Busy")
        t0 = clock.t
        for i in range(6):
            await out.send(42, f"private {i}")
        assert clock.t - t0 >= 4 - 1e-9  # ~1/s per chat after a burst of 2
        t1 = clock.t
        for i in range(25):
            await out.send(g, f"group {i}")
        assert clock.t - t1 >= (25 - 5) * 3 - 1e-6  # 20/min per group after a burst of 5


async def test_documents_go_out_with_their_name_and_a_long_caption_continues_in_messages():
    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        caption = "**Export** of this chat. " + "words " * 400
        sent = await out.send_document(42, "history.jsonl", b'{"a": 1}\n', caption=caption, reply_to=9)
        assert h.uploads == [("history.jsonl", b'{"a": 1}\n')]
        doc, *rest = h.sent
        assert doc.kind == "document" and doc.reply_to == 9 and doc.message_id == sent.message_id
        assert utf16_len(doc.text) <= 1024 and rest
        assert doc.text + "".join(r.text for r in rest) == render(caption).text


async def test_is_admin_asks_telegram_once_a_minute():
    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        g = h.supergroup(604, "Admins")
        h.user(43, "Bob")
        h.members[(g, 42)] = "creator"
        h.members[(g, 43)] = "member"
        assert await out.is_admin(g, 42) and not await out.is_admin(g, 43)
        assert await out.is_admin(g, 42)
        assert h.count(raw.functions.channels.GetParticipant) == 2
        clock.t += 61
        assert await out.is_admin(g, 42)
        assert h.count(raw.functions.channels.GetParticipant) == 3
        assert await out.is_admin(42, 42) and not await out.is_admin(42, 43)  # a private chat is its user's


async def test_run_bot_names_every_missing_credential(tmp_path, monkeypatch):
    from config.errors import MissingSecret
    from operations.bot import run_bot

    for name in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingSecret) as err:
        await run_bot(config(), tmp_path)
    assert "TELEGRAM_API_ID" in str(err.value) and "TELEGRAM_BOT_TOKEN" in str(err.value)


def test_a_signal_watcher_that_cannot_install_its_handlers_raises_that_error_and_leaves_no_task():
    from operations.bot import _stop_signal

    seen: dict = {}

    async def enter() -> None:  # off the main thread, signal handlers cannot be installed
        before = live_tasks()
        try:
            async with _stop_signal(None):
                seen["body"] = True
        except BaseException as exc:
            seen["error"] = exc
        seen["left"] = live_tasks() - before

    thread = threading.Thread(target=anyio.run, args=(enter,))
    thread.start()
    thread.join(30)
    assert type(seen["error"]) is RuntimeError and "main thread" in str(seen["error"])  # itself, no ExceptionGroup
    assert "body" not in seen and seen["left"] == set()


async def test_the_signal_watchers_see_their_signals_and_leaving_stops_them():
    from operations.bot import _reload_signal, _stop_signal

    before = live_tasks()
    reloads: list[int] = []
    async with _reload_signal([lambda: reloads.append(1)], watch=True), _stop_signal(None) as stopped:
        assert len(live_tasks() - before) == 2  # the handlers are in place once the body runs
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGINT)
        with anyio.fail_after(5):
            await stopped.wait()
            while not reloads:
                await anyio.sleep(0.01)
    assert live_tasks() == before
    async with _stop_signal(stopped) as given:  # an event given: nothing is watched
        assert given is stopped and live_tasks() == before


def test_events_carry_utc_dates():
    from transports.telegram.outbox import to_utc

    naive_local = datetime.fromtimestamp(1_700_000_000)
    assert to_utc(naive_local) == datetime.fromtimestamp(1_700_000_000, UTC)


async def test_invoices_and_pre_checkout_answers():
    from tiers.payments import Invoice

    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        inv = Invoice(plan="month", title="Premium, 30 days", description="Everything, for a month", payload="kith:plan:month:user:42",
                      currency="XTR", prices=(("Premium", 250),), provider_token="")
        sent = await out.send_invoice(42, inv, reply_to=3)
        (call,) = [c for c in h.calls if isinstance(c, raw.functions.messages.SendMedia)]
        media = call.media
        assert isinstance(media, raw.types.InputMediaInvoice)
        assert (media.title, media.invoice.currency, media.payload) == ("Premium, 30 days", "XTR", b"kith:plan:month:user:42")
        assert [(p.label, p.amount) for p in media.invoice.prices] == [("Premium", 250)]
        assert h.sent[-1].kind == "invoice" and h.sent[-1].message_id == sent.message_id and h.sent[-1].reply_to == 3
        await out.answer_pre_checkout("777", True)
        await out.answer_pre_checkout("778", False, "This plan is no longer sold.")
        assert h.pre_checkout_answers == [("777", True, None), ("778", False, "This plan is no longer sold.")]


async def test_pre_checkout_queries_and_payments_become_events():
    from actors.events import PAYMENTS_DESK, PaymentEvent, PreCheckout

    clock = FakeClock()
    async with outbox_on(clock) as (h, out):
        from transports.telegram.updates import UpdateRouter

        told = []

        class Sup:
            async def tell(self, chat_id, event):
                told.append((chat_id, event))

        router = UpdateRouter(h.client, out, TelegramSettings(require_channel="@kith_news"))
        router.register(h.client)
        await anyio.sleep(0)
        me = h.client.me
        from actors.services import BotIdentity

        async with anyio.create_task_group() as notices:
            router.attach(Sup(), BotIdentity(me.id, me.first_name, me.username), spawn=notices.start_soon)
            ann = h.users[42]
            qid = await h.pre_checkout(ann, "kith:plan:month:user:42", 250)
            mid = await h.paid(ann, 42, "kith:plan:month:user:42", 250, "charge-1")
            await h.dispatched()
        (c1, pre), (c2, pay) = told
        assert (c1, c2) == (PAYMENTS_DESK, 42)  # pre-checkouts never wait behind the buyer's turns
        assert pre == PreCheckout(42, pre.sender, qid, "kith:plan:month:user:42", 250, "XTR") and pre.sender.user_id == 42
        assert isinstance(pay, PaymentEvent) and (pay.message_id, pay.charge_id, pay.payload, pay.total_amount) == (mid, "charge-1", "kith:plan:month:user:42", 250)
        assert h.count(raw.functions.channels.GetParticipant) == 0  # payments are never gated
        router.close()


# ---------------------------------------------------------------- Telegram unreachable at start


async def test_the_bot_retries_while_telegram_is_unreachable_and_logs_one_line_per_attempt(tmp_path, st_model, caplog):
    caplog.set_level("INFO", logger="transports.telegram.client")
    cfg = config(reconnect_initial_s=0.05, reconnect_max_s=0.1)
    failures = [OSError(101, "Network is unreachable"), KeyError(0), TimeoutError()]
    async with running_bot(tmp_path, st_model, cfg, before_start=lambda h: failing_connect(h, failures)) as (h, app):
        ann = h.user(555, "Ann")
        await h.private(ann, "hello after the outage")
        await h.settle(app.runtime.supervisor)
        assert h.texts(555)
    lines = [r.getMessage() for r in caplog.records if "telegram: cannot connect" in r.getMessage()]
    assert lines == ["telegram: cannot connect (OSError: [Errno 101] Network is unreachable); retry 1 in 0 s",
                     "telegram: cannot connect (no answer to the handshake, KeyError: 0); retry 2 in 0 s",
                     "telegram: cannot connect (TimeoutError); retry 3 in 0 s"]
    assert any("connected (attempt 4)" in r.getMessage() for r in caplog.records)
    assert all(r.exc_info is None for r in caplog.records if r.name == "transports.telegram.client")  # no tracebacks


async def test_a_refused_login_is_one_clear_error_not_a_retry(tmp_path, st_model):
    from actors.errors import TelegramRefused

    h = await TelegramHarness.create()
    failing_connect(h, [rpc_error("ACCESS_TOKEN_INVALID", 400, raw.functions.auth.ImportBotAuthorization)] * 5)
    with pytest.raises(TelegramRefused, match="ACCESS_TOKEN_INVALID.*TELEGRAM_BOT_TOKEN"):
        await serve(h.client, config(reconnect_initial_s=0.05), tmp_path, model=st_model, stop=anyio.Event())


async def test_stopping_while_telegram_is_unreachable_exits_promptly(tmp_path, st_model):
    h = await TelegramHarness.create()
    failing_connect(h, [ConnectionError("no route")] * 1000)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(serve, h.client, config(reconnect_initial_s=30), tmp_path, model=st_model, stop=stop))
        await anyio.sleep(0.5)
        t0 = anyio.current_time()
        stop.set()
    assert anyio.current_time() - t0 < 5


async def test_systemd_hears_the_connecting_status_then_ready_then_stopping(tmp_path, st_model, monkeypatch):
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        cfg = config(reconnect_initial_s=0.05, reconnect_max_s=0.1)
        async with running_bot(tmp_path, st_model, cfg, before_start=lambda h: failing_connect(h, [TimeoutError()])):
            pass
        got = []
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    assert got == ["STATUS=telegram: connecting",
                   "STATUS=telegram: connecting, retry 1 in 0 s (TimeoutError)",
                   "READY=1\nSTATUS=connected as @kith_bot",
                   "STOPPING=1\nSTATUS=stopping: draining the turns in flight"]


# ---------------------------------------------------------------- a basic group upgraded to a supergroup


async def test_a_group_upgraded_to_a_supergroup_keeps_its_memory_and_settings(tmp_path, st_model):
    from memory.types import migrated_id

    async with running_bot(tmp_path, st_model) as (h, app):
        ann, bob = h.user(501, "Ann"), h.user(502, "Bob")
        old = h.basic_group(4001, "Ops")
        await h.group(old, ann, "the staging database password rotates every friday afternoon")
        for i in range(35):  # push it out of the recent window
            last_old = await h.group(old, bob, f"unrelated chatter number {i}")
        await h.settle(app.runtime.supervisor)
        await app.runtime.memory.store.settings.set_chat(old, {"keywords": ["kithy"]})
        new = h.supergroup(4001999, "Ops")
        svc = raw.types.MessageService(id=h._next_id(old), peer_id=h._peer(old), from_id=raw.types.PeerUser(user_id=ann.id),
                                       date=int(__import__("time").time()),
                                       action=raw.types.MessageActionChatMigrateTo(channel_id=4001999))
        await h.deliver(svc, chat_id=old, user_ids=(ann.id,))
        await h.settle(app.runtime.supervisor)
        await app.runtime.supervisor.wait_all_idle()
        store = app.runtime.memory.store
        assert await store.messages.count(old) == 0 and await store.messages.count(new) == 36
        assert (await store.settings.chat(new))["keywords"] == ["kithy"]
        first = await h.group(new, bob, "kithy when does the staging password rotate?")  # the new group's ids restart
        await h.settle(app.runtime.supervisor)
        replies = h.replies_to(new, first)
        assert replies and "friday" in replies[0].text.lower()
        recent = await store.messages.recent(new, 3)  # the moved history stays older than the supergroup's own messages
        assert [m.message_id for m in recent[:2]] == [migrated_id(last_old), first] and recent[2].role == "assistant"


async def test_an_owner_grants_a_member_by_replying_to_their_message(tmp_path, st_model):
    from config.loader import load_config

    shipped = load_config(None, env={})
    cfg = Config(settings=config(owners=(42,)).settings, tiers=shipped.tiers)  # free / premium / unlimited
    async with running_bot(tmp_path, st_model, cfg) as (h, app):
        olga, bob = h.user(42, "Olga"), h.user(43, "Bob")
        g = h.supergroup(556, "Kith admins")
        said = await h.group(g, bob, "could I get premium here?")
        await h.settle(app.runtime.supervisor)
        grant = await h.group(g, olga, "/admin grant premium 7", reply_to=said)
        await h.settle(app.runtime.supervisor)
        (answer,) = h.replies_to(g, grant)
        assert answer.text.startswith("user:43: premium, until ")
        assert (await app.runtime.services.admission.profile(g, 43)).tier == "premium"
