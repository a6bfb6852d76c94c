"""Images beyond drawing (issue #28): edits and variations of a replied-to photo, several images per
request — through the real pipeline (stores in tmp_path, the shipped tiers or tiers made here) with
litellm talking to the local OpenAI-compatible server (tests/llm_server.py), and through the
Telegram transport (tests/tg_harness.py) for the reply's photo and the captioned mask.
"""
from __future__ import annotations

import functools
import gc
import io
from datetime import UTC, datetime

import anyio
import pytest
from PIL import Image

from actors.events import CommandEvent, Incoming, Media
from config.models import Config, Features, Plan, Prices, Quotas, Tier, TiersConfig
from memory.ledger import LedgerEntry
from providers.images import as_png
from tests.llm_server import TEST_PNG, _png
from tests.llm_server import llm_server as llm_server
from tests.test_media import ANNA, Chat, Downloads, open_chat, premium, served, usage_of

pytestmark = pytest.mark.anyio

PHOTO = _png(16, 12)  # the photo to edit: a real PNG other than what the server answers
MASK = _png(12, 16)  # the mask: another real PNG


@pytest.fixture(autouse=True)
async def collect_litellm_variation_clients():
    """litellm 1.106.2 makes a new AsyncOpenAI client for every image variation and never closes it;
    its ``__del__`` closes it on the running loop. Collect it while this test's loop still runs (else
    the next test's loop is handed sockets of a closed one)."""
    yield
    gc.collect()
    await anyio.sleep(0.05)


@pytest.fixture
def llm(llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return llm_server


def photo(data: bytes, dl: Downloads, kind: str = "photo", mime: str = "image/png") -> Media:
    return Media(kind, mime, len(data), "mask.png" if kind == "document" else None, download=dl.of(data))


async def command(chat: Chat, chat_id: int, who, args: str, *, reply_media: Media | None = None, media: Media | None = None) -> int:
    chat.n += 1
    ev = CommandEvent(chat_id, "private" if chat_id > 0 else "supergroup", chat.n, who, "image", args, datetime.now(UTC),
                      media=media, reply_media=reply_media)
    await chat.rt.supervisor.tell(chat_id, ev)
    await chat.rt.supervisor.wait_idle(chat_id)
    return chat.n


def uploads(llm, kind: str) -> list:
    return [r for r in llm.requests if r.path.endswith(f"/images/{kind}")]


def photos_to(chat: Chat, mid: int) -> list:
    return [m for m in chat.replies_to(mid) if m.photo is not None]


def texts_to(chat: Chat, mid: int) -> list[str]:
    return [m.text for m in chat.replies_to(mid) if m.photo is None]


def tiers_of(base: Config, **tiers: Tier) -> Config:
    return Config(settings=base.settings, tiers=TiersConfig(tiers=tiers, default_tier=next(iter(tiers)),
                                                            plans={"m": Plan(tier=list(tiers)[-1], days=30, price=100)}))


async def test_image_edit_sends_the_replied_photo_and_the_commands_own_image_as_mask(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, served(llm, image_model="dall-e-2")) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        plain = await command(chat, ANNA.user_id, ANNA, "edit make the sky blue", reply_media=photo(PHOTO, dl))
        masked = await command(chat, ANNA.user_id, ANNA, "edit put a moon in the corner", reply_media=photo(PHOTO, dl),
                               media=photo(MASK, dl, "document"))
        assert [m.text for m in photos_to(chat, plain)] == ["[photo] ✏️ make the sky blue"]
        assert [m.photo for m in photos_to(chat, masked)] == [TEST_PNG]
        recs = await usage_of(rt, "image")
        assert [r.images for r in recs] == [1, 1]
    first, second = uploads(llm, "edits")
    assert first.body["prompt"] == "make the sky blue" and first.body["image"]["data"] == PHOTO and "mask" not in first.body
    assert second.body["prompt"] == "put a moon in the corner"
    assert second.body["image"]["data"] == PHOTO and second.body["mask"]["data"] == MASK
    assert dl.calls == 3  # the photo twice, the mask once


async def test_a_jpeg_photo_is_sent_to_the_edit_as_png(tmp_path, st_model, llm):
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, served(llm, image_model="dall-e-2")) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await command(chat, ANNA.user_id, ANNA, "edit add a hat", reply_media=photo(jpeg, dl, mime="image/jpeg"))
        assert len(photos_to(chat, mid)) == 1
    [req] = uploads(llm, "edits")
    sent = req.body["image"]["data"]
    assert sent == as_png(jpeg) and sent.startswith(b"\x89PNG")
    assert Image.open(io.BytesIO(sent)).size == (20, 10)


async def test_plain_edit_requests_in_english_and_russian_edit_the_replied_photo(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        en = await chat.send(ANNA.user_id, ANNA, "edit this: make it night", reply_media=photo(PHOTO, dl))
        ru = await chat.send(ANNA.user_id, ANNA, "измени: небо должно быть зелёным", reply_media=photo(PHOTO, dl))
        ru2 = await chat.send(ANNA.user_id, ANNA, "отредактируй фото убери людей", reply_media=photo(PHOTO, dl))
        talk = await chat.send(ANNA.user_id, ANNA, "edit this: make it night")  # no photo replied to: a conversation
        assert [m.text for m in photos_to(chat, en)] == ["[photo] ✏️ make it night"]
        assert [m.text for m in photos_to(chat, ru)] == ["[photo] ✏️ небо должно быть зелёным"]
        assert [m.text for m in photos_to(chat, ru2)] == ["[photo] ✏️ убери людей"]
        assert not photos_to(chat, talk) and chat.replies_to(talk)
    assert [r.body["prompt"] for r in uploads(llm, "edits")] == ["make it night", "небо должно быть зелёным", "убери людей"]


async def test_variations_of_a_replied_photo_are_made_counted_and_sent(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, served(llm, image_model="dall-e-2")) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        one = await command(chat, ANNA.user_id, ANNA, "variations", reply_media=photo(PHOTO, dl))
        two = await command(chat, ANNA.user_id, ANNA, "variations 2", reply_media=photo(PHOTO, dl))
        assert [m.text for m in photos_to(chat, one)] == ["[photo] 🔁"]
        assert [m.text for m in photos_to(chat, two)] == ["[photo] 🔁 (1/2)", "[photo] 🔁 (2/2)"]
        assert len(await usage_of(rt, "image")) == 3
        assert rt.services.admission.quotas.today(ANNA.user_id, ANNA.user_id).images == 3
    reqs = uploads(llm, "variations")
    assert len(reqs) == 3 and all(r.body["image"]["data"] == PHOTO for r in reqs)


async def test_n_images_per_request_are_counted_clamped_and_limited_by_the_days_quota(tmp_path, st_model, llm):
    base = served(llm)
    cfg = tiers_of(base, basic=Tier(features=Features(image_generation=True), quotas=Quotas(images_per_day=10, images_per_request=1)),
                   plus=Tier(features=Features(image_generation=True), quotas=Quotas(images_per_day=6, images_per_request=4)))
    holder = {}
    async with open_chat(tmp_path, st_model, holder, cfg) as rt:
        chat = Chat(rt, holder)
        basic = await command(chat, ANNA.user_id, ANNA, "3 a cat")
        assert texts_to(chat, basic) == ["The basic tier makes 1 image per request. Several images at once come with the plus tier."]
        assert len(photos_to(chat, basic)) == 1
        await rt.services.admission.subs.grant("user", ANNA.user_id, "plus", None, "test")
        three = await command(chat, ANNA.user_id, ANNA, "n=3 a dog")
        assert [m.text for m in photos_to(chat, three)] == [f"[photo] 🎨 a dog ({i}/3)" for i in (1, 2, 3)]
        assert texts_to(chat, three) == []
        assert len(await usage_of(rt, "image")) == 4  # 1 + 3, each image counted
        clamped = await command(chat, ANNA.user_id, ANNA, "9 a bird")  # 4 per request, 2 left today (6 - 4)
        assert texts_to(chat, clamped) == ["The plus tier makes up to 4 images per request. Today's images leave room for 2 of them."]
        assert len(photos_to(chat, clamped)) == 2
        spent = await command(chat, ANNA.user_id, ANNA, "a fish")
        assert texts_to(chat, spent)[0].startswith("You've had all 6 of today's images on the plus tier")
        assert not photos_to(chat, spent)
        assert rt.services.admission.quotas.today(ANNA.user_id, ANNA.user_id).images == 6
    gens = [r.body for r in llm.requests if r.path.endswith("/images/generations")]
    assert [(b["prompt"], b["n"]) for b in gens] == [("a cat", 1), ("a dog", 3), ("a bird", 2)]


async def test_images_past_the_quota_are_each_paid_with_credits(tmp_path, st_model, llm):
    base = served(llm)
    tiers = TiersConfig(tiers={"plus": Tier(features=Features(image_generation=True), when_spent="credits",
                                            quotas=Quotas(images_per_day=1, images_per_request=4))},
                        default_tier="plus", prices=Prices(per_message={"*": 1}, per_image=7))
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, Config(settings=base.settings, tiers=tiers)) as rt:
        chat = Chat(rt, holder)
        ledger = rt.services.admission.ledger
        await ledger.append(LedgerEntry("grant:t", "user", ANNA.user_id, "grant", 100))
        mid = await command(chat, ANNA.user_id, ANNA, "3 a cat")  # 1 free, 2 paid
        assert len(photos_to(chat, mid)) == 3 and await ledger.balance("user", ANNA.user_id) == 86
        mid = await command(chat, ANNA.user_id, ANNA, "edit make it red", reply_media=photo(PHOTO, dl))
        assert len(photos_to(chat, mid)) == 1 and await ledger.balance("user", ANNA.user_id) == 79
        await ledger.append(LedgerEntry("revoke:t", "user", ANNA.user_id, "revoke", -72))  # 7 left: one more image
        mid = await command(chat, ANNA.user_id, ANNA, "variations 3", reply_media=photo(PHOTO, dl))
        assert len(photos_to(chat, mid)) == 1 and texts_to(chat, mid) == ["Today's images leave room for 1 of them."]
        assert await ledger.balance("user", ANNA.user_id) == 0
        refused = await command(chat, ANNA.user_id, ANNA, "variations", reply_media=photo(PHOTO, dl))
        assert "costs 7 credits and your balance is 0" in texts_to(chat, refused)[0]
    assert len(uploads(llm, "variations")) == 1


async def test_without_the_feature_edits_and_variations_are_refused_and_nothing_is_downloaded(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:  # the shipped free tier: no image_generation
        chat = Chat(rt, holder)
        edit = await command(chat, ANNA.user_id, ANNA, "edit make the sky blue", reply_media=photo(PHOTO, dl))
        var = await command(chat, ANNA.user_id, ANNA, "variations 2", reply_media=photo(PHOTO, dl))
        many = await command(chat, ANNA.user_id, ANNA, "3 a cat")
        plain = await chat.send(ANNA.user_id, ANNA, "измени: небо синее", reply_media=photo(PHOTO, dl))
        for mid in (edit, var, many, plain):
            [text] = texts_to(chat, mid)
            assert text.startswith("Drawing images isn't part of the free tier"), text
            assert not photos_to(chat, mid)
        assert await usage_of(rt, "image") == []
    assert dl.calls == 0
    assert not [r for r in llm.requests if "/images/" in r.path]


async def test_edit_or_variations_without_a_replied_photo_get_a_usage_message(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    voice = Media("voice", "audio/ogg", 10, None, 3.0, download=dl.of(b"OggS"))
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        bare = await command(chat, ANNA.user_id, ANNA, "edit make the sky blue")
        to_voice = await command(chat, ANNA.user_id, ANNA, "variations", reply_media=voice)
        no_prompt = await command(chat, ANNA.user_id, ANNA, "edit", reply_media=photo(PHOTO, dl))
        empty = await command(chat, ANNA.user_id, ANNA, "")
        for mid in (bare, to_voice):
            assert texts_to(chat, mid) == ["Reply to a photo with /image edit WHAT TO CHANGE or /image variations."]
        assert texts_to(chat, no_prompt) == ["Say what to change: /image edit make the sky blue"]
        [usage] = texts_to(chat, empty)
        assert "/image edit" in usage and "/image variations" in usage and "/image 3" in usage
        assert await usage_of(rt, "image") == []
    assert dl.calls == 0
    assert not [r for r in llm.requests if "/images/" in r.path]


# ---------------------------------------------------------------------- through Telegram


async def test_telegram_a_captioned_photo_replying_to_a_photo_edits_it_with_the_mask(tmp_path, st_model, llm):
    from operations.bot import serve
    from tests.tg_harness import TelegramHarness

    cfg = served(llm, image_model="dall-e-2")
    h = await TelegramHarness.create()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        app = await tg.start(functools.partial(serve, h.client, cfg, tmp_path, model=st_model, stop=stop))
        try:
            await app.runtime.services.admission.subs.grant("user", 42, "premium", None, "test")
            ann = h.user(42, "Ann")
            original = h.message(42, 42, "", media=h.photo_media(PHOTO))
            await h.deliver(original)
            await h.settle(app.runtime.supervisor)
            mid = await h.private(ann, "/image edit make the sky blue", reply_to=original.id,
                                  media=h.document_media(MASK, "mask.png", "image/png"))
            await h.settle(app.runtime.supervisor)
            later = await h.private(ann, "/image variations", reply_to=original.id)
            await h.settle(app.runtime.supervisor)
            photos = [s for s in h.sent if s.kind == "photo"]
        finally:
            stop.set()
    [edit] = uploads(llm, "edits")
    assert edit.body["prompt"] == "make the sky blue"
    assert edit.body["image"]["data"] == PHOTO and edit.body["mask"]["data"] == MASK
    assert [r.body["image"]["data"] for r in uploads(llm, "variations")] == [PHOTO]
    assert [p.text for p in photos] == ["✏️ make the sky blue", "🔁"]
    assert h.replies_to(42, mid) and h.replies_to(42, later)


async def test_a_leading_count_is_read_only_as_a_small_number_before_the_prompt():
    from features.media import split_count

    assert split_count("3 a cat") == (3, "a cat")
    assert split_count("n=2 a dog") == (2, "a dog")
    assert split_count("1984 style poster") == (None, "1984 style poster")
    assert split_count("a cat") == (None, "a cat")
    assert split_count("2") == (2, "")
