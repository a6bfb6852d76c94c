"""Media through the real pipeline: documents, photos, stickers and refusals (stores in tmp_path, the
real embedding model, real PDF/DOCX files made here, the offline kith/recall model).

The tiers are the shipped ``tiers.yaml`` (free: no documents, no vision, 5 MB files; premium: both,
20 MB files). Files are handed to the actor as ``Media`` with a download handle that counts its calls,
as the Telegram transport's would.
"""
from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from fpdf import FPDF

from actors.events import CommandEvent, Incoming, Media, Sender
from config import load_config
from config.models import Config, CreditPack
from features.app import open_runtime
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

ANNA, BORIS = Sender(501, "Anna"), Sender(502, "Boris")
GROUP_A, GROUP_B = -100501, -100502
FACT = "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it."


def shipped() -> Config:
    return load_config(None, env={})


def pdf_bytes(pages: int = 20, fact_page: int = 7, fact: str = FACT) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for p in range(1, pages + 1):
        pdf.add_page()
        text = fact if p == fact_page else f"Page {p}: notes about printers, the coffee rota and desk number {p * 13}."
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def docx_bytes() -> bytes:
    import docx

    d = docx.Document()
    d.add_heading("Inventory", level=1)
    d.add_paragraph("Hardware kept in the Berlin office.")
    table = d.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Item", "Serial"), ("Laptop Frobnitz 9000", "SN-77312"), ("Router Quux", "SN-10203")]):
        table.cell(r, 0).text, table.cell(r, 1).text = a, b
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


class Downloads:
    """Download handles that count their calls (the transport's lazy handle stand-in)."""

    def __init__(self) -> None:
        self.calls = 0

    def of(self, data: bytes):
        async def download() -> bytes:
            self.calls += 1
            return data

        return download


class Chat:
    def __init__(self, rt, holder):
        self.rt, self.holder, self.turns, self.n = rt, holder, [], 1000
        rt.services.on_turn = self.turns.append

    @property
    def sent(self):
        return self.holder["outbox"].sent

    async def send(self, chat_id, who, text="", *, media=None, date=None, **kw):
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        ev = Incoming(chat_id, ctype, self.n, who, text, date or datetime.now(UTC), media=media, **kw)
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)
        return self.n

    async def cmd(self, chat_id, who, command, args=""):
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        await self.rt.supervisor.tell(chat_id, CommandEvent(chat_id, ctype, self.n, who, command, args, datetime.now(UTC)))
        await self.rt.supervisor.wait_idle(chat_id)
        return self.sent[-1]

    def replies_to(self, message_id):
        return [m for m in self.sent if m.reply_to == message_id]


def open_chat(tmp_path, st_model, holder, config: Config | None = None):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    return open_runtime(config or shipped(), tmp_path, make, model=st_model)


async def premium(rt, *user_ids: int) -> None:
    for uid in user_ids:
        await rt.services.admission.subs.grant("user", uid, "premium", None, "test")


def pdf_media(data: bytes, dl: Downloads, name: str = "report.pdf") -> Media:
    return Media("document", "application/pdf", len(data), name, download=dl.of(data))


async def test_a_pdf_fact_is_answered_with_its_page_recalled_later_listed_and_forgotten(tmp_path, st_model):
    holder, dl = {}, Downloads()
    data = pdf_bytes()
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "what replaced the backup server?", media=pdf_media(data, dl))
        assert dl.calls == 1
        answer = chat.replies_to(mid)[-1].text
        assert "Dell R740" in answer and "report.pdf, p. 7" in answer
        stored = (await rt.memory.store.messages.get(ANNA.user_id, [mid]))[0]
        assert stored.text.startswith("[file report.pdf] what replaced the backup server?")

        # a day later, in the same chat: recalled from memory, with its page
        later = await chat.send(ANNA.user_id, ANNA, "which ticket tracks the rack 12 server?",
                                date=datetime.now(UTC) + timedelta(days=1))
        turn = chat.turns[-1]
        assert turn.message_id == later
        assert any(h.source == "report.pdf" and h.page == 7 and "4711" in h.text for h in turn.hits)
        assert "report.pdf, p. 7" in chat.replies_to(later)[-1].text

        listing = (await chat.cmd(ANNA.user_id, ANNA, "memory")).text
        assert "report.pdf" in listing and "20 pages" in listing

        # /forget removes the file message and every chunk of the document
        await chat.cmd(ANNA.user_id, ANNA, "forget")
        await rt.memory.flush()
        assert await rt.memory.store.documents.list(ANNA.user_id) == []
        assert await rt.memory.vectors.count(ANNA.user_id) == 0
        recall = await rt.memory.recall(ANNA.user_id, "backup server rack 12 Dell", 10)
        assert recall.hits == []


async def test_a_document_sent_in_one_group_is_never_recalled_in_another(tmp_path, st_model):
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id, BORIS.user_id)
        chat = Chat(rt, holder)
        await chat.send(GROUP_A, ANNA, "", media=pdf_media(pdf_bytes(), dl))
        await chat.send(GROUP_B, BORIS, "hello there, anyone around?")
        q = await chat.send(GROUP_B, BORIS, "what replaced the backup server in rack 12?", respond=True)
        assert all(h.chat_id == GROUP_B for h in chat.turns[-1].hits)
        assert "Dell" not in chat.replies_to(q)[-1].text
        for mode in ("hybrid", "vector", "fts"):
            hits = (await rt.memory.recall(GROUP_B, "backup server Dell R740 ticket 4711", 10, mode=mode)).hits
            assert all(h.chat_id == GROUP_B and h.source is None for h in hits)


async def test_a_docx_table_is_searchable_with_its_section(tmp_path, st_model):
    holder, dl = {}, Downloads()
    data = docx_bytes()
    media = Media("document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", len(data),
                  "inventory.docx", download=dl.of(data))
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "", media=media)
        assert "inventory.docx" in chat.replies_to(mid)[-1].text  # "I read inventory.docx into memory"
        await rt.memory.flush()
        hits = (await rt.memory.recall(ANNA.user_id, "serial number of the Frobnitz laptop", 5)).hits
        assert hits and hits[0].source == "inventory.docx" and "SN-77312" in hits[0].text


async def test_an_oversized_file_is_refused_without_a_download(tmp_path, st_model):
    holder, dl = {}, Downloads()
    big = Media("document", "application/pdf", 25 * 1024 * 1024, "huge.pdf", download=dl.of(b"%PDF-1.4"))
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "", media=big)
        assert dl.calls == 0
        refusal = chat.replies_to(mid)[-1].text
        assert "25.0 MB" in refusal and "20 MB" in refusal
        assert (await rt.memory.store.messages.get(ANNA.user_id, [mid]))[0].text == "[file huge.pdf]"


async def test_a_corrupt_pdf_gets_a_clear_message_and_the_chat_goes_on(tmp_path, st_model):
    holder, dl = {}, Downloads()
    junk = b"%PDF-1.7\n" + bytes(range(256)) * 40
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "", media=pdf_media(junk, dl, "broken.pdf"))
        assert "broken.pdf" in chat.replies_to(mid)[-1].text and "damaged" in chat.replies_to(mid)[-1].text
        assert await rt.memory.store.documents.list(ANNA.user_id) == []
        nxt = await chat.send(ANNA.user_id, ANNA, "are you still there?")
        assert chat.replies_to(nxt), "the chat goes on after a bad file"


async def test_the_free_tier_is_refused_documents_and_vision_with_a_billing_button(tmp_path, st_model):
    holder, dl = {}, Downloads()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    async with open_chat(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder)
        doc = await chat.send(ANNA.user_id, ANNA, "", media=pdf_media(pdf_bytes(3, 1), dl))
        photo = await chat.send(ANNA.user_id, ANNA, "what is this?", media=Media("photo", "image/jpeg", len(png), download=dl.of(png)))
        assert dl.calls == 0
        for mid, what in ((doc, "Reading documents"), (photo, "Seeing images")):
            refusal = chat.replies_to(mid)[0]
            assert refusal.text.startswith(f"{what} isn't part of the free tier") and "premium" in refusal.text
            assert [b.data for row in refusal.buttons for b in row] == ["billing:show"]
        stored = await rt.memory.store.messages.get(ANNA.user_id, [doc, photo])
        assert [m.text for m in stored] == ["[file report.pdf]", "[photo] what is this?"]


async def test_unsupported_files_stickers_and_markers_in_history(tmp_path, st_model):
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        zip_id = await chat.send(ANNA.user_id, ANNA, "", media=Media("document", "application/zip", 1000, "logs.zip",
                                                                    download=dl.of(b"PK")))
        sticker = await chat.send(ANNA.user_id, ANNA, "", media=Media("sticker", "image/webp", 100, emoji="😀"))
        assert dl.calls == 0
        assert "logs.zip" in chat.replies_to(zip_id)[0].text and "PDF" in chat.replies_to(zip_id)[0].text
        assert chat.replies_to(sticker) == []
        history = (await chat.cmd(ANNA.user_id, ANNA, "history")).text
        assert "[file logs.zip]" in history and "[sticker 😀]" in history


async def test_a_photo_without_a_vision_model_is_said_plainly(tmp_path, st_model):
    holder, dl = {}, Downloads()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "my new desk setup", media=Media("photo", "image/png", len(png), download=dl.of(png)))
        assert dl.calls == 1
        notes = [m.text for m in chat.replies_to(mid)]
        assert any("can't see images" in t for t in notes)
        assert (await rt.memory.store.messages.get(ANNA.user_id, [mid]))[0].text.startswith("[photo] my new desk setup")


# ---------------------------------------------------------------------- voice, images and vision over real HTTP

from config.models import ImageModelSpec, ModelSpec, Settings, TranscriptionSettings  # noqa: E402
from tests.llm_server import TEST_PNG  # noqa: E402
from tests.llm_server import llm_server as llm_server  # noqa: E402  (the fixture ``llm`` uses)


@pytest.fixture
def llm(llm_server, monkeypatch):
    """The local OpenAI-compatible server; litellm's OpenAI client wants some key, the server takes any."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return llm_server


def served(server, *, default: str = "recall", image_model: str = "dall-e-3") -> Config:
    """The shipped tiers, with models, speech to text and image generation on the local test server."""
    base = server.base_url
    settings = Settings(
        models={"recall": ModelSpec(model="kith/recall"), "eye": ModelSpec(model="openai/gpt-4o", api_base=base)},
        default_model=default,
        transcription=TranscriptionSettings(model="openai/whisper-1", api_base=base),
        image_models={"painter": ImageModelSpec(model=f"openai/{image_model}", api_base=base)},
    )
    return Config(settings=settings, tiers=shipped().tiers)


async def usage_of(rt, kind: str):
    await rt.memory.flush()
    return [u for u in await rt.memory.store.usage.rows() if u.kind == kind]


async def test_a_voice_note_is_transcribed_answered_counted_and_recalled_a_day_later(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    speech = b"SPEECH: the printer on floor three needs a new toner cartridge\nDURATION:42\n"
    voice = Media("voice", "audio/ogg", len(speech), None, 42.0, download=dl.of(speech))
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(GROUP_A, ANNA, "", media=voice, respond=True)
        stored = (await rt.memory.store.messages.get(GROUP_A, [mid]))[0]
        assert stored.text == "[voice 0:42] the printer on floor three needs a new toner cartridge"
        assert chat.replies_to(mid), "a transcript is answered like text"
        [rec] = await usage_of(rt, "transcription")
        assert rec.seconds == 42.0 and rec.cost_usd == pytest.approx(42 * 0.0001)
        await chat.cmd(GROUP_A, ANNA, "reset")  # the context starts afresh: what follows comes from memory
        later = await chat.send(GROUP_A, BORIS, "which printer needs toner?", respond=True,
                                date=datetime.now(UTC) + timedelta(days=1))
        assert any(h.message_id == mid for h in chat.turns[-1].hits)
        assert chat.replies_to(later) and "floor three" in chat.replies_to(later)[-1].text
    uploads = [r for r in llm.requests if r.path.endswith("/audio/transcriptions")]
    assert len(uploads) == 1 and uploads[0].body["file"]["size"] == len(speech)


async def test_the_free_tier_gets_no_transcription_and_nothing_is_downloaded(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    voice = Media("voice", "audio/ogg", 100, None, 5.0, download=dl.of(b"SPEECH: hello"))
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "", media=voice)
        assert dl.calls == 0 and "Transcribing voice" in chat.replies_to(mid)[0].text
        assert await usage_of(rt, "transcription") == []


async def test_image_command_and_a_russian_draw_request_send_photos_and_record_usage(tmp_path, st_model, llm):
    holder = {}
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        await chat.cmd(ANNA.user_id, ANNA, "image", "a cat on a bike, watercolour")
        ru = await chat.send(ANNA.user_id, ANNA, "нарисуй кота на велосипеде")
        photos = [m for m in chat.sent if m.photo is not None]
        assert [m.photo for m in photos] == [TEST_PNG, TEST_PNG]
        assert photos[0].text == "[photo] 🎨 a cat on a bike, watercolour"
        assert photos[1].text == "[photo] 🎨 кота на велосипеде" and photos[1].reply_to == ru
        recs = await usage_of(rt, "image")
        assert [(r.images, r.cost_usd) for r in recs] == [(1, 0.04), (1, 0.04)]
    prompts = [r.body["prompt"] for r in llm.requests if r.path.endswith("/images/generations")]
    assert prompts == ["a cat on a bike, watercolour", "кота на велосипеде"]


async def test_a_content_policy_refusal_is_shown_politely_and_costs_nothing(tmp_path, st_model, llm):
    holder = {}
    async with open_chat(tmp_path, st_model, holder, served(llm, image_model="policy-model")) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        reply = await chat.cmd(ANNA.user_id, ANNA, "image", "something not allowed")
        assert "content policy" in reply.text and reply.photo is None
        assert await usage_of(rt, "image") == []


async def test_the_free_tier_is_refused_images(tmp_path, st_model, llm):
    holder = {}
    async with open_chat(tmp_path, st_model, holder, served(llm)) as rt:
        chat = Chat(rt, holder)
        reply = await chat.cmd(ANNA.user_id, ANNA, "image", "a cat")
        assert reply.text.startswith("Drawing images isn't part of the free tier") and reply.buttons
    assert not [r for r in llm.requests if r.path.endswith("/images/generations")]


async def test_a_vision_model_sees_the_photo_and_its_description_is_remembered(tmp_path, st_model, llm):
    holder, dl = {}, Downloads()
    photo = Media("photo", "image/jpeg", len(TEST_PNG), download=dl.of(TEST_PNG))
    async with open_chat(tmp_path, st_model, holder, served(llm, default="eye")) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "what is on my screen?", media=photo)
        answer = chat.replies_to(mid)[-1].text
        assert f"[image image/png {len(TEST_PNG)} bytes]" in answer  # the photo reached the model with the caption
        stored = (await rt.memory.store.messages.get(ANNA.user_id, [mid]))[0].text
        assert stored.startswith("[photo] what is on my screen?\n(image: ")
        [rec] = await usage_of(rt, "vision")
        assert rec.model == "eye" and rec.prompt_tokens > 0


async def test_capacity_cleanup_removes_a_documents_parts_with_its_message(tmp_path, st_model):
    from config.models import AutoCleanup, StorageLimits
    from memory.cleanup import cleanup_scope

    holder, dl = {}, Downloads()
    old = datetime.now(UTC) - timedelta(days=90)
    async with open_chat(tmp_path, st_model, holder) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        doc = await chat.send(GROUP_A, ANNA, "", media=pdf_media(pdf_bytes(5, 2), dl), date=old)
        for i in range(4):
            await chat.send(GROUP_A, BORIS, f"later message number {i} about the weekend", date=datetime.now(UTC))
        await rt.memory.flush()
        assert await rt.memory.vectors.count(GROUP_A) == 1 + 5 + 4  # the file message, 5 parts, 4 messages
        res = await cleanup_scope(rt.memory, "chat", GROUP_A, StorageLimits(dialogue_limit=4),
                                  AutoCleanup(keep_percentage=100, min_age_days=30), datetime.now(UTC))
        assert res.messages == 1
        assert await rt.memory.store.messages.get(GROUP_A, [doc]) == []
        assert await rt.memory.store.documents.list(GROUP_A) == []
        assert await rt.memory.vectors.count(GROUP_A) == 4


async def test_a_refused_feature_is_said_once_not_for_every_photo(tmp_path, st_model):
    holder, dl = {}, Downloads()
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    async with open_chat(tmp_path, st_model, holder) as rt:
        chat = Chat(rt, holder)
        ids = [await chat.send(ANNA.user_id, ANNA, "", media=Media("photo", "image/png", len(png), download=dl.of(png)))
               for _ in range(3)]
        assert [len(chat.replies_to(i)) for i in ids] == [1, 0, 0]
        assert len(await rt.memory.store.messages.get(ANNA.user_id, ids)) == 3  # every photo is still remembered


async def test_a_telegram_export_keeps_media_markers_and_reads_its_documents_once(tmp_path, st_model):
    import json

    from memory.importer import import_transcript

    export = tmp_path / "export"
    (export / "files").mkdir(parents=True)
    (export / "files" / "runbook.pdf").write_bytes(pdf_bytes(3, 2, "Restart the ingest workers with systemctl restart kith-ingest."))
    chat = {"name": "Ops", "type": "private_supergroup", "id": 777, "messages": [
        {"id": 1, "type": "message", "date_unixtime": "1700000000", "from": "Anna", "from_id": "user501",
         "file": "files/runbook.pdf", "mime_type": "application/pdf", "text": "the runbook"},
        {"id": 2, "type": "message", "date_unixtime": "1700000060", "from": "Boris", "from_id": "user502",
         "file": "voice_messages/audio_1.ogg", "media_type": "voice_message", "duration_seconds": 7, "text": ""},
        {"id": 3, "type": "message", "date_unixtime": "1700000120", "from": "Anna", "from_id": "user501",
         "file": "(File not included. Change data exporting settings to download.)", "file_name": "big.iso",
         "mime_type": "application/octet-stream", "text": ""},
    ]}
    (export / "result.json").write_text(json.dumps(chat), encoding="utf-8")
    holder = {}
    async with open_chat(tmp_path / "data", st_model, holder) as rt:
        first = await import_transcript(rt.memory, export / "result.json", with_files=True)
        again = await import_transcript(rt.memory, export / "result.json", with_files=True)
        cid = -100777
        texts = [m.text for m in await rt.memory.store.messages.get(cid, [1, 2, 3])]
        hits = (await rt.memory.recall(cid, "how do I restart the ingest workers?", 3)).hits
        docs = await rt.memory.store.documents.list(cid)
    assert texts == ["[file runbook.pdf] the runbook", "[voice 0:07]", "[file big.iso]"]
    assert (first.documents, again.documents) == (1, 0) and first.document_errors == []
    assert [(d.file_name, d.message_id, d.user_name) for d in docs] == [("runbook.pdf", 1, "Anna")]
    assert hits[0].source == "runbook.pdf" and hits[0].page == 2


async def test_custom_persona_is_a_tier_feature_for_role_and_group_persona(tmp_path, st_model):
    from config.models import Features, Plan, Tier, TiersConfig

    tiers = TiersConfig(tiers={"basic": Tier(features=Features(custom_persona=False)),
                               "plus": Tier(features=Features(custom_persona=True))},
                        default_tier="basic", plans={"m": Plan(tier="plus", days=30, price=100)})
    holder = {}
    async with open_chat(tmp_path, st_model, holder, Config(settings=shipped().settings, tiers=tiers)) as rt:
        chat = Chat(rt, holder)
        refusal = await chat.cmd(ANNA.user_id, ANNA, "role", "talk like a pirate")
        assert refusal.text.startswith("A custom persona isn't part of the basic tier") and refusal.buttons
        assert "role" not in await rt.memory.store.settings.user(ANNA.user_id)
        group = await chat.cmd(GROUP_A, ANNA, "settings", "persona a grumpy sysadmin")
        assert "custom persona" in group.text.lower()
        assert "persona" not in await rt.memory.store.settings.chat(GROUP_A)
        await rt.services.admission.subs.grant("user", ANNA.user_id, "plus", None, "test")
        assert (await chat.cmd(ANNA.user_id, ANNA, "role", "talk like a pirate")).text == "Persona saved."
        assert (await rt.memory.store.settings.user(ANNA.user_id))["role"] == "talk like a pirate"


async def test_past_their_quotas_images_voice_and_pages_are_paid_with_credits(tmp_path, st_model, llm):
    """A premium tier that pays with credits once a quota is spent: the image, the minutes of audio
    and the document pages past today's quota are debited once each at the tier's prices; without a
    balance the member is refused with the /buy button and nothing is generated."""
    from config.models import Prices, Quotas
    from memory.ledger import LedgerEntry

    base = served(llm)
    premium_tier = base.tiers.tiers["premium"].model_copy(update={
        "when_spent": "credits", "quotas": Quotas(images_per_day=0, audio_seconds_per_day=0, pages_per_day=0)})
    tiers = base.tiers.model_copy(update={"tiers": {**base.tiers.tiers, "premium": premium_tier},
                                          "prices": Prices(per_message={"*": 1}, per_image=7, per_audio_minute=2, per_page=3),
                                          "credit_packs": {"small": CreditPack(credits=100, price=50)}})
    holder, dl = {}, Downloads()
    async with open_chat(tmp_path, st_model, holder, Config(settings=base.settings, tiers=tiers)) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        ledger = rt.services.admission.ledger
        refused = await chat.cmd(ANNA.user_id, ANNA, "image", "a cat")
        assert "costs 7 credits and your balance is 0" in refused.text and refused.buttons, refused.text
        assert not [r for r in llm.requests if r.path.endswith("/images/generations")]
        await ledger.append(LedgerEntry("grant:t", "user", ANNA.user_id, "grant", 100))
        drawn = await chat.cmd(ANNA.user_id, ANNA, "image", "a cat")
        assert drawn.photo is not None and await ledger.balance("user", ANNA.user_id) == 93
        speech = b"SPEECH: remind me about the dentist\nDURATION:61\n"
        await chat.send(ANNA.user_id, ANNA, "", media=Media("voice", "audio/ogg", len(speech), None, 61.0, download=dl.of(speech)))
        assert await ledger.balance("user", ANNA.user_id) == 89  # two started minutes
        await chat.send(ANNA.user_id, ANNA, "", media=pdf_media(pdf_bytes(pages=4), dl))
        assert await ledger.balance("user", ANNA.user_id) == 77  # 4 pages
        notes = sorted(e.note for e in await ledger.history("user", ANNA.user_id) if e.kind == "debit")
        assert notes == ["audio", "image", "pages"]


async def test_over_the_hosts_spending_cap_a_photo_is_not_described_by_a_paid_model(tmp_path, st_model, llm):
    from config.models import BudgetSettings

    base = served(llm, default="eye")
    config = Config(settings=base.settings.model_copy(update={"budget": BudgetSettings(daily_usd=0)}), tiers=base.tiers)
    holder, dl = {}, Downloads()
    photo = Media("photo", "image/jpeg", len(TEST_PNG), download=dl.of(TEST_PNG))
    async with open_chat(tmp_path, st_model, holder, config) as rt:
        await premium(rt, ANNA.user_id)
        chat = Chat(rt, holder)
        mid = await chat.send(ANNA.user_id, ANNA, "what is on my screen?", media=photo)
        assert chat.replies_to(mid)
        assert await usage_of(rt, "vision") == []
    assert not [r for r in llm.requests if r.model == "gpt-4o"]  # neither described nor answered by the paid model
