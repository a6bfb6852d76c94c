"""Media in a chat: photos, documents, voice/audio/video notes and stickers in; generated images out.

The chat ctx calls ``understand`` for a message that carries a file, *before* storing it. The
decision comes first (kind, the member's tier features, the file's size against the tier's
``max_file_mb``, the audio quota); only then is the file downloaded, through the event's lazy handle.
What comes out is the text stored for the message — a marker plus the caption plus what was
extracted — so ``/history``, ``/export`` and recall see every media message:

=============  =====================================  ======================================================
kind           stored text                            understood as
=============  =====================================  ======================================================
photo          ``[photo] caption``                    vision model: its short description (``(image: …)``);
                                                      else Tesseract OCR when installed (``(text in image: …)``)
document       ``[file report.pdf] caption``          PDF/DOCX/text read into memory as chunks with their
                                                      file and page (``Memory.remember_document``)
voice, audio,  ``[voice 0:42] transcript``            transcribed (``providers.transcription``)
video_note
sticker        ``[sticker 😀]``                        remembered only
video, GIF     ``[video 0:12] caption``               not understood: said in one line when addressed
=============  =====================================  ======================================================

Every media message that addresses the bot (always, in a private chat) gets feedback: a document
what was read (``report.pdf: 10 pages, 16 parts kept in this chat's memory``), a recording its
transcript (``🎤 “…”``, as Telegram's own transcription shows it) and then an answer when it asks
something (``asks_something``), a photo what was read in it (OCR) when no model can see it. A
refusal (a tier without the feature, a file over the size limit, an unsupported kind, the audio
quota) or a bad file is that one message alone, said politely — never followed by an answer to the
caption; a refused feature comes with a ``/billing`` button. Nothing is downloaded for a refusal.

Image generation: ``/image PROMPT`` and plain requests matching ``media.image_patterns`` (``draw a cat
on a bike``, ``нарисуй кота на велосипеде``) go to the tier's image model; the image is sent as a photo
with its prompt and its cost recorded (``usage.kind = 'image'``). ``/image 3 PROMPT`` asks for several
(up to the tier's ``images_per_request``). In reply to a photo, ``/image edit PROMPT`` (or a reply
matching ``media.image_edit_patterns``: ``edit this: …``, «измени …») edits it — the command's own
image, if any, is the mask — and ``/image variations [N]`` makes variations of it. Every image counts
against ``images_per_day`` and is paid like a drawn one past it.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from actors.errors import ActorError, MediaUnavailable
from actors.events import CommandEvent, Incoming, Media, with_caption
from actors.handlers import ChatContext, Understood
from actors.settings import UserSettings
from actors.support import with_support
from i18n import _, ngettext, number
from memory.documents import document_summary, ingest_document
from memory.ledger import debit_key
from memory.markers import clock_time, marker
from memory.types import DocumentInfo, UsageRecord
from providers import ocr
from providers.documents import document_kind
from providers.errors import ContentRefused, DocumentError, ProviderError
from tiers.admission import Admit
from tiers.quotas import MAX_IMAGES, images_per_request

from .credits import upgrade_buttons

if TYPE_CHECKING:
    from providers.images import GeneratedImage

__all__ = ["DESCRIPTION_TOKENS", "EXTRACT_CHARS", "FEATURE_OF", "MAX_IMAGES", "SHOWN_CHARS", "VOICE_KINDS", "ImageReply", "asks_something",
           "cmd_image", "draw", "generate_image", "image_prompt", "image_usage", "make_images", "split_count",
           "summary_for_member", "understand"]

log = logging.getLogger(__name__)

DESCRIPTION_TOKENS = 200  # a photo's description for memory: 1–3 sentences
EXTRACT_CHARS = 1500  # at most this much OCR text is stored with a photo
SHOWN_CHARS = 300  # … and this much of it shown to the member

# A transcript is answered when it asks something: a question mark, or a first word that asks or
# requests (English and Russian; another language's transcript is answered when it has a "?").
_ASKING = frozenset(["what", "who", "whom", "whose", "where", "when", "why", "how", "which", "can", "could", "would", "should", "is", "are", "am", "was", "were", "do", "does", "did", "will", "shall", "may", "might", "tell", "show", "explain", "find", "remind", "help", "give", "list", "describe", "summarize", "summarise", "translate", "write", "draw", "please", "что", "кто", "кого", "кому", "чей", "где", "куда", "откуда", "когда", "почему", "зачем", "как", "какой", "какая", "какое", "какие", "сколько", "можно", "ли", "расскажи", "покажи", "объясни", "найди", "напомни", "помоги", "дай", "перечисли", "опиши", "переведи", "напиши", "нарисуй", "подскажи", "скажи", "пожалуйста"])


# ---------------------------------------------------------------------- understanding


FEATURE_OF = {"photo": "vision", "document": "documents", "voice": "voice", "audio": "voice", "video_note": "voice"}
VOICE_KINDS = ("voice", "audio", "video_note")


async def understand(ctx: ChatContext, ev: Incoming, user_settings: UserSettings) -> Understood:
    """Decide, download (only if allowed) and extract. Never raises for a bad file: the result
    carries a note instead, and the marker + caption are always stored."""
    media = ev.media
    assert media is not None
    base = with_caption(media, ev.text)
    caption = bool(ev.text.strip())
    if media.kind == "sticker":
        return Understood(base)
    if media.kind in ("video", "animation"):
        return Understood(base, answerable=caption, note=None if caption else _("I can't watch videos or GIFs yet; I keep their captions."))
    if media.kind == "document" and document_kind(media.file_name, media.mime_type) is None:
        name = media.file_name or _("this file")
        return Understood(base, note=_("I can't read {name}: send a PDF, a DOCX or a text file (TXT, MD, CSV, JSON, logs, code).",
                                       name=name))
    feature = FEATURE_OF.get(media.kind)
    if feature is None:
        return Understood(base, answerable=caption)
    voice = media.kind in VOICE_KINDS
    if voice:
        settings = ctx.svc.config.settings.transcription
        if getattr(ctx.svc, "transcriber", None) is None:
            return Understood(base, note=_("I can't listen to recordings on this bot: no speech-to-text model is set up."))
        if media.duration_s is not None and media.duration_s > settings.max_seconds:
            return Understood(base, note=_(
                "That recording is {length} long; I transcribe at most {limit}.",
                length=clock_time(media.duration_s), limit=clock_time(settings.max_seconds)))
    adm = ctx.svc.admission
    paid: Admit | None = None  # a quota is spent and credits pay for this (debited once it is done)
    if adm is not None:
        verdict = await adm.admit_feature(ctx.chat_id, ev.sender.user_id, feature, size_bytes=media.size,
                                          seconds=(media.duration_s or 1.0) if voice else 0.0,
                                          pages=1 if media.kind == "document" else 0)
        if not verdict.allowed:
            return Understood(base, note=with_support(ctx.svc, verdict.refusal or ""),
                              billing=verdict.reason in ("feature", "quota", "credits"))
        paid = verdict if verdict.paid_by is not None else None
    try:
        data = await _download(media)
    except ActorError as exc:
        log.warning("chat %s: media of message %s not downloaded: %s", ctx.chat_id, ev.message_id, exc)
        return Understood(base, note=with_support(ctx.svc, _("I couldn't download that file; please send it again.")))
    if adm is not None and media.size is None:  # the size was unknown before the download
        verdict = await adm.admit_feature(ctx.chat_id, ev.sender.user_id, feature, size_bytes=len(data))
        if not verdict.allowed:
            return Understood(base, note=with_support(ctx.svc, verdict.refusal or ""))
    if media.kind == "document":
        return await _read_document(ctx, ev, media, data, base, paid)
    if media.kind == "photo":
        return await _see_photo(ctx, ev, media, data, base, user_settings)
    return await _transcribe(ctx, ev, media, data, paid)


async def _charge(ctx: ChatContext, paid: Admit | None, what: str, *, chat_id: int, message_id: int, user_id: int,
                  units: int = 1) -> None:
    """Debit ``paid`` (admitted past a spent quota, paid with credits) for message ``message_id``'s
    ``what`` (``image``, ``audio``, ``pages``), once; nothing when it is not paid."""
    if paid is None or paid.paid_by is None or ctx.svc.admission is None:
        return
    await ctx.svc.admission.charge_extra(paid, f"{debit_key(chat_id, message_id)}:{what}", user_id=user_id,
                                         chat_id=chat_id, message_id=message_id, units=units, note=what)


async def _download(media: Media) -> bytes:
    if media.download is None:
        raise MediaUnavailable("no download handle")
    data = await media.download()
    if not isinstance(data, (bytes, bytearray)):
        raise MediaUnavailable(f"download returned {type(data).__name__}")
    return bytes(data)


def _usage(ctx: ChatContext, ev: Incoming, kind: str, model: str, *, prompt_tokens: int = 0, completion_tokens: int = 0,
           cost_usd: float | None = 0.0, latency_ms: float = 0.0, seconds: float = 0.0, images: int = 0, pages: int = 0) -> None:
    ctx.svc.record_usage(UsageRecord(ctx.svc.clock(), ctx.chat_id, ev.sender.user_id, kind, model, prompt_tokens,
                                       completion_tokens, cost_usd, latency_ms, seconds=seconds, images=images, pages=pages))


# ---------------------------------------------------------------------- documents


async def _read_document(ctx: ChatContext, ev: Incoming, media: Media, data: bytes, base: str,
                         paid: Admit | None = None) -> Understood:
    name = media.file_name or "document"
    m = ctx.svc.config.settings.media
    t0 = time.perf_counter()
    try:
        info = await ingest_document(ctx.svc.memory, chat_id=ctx.chat_id, message_id=ev.message_id,
                                     user_id=ev.sender.user_id, user_name=ev.sender.name, date=ev.date, file_name=name,
                                     mime_type=media.mime_type, data=data, max_chars=m.chunk_chars,
                                     max_pages=m.max_document_pages)
    except DocumentError as exc:
        log.info("chat %s: document %s not read: %s", ctx.chat_id, name, exc)
        return Understood(base, note=exc.user_message)
    _usage(ctx, ev, "document", "documents", latency_ms=(time.perf_counter() - t0) * 1000, pages=info.pages or 1)
    await _charge(ctx, paid, "pages", chat_id=ctx.chat_id, message_id=ev.message_id, user_id=ev.sender.user_id,
                  units=info.pages or 1)
    ctx.note_new_memories()
    note = _("📄 {name}: {summary} kept in this chat's memory.", name=name, summary=summary_for_member(info))
    if not ev.text.strip():
        note += " " + _("Ask me about it.")
    return Understood(f"{base} ({document_summary(info)} in memory)", answerable=bool(ev.text.strip()), note=note, indexed=True)


def summary_for_member(info: DocumentInfo) -> str:
    """``document_summary`` for the member, in their language: ``12 pages, 34 parts`` / ``5 parts``
    (the stored text keeps ``document_summary``'s English: it is data)."""
    parts = ngettext("{n} part", "{n} parts", info.chunks, n=number(info.chunks))
    if not info.pages:
        return parts
    return ngettext("{n} page", "{n} pages", info.pages, n=number(info.pages)) + ", " + parts


# ---------------------------------------------------------------------- photos


def _image_mime(media: Media, data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return media.mime_type or "image/jpeg"


async def _see_photo(ctx: ChatContext, ev: Incoming, media: Media, data: bytes, base: str, user_settings: UserSettings) -> Understood:
    from providers import vision  # deferred: imports litellm (~2 s), only for an image with a vision model

    mime = _image_mime(media, data)
    settings = ctx.svc.config.settings
    alias = ctx.model_for(user_settings)
    spec = settings.models.get(alias)
    budget = ctx.svc.admission.budget if ctx.svc.admission is not None else None
    over_cap = budget is not None and budget.holds_back(alias)  # a free model answers instead
    if spec is not None and vision.supports_vision(spec) and not over_cap:
        text = base
        if settings.media.describe_images:
            try:
                c = await ctx.svc.llm.complete(alias, vision.describe_request(data, mime, ev.text or None),
                                                 max_tokens=DESCRIPTION_TOKENS)
            except ProviderError as exc:
                log.warning("chat %s: describing photo %s failed: %s", ctx.chat_id, ev.message_id, exc)
            else:
                _usage(ctx, ev, "vision", c.model, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
                       cost_usd=c.cost_usd, latency_ms=c.latency_ms)
                if c.text.strip():
                    text = f"{base}\n(image: {' '.join(c.text.split())})"
        return Understood(text, answerable=True, image=(data, mime))
    seen = ""
    if settings.media.ocr and await anyio.to_thread.run_sync(ocr.available):
        try:
            seen = await anyio.to_thread.run_sync(ocr.image_text, data, settings.media.ocr_languages)
        except ProviderError as exc:
            log.info("chat %s: OCR of photo %s failed: %s", ctx.chat_id, ev.message_id, exc)
    if seen:
        short = seen if len(seen) <= EXTRACT_CHARS else seen[: EXTRACT_CHARS - 1] + "…"
        shown = " ".join(seen.split())
        shown = shown if len(shown) <= SHOWN_CHARS else shown[: SHOWN_CHARS - 1].rstrip() + "…"
        return Understood(f"{base}\n(text in the image: {short})", answerable=bool(ev.text.strip()),
                          note=_("🖼 I can't see images with this model, but I read the text in the picture: “{text}”", text=shown))
    return Understood(base, answerable=bool(ev.text.strip()),
                      note=_("I can't see images with this model; I only read the caption."))


# ---------------------------------------------------------------------- voice, audio, video notes


async def _transcribe(ctx: ChatContext, ev: Incoming, media: Media, data: bytes, paid: Admit | None = None) -> Understood:
    transcriber = ctx.svc.transcriber
    assert transcriber is not None, "checked by understand()"
    name = media.file_name or {"voice": "voice.ogg", "video_note": "video_note.mp4"}.get(media.kind, "audio.mp3")
    try:
        t = await transcriber.transcribe(data, name, duration_s=media.duration_s)
    except ProviderError as exc:
        log.warning("chat %s: transcribing message %s failed: %s", ctx.chat_id, ev.message_id, exc)
        return Understood(with_caption(media, ev.text), note=with_support(ctx.svc, exc.user_message))
    seconds = t.seconds or media.duration_s or 0.0
    _usage(ctx, ev, "transcription", t.model, cost_usd=t.cost_usd, latency_ms=t.latency_ms, seconds=seconds)
    await _charge(ctx, paid, "audio", chat_id=ctx.chat_id, message_id=ev.message_id, user_id=ev.sender.user_id)
    said = " ".join(t.text.split())
    text = f"{marker(media.kind, file_name=media.file_name, duration_s=media.duration_s or seconds or None)} {said}" + (f"\n{ev.text.strip()}" if ev.text.strip() else "")
    note = _("🎤 “{text}”", text=said) if said else _("🎤 I heard no speech in that recording.")
    return Understood(text.strip(), answerable=asks_something(said) or bool(ev.text.strip()), note=note)


def asks_something(text: str) -> bool:
    """Whether a transcript asks or requests something (so it gets an answer, not only its transcript
    shown): it holds a question mark, or its first word asks or requests (``_ASKING``)."""
    if "?" in text or "？" in text:
        return True
    first = re.match(r"\W*(\w+)", text.lower())
    return first is not None and first.group(1) in _ASKING


# ---------------------------------------------------------------------- image generation


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE | re.DOTALL) for p in patterns)


def image_prompt(text: str, patterns: tuple[str, ...]) -> str | None:
    """The prompt of a plain-language image request (``draw a cat on a bike`` → ``a cat on a bike``),
    or None when ``text`` matches none of ``patterns`` (``media.image_patterns``)."""
    for rx in _compiled(patterns):
        m = rx.search(text)
        if m is not None:
            prompt = (m.groupdict().get("prompt") or text).strip()
            return prompt or None
    return None


_COUNT = re.compile(r"^\s*(?:n\s*=\s*)?(\d{1,3})(?:\s+|$)(?P<rest>.*)$", re.IGNORECASE | re.DOTALL)


def _is_image(media: Media | None) -> bool:
    """A photo, or a document that is an image (a PNG mask sent as a file)."""
    if media is None:
        return False
    return media.kind == "photo" or (media.kind == "document" and (media.mime_type or "").startswith("image/"))


def split_count(text: str) -> tuple[int | None, str]:
    """``3 a cat`` / ``n=3 a cat`` → ``(3, "a cat")``; ``a cat`` → ``(None, "a cat")``."""
    m = _COUNT.match(text)
    if m is None:
        return None, text.strip()
    return int(m.group(1)), m.group("rest").strip()


async def generate_image(ctx: ChatContext, *, chat_id: int, message_id: int, user_id: int, thread_id: int | None,
                         prompt: str, n: int = 1) -> bool:
    """Draw ``n`` images for ``prompt`` and send them as photos in reply to ``message_id``
    (``make_images``). Returns True when a photo was sent."""
    return await make_images(ctx, "draw", ImageReply(chat_id, message_id, user_id, thread_id), prompt=prompt, n=n)


class ImageReply(NamedTuple):
    """Where images go: in reply to ``message_id`` of ``user_id`` in ``chat_id`` (``thread_id``: its topic)."""

    chat_id: int
    message_id: int
    user_id: int
    thread_id: int | None


async def make_images(ctx: ChatContext, kind: str, to: ImageReply, *, prompt: str = "", n: int = 1, photo: Media | None = None,
                      mask: Media | None = None) -> bool:
    """Make ``n`` images — ``kind`` ``"draw"`` (``prompt``), ``"edit"`` (``photo`` changed as ``prompt``
    says, inside ``mask`` when given) or ``"variations"`` (of ``photo``) — and send them as photos in
    reply to ``message_id``. ``n`` is cut to the tier's ``images_per_request`` and then to what
    ``images_per_day`` (and credits) leave, each with a one-line note; the feature flag
    ``image_generation`` gates all three. Each image is recorded (``usage.kind = 'image'``, counted
    against ``images_per_day``) and those past the quota are debited at ``prices.per_image``. Nothing
    is downloaded or generated for a refusal. Returns True when a photo was sent."""
    gen = getattr(ctx.svc, "images", None)
    models = ctx.svc.config.settings.image_models
    if gen is None or not models:
        await _say(ctx, to, _("Drawing images is not set up on this bot (no image model in kith.yaml)."))
        return False
    budget = await _image_budget(ctx, to, n, models)
    if budget is None:
        return False
    sources = await _image_sources(ctx, to, kind, photo, mask)
    if sources is None:
        return False
    imgs = await _generate_images(ctx, to, gen, kind, budget, prompt, *sources)
    if imgs is None:
        return False
    await _deliver_images(ctx, to, kind, prompt, imgs[:budget.n], budget)
    return True


class _ImageBudget(NamedTuple):
    """What one image request may make: ``n`` images with model ``alias``, the first ``free`` of them
    within the quota, admitted by ``verdict`` (None without admission); ``notes`` say what was cut."""

    alias: str
    n: int
    free: int
    verdict: Admit | None
    notes: list[str]


async def _say(ctx: ChatContext, to: ImageReply, text: str, billing: bool = False) -> None:
    """``text`` in reply to ``to``; with ``billing``, under the upgrade buttons when any are sold."""
    rows = upgrade_buttons(ctx) if billing else None
    if rows:
        await ctx.outbox.send_buttons(to.chat_id, text, rows, reply_to=to.message_id, thread_id=to.thread_id)
    else:
        await ctx.outbox.send(to.chat_id, text, reply_to=to.message_id, thread_id=to.thread_id)


async def _image_budget(ctx: ChatContext, to: ImageReply, n: int, models: Mapping[str, Any]) -> _ImageBudget | None:
    """``n`` images cut to the tier's ``images_per_request`` and to what the day's quota (and credits)
    admit, and the tier's image model when it is one of ``models``; None (refusal said) when none is."""
    chat_id, user_id = to.chat_id, to.user_id
    svc = ctx.svc
    alias = next(iter(models))
    asked = max(1, min(n, MAX_IMAGES))
    count, free, verdict, notes = asked, asked, None, []
    adm = svc.admission
    if adm is not None:
        tiers = svc.config.tiers
        tier = await adm.tier_of(chat_id, user_id)
        limit = images_per_request(tiers.tiers[tier].quotas)
        if asked > limit:
            asked = limit
            note = ngettext("The {tier} tier makes {n} image per request.", "The {tier} tier makes up to {n} images per request.",
                            limit, tier=tier, n=number(limit))
            better = tiers.first_above(tier, lambda o: o.features.image_generation and images_per_request(o.quotas) > limit)
            if better:
                note += " " + _("Several images at once come with the {tier} tier.", tier=better)
            notes.append(note)
        allowed = await adm.admit_images(chat_id, user_id, asked)
        verdict = allowed.admit
        if allowed.count == 0:
            await _say(ctx, to, with_support(svc, verdict.refusal or _("Sorry, I can't draw right now.")),
                       billing=verdict.reason in ("feature", "quota", "credits"))
            return None
        count, free = allowed.count, allowed.free
        if count < asked:
            notes.append(ngettext("Today's images leave room for {n} of them.", "Today's images leave room for {n} of them.",
                                  count, n=number(count)))
        tier_model = tiers.tiers[verdict.tier].image_model
        if tier_model is not None and tier_model in models:
            alias = tier_model
    return _ImageBudget(alias, count, free, verdict, notes)


async def _image_sources(ctx: ChatContext, to: ImageReply, kind: str, photo: Media | None,
                         mask: Media | None) -> tuple[bytes | None, bytes | None] | None:
    """(the photo, the mask) downloaded for an edit or variations — (None, None) to draw — or None
    (said) when the photo is missing or does not download."""
    if kind == "draw":
        return None, None
    try:
        source = await _download(photo) if photo is not None else None
        mask_data = await _download(mask) if mask is not None else None
    except ActorError as exc:
        log.warning("chat %s: the photo to %s was not downloaded: %s", to.chat_id, kind, exc)
        await _say(ctx, to, _("I couldn't download that photo; please send it again."))
        return None
    if source is None:
        await _say(ctx, to, _("Reply to a photo to edit it or make variations of it."))
        return None
    return source, mask_data


async def _generate_images(ctx: ChatContext, to: ImageReply, gen: Any, kind: str, budget: _ImageBudget, prompt: str,
                           source: bytes | None, mask_data: bytes | None) -> list[GeneratedImage] | None:
    """The images from the provider, or None (said) when it refuses the content or fails."""
    alias, count = budget.alias, budget.n
    try:
        if kind == "edit":
            assert source is not None
            imgs: list[GeneratedImage] = await gen.edit(alias, source, prompt, mask=mask_data, n=count)
        elif kind == "variations":
            assert source is not None
            imgs = await gen.variations(alias, source, n=count)
        else:
            imgs = await gen.generate_many(alias, prompt, count)
    except ContentRefused as exc:
        await _say(ctx, to, exc.user_message)
        return None
    except ProviderError as exc:
        log.warning("chat %s: image %s failed: %s", to.chat_id, kind, exc)
        await _say(ctx, to, with_support(ctx.svc, exc.user_message))
        return None
    return imgs


async def _deliver_images(ctx: ChatContext, to: ImageReply, kind: str, prompt: str, imgs: list[GeneratedImage],
                          budget: _ImageBudget) -> None:
    """Record and charge ``imgs``, say the budget's notes, then send each image as a captioned photo."""
    chat_id, message_id, user_id, thread_id = to
    svc = ctx.svc
    for img in imgs:
        svc.record_usage(UsageRecord(svc.clock(), chat_id, user_id, "image", img.model, 0, 0, img.cost_usd, img.latency_ms, images=1))
    await _charge(ctx, budget.verdict, "image", chat_id=chat_id, message_id=message_id, user_id=user_id,
                  units=max(0, len(imgs) - budget.free))
    if budget.notes:
        await _say(ctx, to, " ".join(budget.notes))
    mark = {"draw": "🎨", "edit": "✏️", "variations": "🔁"}.get(kind, "🎨")
    for i, img in enumerate(imgs, 1):  # the Outbox has no album (media group): one photo each
        caption = f"{mark} {prompt}".strip() + (f" ({i}/{len(imgs)})" if len(imgs) > 1 else "")
        await ctx.outbox.send_photo(chat_id, img.data, caption=caption[:1000], reply_to=message_id, thread_id=thread_id)


async def draw(ctx: ChatContext, ev: Incoming) -> bool:
    """A plain-language drawing request ("draw a cat on a bike", «нарисуй кота»; ``media.image_patterns``)
    is drawn, and a reply to a photo asking to edit it ("edit this: make the sky blue", «измени …»;
    ``media.image_edit_patterns``) is edited (``make_images``): True when ``ev`` was one (the turn is
    then done)."""
    m = ctx.svc.config.settings.media
    to = ImageReply(ctx.chat_id, ev.message_id, ev.sender.user_id, ev.thread_id)
    if _is_image(ev.reply_media):
        change = image_prompt(ev.text, m.image_edit_patterns)
        if change:
            await make_images(ctx, "edit", to, prompt=change, photo=ev.reply_media)
            return True
    prompt = image_prompt(ev.text, m.image_patterns)
    if not prompt:
        return False
    await make_images(ctx, "draw", to, prompt=prompt)
    return True


def image_usage() -> str:
    """The help of ``/image``, in the member's language."""
    return _("Usage:\n"
             "/image a cat riding a bicycle, watercolour — draw it\n"
             "/image 3 a cat — several images at once (as many as your tier allows)\n"
             "/image edit make the sky blue — in reply to a photo: edit it (a second image sent with the command is the mask)\n"
             "/image variations 2 — in reply to a photo: variations of it")


async def cmd_image(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/image PROMPT`` (draw), ``/image N PROMPT`` / ``n=N`` (N images), ``/image edit [N] PROMPT`` and
    ``/image variations [N]`` in reply to a photo (``reply_media``; the command's own image is the
    edit's mask)."""
    args = ev.args.strip()
    to = ImageReply(ctx.chat_id, ev.message_id, ev.sender.user_id, ev.thread_id)
    word, _sep, rest = args.partition(" ")
    sub = word.lower()
    if sub in ("edit", "variations", "variation", "vary"):
        n, prompt = split_count(rest)
        photo = ev.reply_media if _is_image(ev.reply_media) else None
        if photo is None:
            await ctx.outbox.send(ctx.chat_id, _("Reply to a photo with /image edit WHAT TO CHANGE or /image variations."),
                                  reply_to=ev.message_id, thread_id=ev.thread_id)
            return
        if sub == "edit":
            if not prompt:
                await ctx.outbox.send(ctx.chat_id, _("Say what to change: /image edit make the sky blue"), reply_to=ev.message_id,
                                      thread_id=ev.thread_id)
                return
            await make_images(ctx, "edit", to, prompt=prompt, n=n or 1, photo=photo, mask=ev.media if _is_image(ev.media) else None)
        else:
            await make_images(ctx, "variations", to, n=n or 1, photo=photo)
        return
    n, prompt = split_count(args)
    if not prompt:
        await ctx.outbox.send(ctx.chat_id, image_usage(), reply_to=ev.message_id, thread_id=ev.thread_id)
        return
    await make_images(ctx, "draw", to, prompt=prompt, n=n or 1)
