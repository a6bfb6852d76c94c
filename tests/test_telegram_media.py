"""Media through the Telegram transport, offline (tests/tg_harness.py): real raw updates carrying
documents, photos, voice notes and stickers are parsed by pyrogram into ``Incoming.media``; files are
downloaded only when the actor decides to (the harness's media session serves ``upload.GetFile``
and records every call); the bot sends photos with ``send_photo``.
"""
from __future__ import annotations

import functools
from contextlib import asynccontextmanager

import anyio
import pytest
from fpdf import FPDF
from pyrogram import raw

from config import load_config
from operations.bot import serve
from tests.tg_harness import TelegramHarness, bot_served, pyrogram_errors
from transports.telegram.outbox import TelegramOutbox
from transports.telegram.updates import media_of

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_pyrogram_errors(caplog):
    yield
    assert pyrogram_errors(caplog) == []


@asynccontextmanager
async def running_bot(tmp_path, st_model):
    cfg = load_config(None, env={})  # the shipped tiers: free = no documents, premium = documents, 20 MB
    async with bot_served(cfg, tmp_path, st_model) as (h, app):
        yield h, app


def small_pdf(fact: str) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for p in range(1, 4):
        pdf.add_page()
        pdf.multi_cell(0, 8, fact if p == 2 else f"Page {p} of the handbook: nothing to see here.")
    return bytes(pdf.output())


async def test_pyrogram_media_becomes_typed_events_without_downloading(tmp_path):
    h = await TelegramHarness.create()
    await h.start()
    try:
        ann = h.user(42, "Ann")
        msgs = {
            "document": h.message(42, 42, "see page 2", media=h.document_media(b"%PDF", "handbook.pdf", "application/pdf")),
            "photo": h.message(42, 42, "", media=h.photo_media(b"\xff\xd8jpeg")),
            "voice": h.message(42, 42, "", media=h.voice_media(b"OggS", 42)),
            "sticker": h.message(42, 42, "", media=h.sticker_media("🙂")),
        }
        seen = {}

        async def grab(client, message):
            seen[message.id] = message

        from pyrogram.handlers import MessageHandler

        h.client.add_handler(MessageHandler(grab), 5)
        await anyio.sleep(0)
        await h.deliver(*msgs.values())
        await h.dispatched()
        media = {kind: media_of(seen[m.id], h.client) for kind, m in msgs.items()}
    finally:
        await h.stop()
    assert media["document"].kind == "document" and media["document"].file_name == "handbook.pdf"
    assert media["document"].mime_type == "application/pdf" and media["document"].size == 4
    assert media["photo"].kind == "photo" and media["photo"].size == 6
    assert media["voice"].kind == "voice" and media["voice"].duration_s == 42.0
    assert media["sticker"].kind == "sticker" and media["sticker"].emoji == "🙂" and media["sticker"].download is None
    assert h.downloads == []  # describing a file downloads nothing
    assert ann.id == 42


async def test_a_document_is_downloaded_read_and_answered_with_its_page(tmp_path, st_model):
    data = small_pdf("The VPN gateway address is 10.20.30.40 and rotates every Monday.")
    async with running_bot(tmp_path, st_model) as (h, app):
        await app.runtime.services.admission.subs.grant("user", 42, "premium", None, "test")
        ann = h.user(42, "Ann")
        msg = h.message(42, 42, "what is the VPN gateway address?", media=h.document_media(data, "handbook.pdf", "application/pdf"))
        await h.deliver(msg)
        await h.settle(app.runtime.supervisor)
        reply = h.texts(42)[-1]
        docs = await app.runtime.memory.store.documents.list(42)
    assert len(h.downloads) == 1
    assert "10.20.30.40" in reply and "handbook.pdf, p. 2" in reply
    assert [(d.file_name, d.pages) for d in docs] == [("handbook.pdf", 3)]
    assert ann.id == 42


async def test_an_oversized_file_is_refused_before_any_download(tmp_path, st_model):
    async with running_bot(tmp_path, st_model) as (h, app):
        await app.runtime.services.admission.subs.grant("user", 42, "premium", None, "test")
        h.user(42, "Ann")
        media = h.document_media(b"%PDF-1.4", "scan.pdf", "application/pdf", size=25 * 1024 * 1024)
        mid = await h.private(h.users[42], "", media=media)
        await h.settle(app.runtime.supervisor)
        replies = h.replies_to(42, mid)
    assert h.downloads == []
    assert len(replies) == 1 and "20 MB" in replies[0].text


async def test_the_outbox_sends_a_photo(tmp_path):
    h = await TelegramHarness.create()
    await h.start()
    try:
        h.user(42, "Ann")
        outbox = TelegramOutbox(h.client)
        png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
        sent = await outbox.send_photo(42, png, caption="🎨 a cat on a bike", reply_to=None)
    finally:
        await h.stop()
    assert [(s.kind, s.text) for s in h.sent] == [("photo", "🎨 a cat on a bike")]
    assert h.uploads and h.uploads[-1][1] == png
    assert sent.message_id == h.sent[-1].message_id
    assert h.count(raw.functions.messages.SendMedia) == 1


async def test_polls_and_locations_are_kept_as_text(tmp_path, st_model):
    t = raw.types
    async with running_bot(tmp_path, st_model) as (h, app):
        g = h.supergroup(900, "Lunch club")
        ann = h.user(42, "Ann")
        poll = t.MessageMediaPoll(
            poll=t.Poll(id=1, hash=0, question=t.TextWithEntities(text="Lunch today?", entities=[]),
                        answers=[t.PollAnswer(text=t.TextWithEntities(text=a, entities=[]), option=bytes([i]))
                                 for i, a in enumerate(("pizza", "sushi"))]),
            results=t.PollResults())
        geo = t.MessageMediaGeo(geo=t.GeoPoint(long=13.405, lat=52.52, access_hash=1))
        p = await h.group(g, ann, "", media=poll)
        loc = await h.group(g, ann, "", media=geo)
        await h.settle(app.runtime.supervisor)
        msgs = {m.message_id: m.text for m in await app.runtime.memory.store.messages.get(g, [p, loc])}
    assert msgs == {p: "[poll] Lunch today? — pizza / sushi", loc: "[location 52.52000, 13.40500]"}
    assert h.downloads == []


async def test_a_swamped_chat_never_blocks_the_dispatcher_for_other_chats(tmp_path, st_model, monkeypatch):
    import time

    from config.models import ActorSettings, Config, ModelSpec, Settings, TiersConfig
    from tests.llm_server import FakeLLMServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer() as server:
        settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                    "slow": ModelSpec(model="openai/slow-3", api_base=server.base_url)},
                            default_model="slow", actors=ActorSettings(inbox_size=1))
        cfg = Config(settings=settings, tiers=TiersConfig())
        h = await TelegramHarness.create()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            app = await tg.start(functools.partial(serve, h.client, cfg, tmp_path, model=st_model, stop=stop))
            try:
                ann, bob = h.user(42, "Ann"), h.user(43, "Bob")
                first = await h.private(ann, "first question")  # its turn waits 3 s for the model
                await h.dispatched()
                await anyio.sleep(0.3)
                queued = await h.private(ann, "second question")  # fills Ann's inbox (size 1)
                t0 = time.perf_counter()
                swamped = await h.private(ann, "third question")  # no room: stored, Ann told once
                other = await h.private(bob, "hello from another chat")
                await h.dispatched()
                dispatch_s = time.perf_counter() - t0
                await h.settle(app.runtime.supervisor)
                stored = {m.message_id: m.text for m in await app.runtime.memory.store.messages.get(42, [first, queued, swamped])}
            finally:
                stop.set()
    assert dispatch_s < 1.5  # the dispatcher did not wait for Ann's turn
    assert stored == {first: "first question", queued: "second question", swamped: "third question"}
    assert any("busy" in s.text for s in h.replies_to(42, swamped))
    assert h.replies_to(43, other) and h.replies_to(42, first) and h.replies_to(42, queued)
    assert app.router.stats.overflowed == 1


async def test_edited_messages_update_memory_and_deleted_ones_leave_it(tmp_path, st_model):
    t = raw.types
    async with running_bot(tmp_path, st_model) as (h, app):
        g = h.supergroup(910, "Ops")
        ann = h.user(42, "Ann")
        mid = await h.group(g, ann, "the staging password is hunter2")
        other = await h.group(g, ann, "the build server is called frobnitz")
        await h.settle(app.runtime.supervisor)
        old = h.messages[(g, mid)]
        edited = t.Message(id=mid, peer_id=old.peer_id, from_id=old.from_id, date=old.date, edit_date=old.date + 60,
                           message="the staging password was rotated; ask Ann")
        h._channel_pts[g] += 1
        await h.deliver(t.UpdateEditChannelMessage(message=edited, pts=h._channel_pts[g], pts_count=1), chat_id=g, user_ids=(42,))
        await h.settle(app.runtime.supervisor)
        mem = app.runtime.memory
        await mem.flush()
        [stored] = await mem.store.messages.get(g, [mid])
        found = await mem.recall(g, "staging password", 5)
        assert stored.text == "the staging password was rotated; ask Ann"
        assert all("hunter2" not in h_.text for h_ in found.hits) and any(h_.message_id == mid for h_ in found.hits)

        h._channel_pts[g] += 1
        await h.deliver(t.UpdateDeleteChannelMessages(channel_id=910, messages=[other], pts=h._channel_pts[g], pts_count=1),
                        chat_id=g)
        await h.settle(app.runtime.supervisor)
        await mem.flush()
        assert await mem.store.messages.get(g, [other]) == []
        assert all(h_.message_id != other for h_ in (await mem.recall(g, "build server frobnitz", 5)).hits)
    assert ann.id == 42
