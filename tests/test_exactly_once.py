"""Exactly-once answers: the bot's stored replies are the durable record of what it answered, so a
second replay of the same transcript on the same data dir, or a message delivered again after a
restart, is not answered (nor charged) twice."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.events import Incoming, Sender
from config.models import Config, Settings, TiersConfig
from features.app import open_runtime
from transports.local import IdAllocator, LocalOutbox
from transports.replay import TranscriptClock, replay, respond_policy

pytestmark = pytest.mark.anyio

SLICE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ubuntu-irc" / "2009-03-03_10.jsonl"


def runtime(tmp_path, st_model, holder, clock=None):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    kw = {"clock": clock} if clock is not None else {}
    return open_runtime(Config(settings=Settings(), tiers=TiersConfig()), tmp_path, make, model=st_model, **kw)


async def test_a_second_replay_answers_nothing_again_and_costs_nothing(tmp_path, st_model):
    policy = respond_policy("questions")
    first_holder, second_holder = {}, {}
    async with runtime(tmp_path, st_model, first_holder, TranscriptClock()) as rt:
        first = await replay(rt, SLICE, policy=policy, limit=400)
    async with runtime(tmp_path, st_model, second_holder, TranscriptClock()) as rt:
        second = await replay(rt, SLICE, policy=policy, limit=400)
        usage = await rt.memory.store.usage.rows()
    assert first.replies > 10 and first.already_answered == 0
    assert second.replies == 0 and second_holder["outbox"].sent == []
    assert second.already_answered == first.replies
    assert len(usage) == first.replies  # charged once
    assert second.as_dict()["already_answered"] == first.replies and second.errors == 0


async def test_a_message_delivered_again_after_a_restart_is_not_answered_twice(tmp_path, st_model):
    ev = Incoming(42, "private", 7, Sender(42, "Ann"), "hello, are you there?", datetime.now(UTC))
    holder1, holder2 = {}, {}
    async with runtime(tmp_path, st_model, holder1) as rt:
        for i in range(40):  # push the message out of the recent window
            await rt.supervisor.tell(42, Incoming(42, "private", 100 + i, Sender(42, "Ann"), f"filler {i}", datetime.now(UTC),
                                                  respond=False))
        await rt.supervisor.tell(42, ev)
        await rt.supervisor.wait_all_idle()
    async with runtime(tmp_path, st_model, holder2) as rt:
        await rt.supervisor.tell(42, ev)
        await rt.supervisor.wait_all_idle()
    assert [m.reply_to for m in holder1["outbox"].sent] == [7]
    assert holder2["outbox"].sent == []
