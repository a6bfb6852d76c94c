"""TelegramOutbox: the Outbox protocol over a pyrogram (kurigram) client.

Every text is Markdown from the model: rendered to entities (``render``), split to Telegram's
4096 UTF-16 units, sent within the budgets of ``SendLimiter`` (FloodWait waited out and retried).
When Telegram rejects the entities (any 400 on a formatted message) the same text goes again
without them; when it rejects the reply target (deleted message) it goes without the reply.
Errors that remain (the user blocked the bot, the bot was removed, ...) raise ``DeliveryFailed``,
so the actor never sees a pyrogram exception.

Streaming: nothing is shown before the stream is one interval old, so a quick answer goes out as
one message (half the calls, which matters against 20 messages/min in a group); after that the reply
appears as one message that is edited as the text grows, at most one edit per interval (``stream_edit_interval_s``, at least 60 / ``per_group_per_min`` in groups,
longer for longer texts and after a FloodWait); progress edits are best-effort and never wait for
the budget. In private chats, with ``drafts=True``, progress is streamed with kurigram's
``send_message_draft`` (Bot API drafts: an animated, ephemeral preview) and the final text is sent
as a message; if Telegram refuses drafts, the outbox falls back to edits for good. A draft shows a
Stop button (``can_stop``, ``keep_on_stop``): the user pressing it reaches ``stop_draft`` (from the
update side, keyed by (chat id, draft id)), which sets the stream's ``stopped`` event; the turn then
ends the generation and finishes the stream with what was generated so far.

Ephemeral replies (``send_ephemeral``): in a group, a one-message text is sent with Telegram's
``ephemeral.sendMessage`` so only the asking member sees it. kurigram's ``send_message(...,
ephemeral_message_parameters=...)`` passes the receiver as an ``InputPeerUser`` where the schema
wants an ``InputUser``, so the raw function is invoked here. When Telegram refuses (any RPC error),
the text goes as a normal reply and that chat gets normal replies for the rest of the process.

Tables: a streamed answer whose final text holds a Markdown table (``render.has_table``) and fits one
message is sent with ``send_rich_message`` (the model's Markdown as Telegram's rich-message
Markdown, which draws tables); in edit mode the progress message is then deleted. When Telegram
refuses, the answer goes rendered as usual and that chat gets the plain rendering from then on.
"""
from __future__ import annotations

import functools
import io
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
from pyrogram import enums, raw, types
from pyrogram.errors import BadRequest, FloodWait, MessageNotModified, RPCError, UserNotParticipant

from actors.errors import ActorError, RefundRefused
from actors.outbox import Button, Sent
from config.models import TelegramSettings
from i18n import _

from .limits import SendLimiter, Sleep, flood_seconds
from .render import MAX_CAPTION_UNITS, MAX_MESSAGE_UNITS, Part, has_table, render, render_parts, split, to_pyrogram, utf16_len

log = logging.getLogger(__name__)

T = TypeVar("T")

EMPTY_REPLY = "…"  # Telegram rejects empty messages; an empty answer shows this
SENT_IDS_KEPT = 100_000  # (chat, message) ids of the bot's own messages remembered for reply_to_bot
KEYBOARDS_KEPT = 4096  # inline keyboards remembered so an edit keeps its buttons
ADMIN_TTL_S = 60.0
MAX_PENALTY = 8.0


class DeliveryFailed(ActorError):
    """Telegram refused a message for good (bot blocked or removed, no rights, invalid chat, ...)."""

    def __init__(self, chat_id: int | None, reason: str) -> None:
        super().__init__(f"chat {chat_id}: {reason}")
        self.chat_id = chat_id
        self.reason = reason


class LRU(OrderedDict):
    """A bounded mapping dropping the least recently inserted/used key."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def put(self, key: Any, value: Any = True) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)


def to_utc(dt: datetime | None) -> datetime:
    """pyrogram gives naive local datetimes (``datetime.fromtimestamp``); events want aware UTC."""
    if dt is None:
        return datetime.now(UTC)
    return dt.astimezone(UTC)


def _is_reply_error(e: RPCError) -> bool:
    ident = getattr(e, "ID", None) or ""
    return "REPLY" in ident or ident in ("MESSAGE_ID_INVALID", "TOPIC_ID_INVALID")


def keyboard(rows: Sequence[Sequence[Button]]) -> types.InlineKeyboardMarkup:
    return types.InlineKeyboardMarkup([[types.InlineKeyboardButton(b.text, url=b.url) if b.url else
                                        types.InlineKeyboardButton(b.text, callback_data=b.data) for b in row] for row in rows])


@dataclass
class OutboxStats:
    messages: int = 0  # messages sent (each part counts)
    edits: int = 0
    drafts: int = 0
    documents: int = 0
    photos: int = 0
    plain_fallbacks: int = 0  # formatted text rejected, resent plain
    reply_fallbacks: int = 0  # reply target rejected, resent without it
    progress_skipped: int = 0  # progress edits not shown (interval or budget)
    ephemeral: int = 0  # ephemeral messages sent
    ephemeral_fallbacks: int = 0  # ephemeral messages refused, sent as normal replies
    rich: int = 0  # answers with a table sent as rich messages
    rich_fallbacks: int = 0  # rich messages refused, sent rendered


class TelegramOutbox:
    """The Outbox for Telegram. Construct with a started (or starting) ``pyrogram.Client``.

    clock/sleep: monotonic time source and sleep (tests pass a fake clock).
    stream_interval_s: minimum seconds between progress edits (``llm.stream_edit_interval_s``).
    drafts: stream private-chat replies with ``send_message_draft`` instead of edits.
    """

    def __init__(
        self,
        client: Any,
        settings: TelegramSettings | None = None,
        *,
        stream_interval_s: float = 1.0,
        drafts: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.client = client
        self.settings = settings or TelegramSettings()
        self.limits = SendLimiter(self.settings, clock=clock, sleep=sleep)
        self.clock = clock
        self.stream_interval_s = stream_interval_s
        self.drafts = drafts
        self.stats = OutboxStats()
        self._sent_ids: LRU = LRU(SENT_IDS_KEPT)
        self._keyboards: LRU = LRU(KEYBOARDS_KEPT)
        self._admins: LRU = LRU(16_384)
        self._no_ephemeral: set[int] = set()  # groups where Telegram refused an ephemeral message
        self._no_rich: set[int] = set()  # chats where Telegram refused a rich message
        self._drafting: LRU = LRU(KEYBOARDS_KEPT)  # (chat_id, draft_id) → the TelegramReplyStream showing it

    # ------------------------------------------------------------------ facts for the update side

    def sent_by_bot(self, chat_id: int, message_id: int) -> bool:
        """True if the bot sent message ``message_id`` in ``chat_id`` (this process, recent ones)."""
        return (chat_id, message_id) in self._sent_ids

    def stop_draft(self, chat_id: int, draft_id: int) -> bool:
        """The user pressed Stop on draft ``draft_id`` in ``chat_id``: set its stream's ``stopped``
        event (the turn generating it ends the generation). False when no stream of this process
        shows that draft (already finished, or another process's)."""
        stream = self._drafting.pop((chat_id, draft_id), None)
        if stream is None:
            return False
        stream.stopped.set()
        return True

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        """True if ``user_id`` owns or administers ``chat_id`` (cached 60 s). In a private chat the
        user is the admin of their own chat. Errors count as "not an admin"."""
        if chat_id > 0:
            return chat_id == user_id
        key = (chat_id, user_id)
        now = self.clock()
        hit = self._admins.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            member = await self.limits.call(None, lambda: self.client.get_chat_member(chat_id, user_id), what="get_chat_member", budget=False)
            ok = member.status in (enums.ChatMemberStatus.OWNER, enums.ChatMemberStatus.ADMINISTRATOR)
        except UserNotParticipant:
            ok = False
        except RPCError as e:
            log.warning("is_admin(%s, %s): %s; treating as not an admin", chat_id, user_id, e)
            ok = False
        self._admins.put(key, (ok, now + ADMIN_TTL_S))
        return ok

    # ------------------------------------------------------------------ Outbox protocol

    async def send(self, chat_id: int, text: str, *, reply_to: int | None = None, thread_id: int | None = None) -> Sent:
        return await self.send_parts(chat_id, render_parts(text), reply_to=reply_to, thread_id=thread_id)

    async def send_ephemeral(self, chat_id: int, user_id: int, text: str, *, reply_to: int | None = None,
                             thread_id: int | None = None) -> Sent:
        """In a group, ``text`` seen by ``user_id`` only (an ephemeral message; its id is in the
        ephemeral sequence, not the chat's). A private chat, a text longer than one message, or a
        group where Telegram refused one before: a normal reply (``send``)."""
        parts = render_parts(text) or [Part(EMPTY_REPLY)]
        if chat_id > 0 or chat_id in self._no_ephemeral or len(parts) > 1:
            return await self.send(chat_id, text, reply_to=reply_to, thread_id=thread_id)
        part = parts[0]
        client = self.client

        async def op() -> Any:
            peer = await client.resolve_peer(chat_id)
            user = await client.resolve_peer(user_id)
            entities = to_pyrogram(part.entities) or []
            for e in entities:
                e._client = client
            return await client.invoke(raw.functions.ephemeral.SendMessage(
                peer=peer,
                receiver_id=raw.types.InputUser(user_id=user.user_id, access_hash=user.access_hash),
                message=part.text,
                random_id=client.rnd_id(),
                entities=[await e.write() for e in entities] or None,
                reply_to=raw.types.InputReplyToMessage(reply_to_msg_id=reply_to, top_msg_id=thread_id) if reply_to else None,
            ))

        result = await self._unless_refused(chat_id, op, "ephemeral.sendMessage", self._no_ephemeral, "normal replies")
        if result is None:
            self.stats.ephemeral_fallbacks += 1
            return await self.send(chat_id, text, reply_to=reply_to, thread_id=thread_id)
        self.stats.ephemeral += 1
        for update in getattr(result, "updates", None) or ():
            message = getattr(update, "message", None)
            if isinstance(message, raw.types.EphemeralMessage):
                return Sent(message.id, datetime.fromtimestamp(message.date, UTC))
        return Sent(0, datetime.now(UTC))

    async def _unless_refused(self, chat_id: int, op: Callable[[], Awaitable[Any]], what: str, refused: set[int],
                              instead: str) -> Any:
        """``op()`` through the rate limiter; None when Telegram refuses it (an RPC error — a
        FloodWait is waited out by the limiter), and ``chat_id`` joins ``refused`` for good (logged:
        ``instead`` says what the chat gets from now on)."""
        try:
            return await self.limits.call(chat_id, op, what=what)
        except RPCError as e:
            log.info("chat %s: Telegram refused %s (%s); %s from now on", chat_id, what, e, instead)
            refused.add(chat_id)
            return None

    async def send_rich(self, chat_id: int, markdown: str, *, reply_to: int | None = None,
                        thread_id: int | None = None) -> Sent | None:
        """Send ``markdown`` as one rich message (Telegram renders its tables); None when this chat
        refused one before or Telegram refuses it now (then remembered for the chat)."""
        if chat_id in self._no_rich:
            return None

        async def op() -> Any:
            return await self.client.send_rich_message(
                chat_id,
                types.InputRichMessage(markdown=markdown),
                message_thread_id=thread_id,
                reply_parameters=types.ReplyParameters(message_id=reply_to) if reply_to else None,
            )

        msg = await self._unless_refused(chat_id, op, "send_rich_message", self._no_rich, "tables go rendered")
        if msg is None:
            self.stats.rich_fallbacks += 1
            return None
        self.stats.rich += 1
        self.stats.messages += 1
        return self._record(chat_id, msg)

    async def edit(self, chat_id: int, message_id: int, text: str) -> None:
        """Replace the text of message ``message_id`` (its inline keyboard is kept). A text longer
        than one message: the message shows the first part, the rest follow as new messages."""
        parts = render_parts(text) or [Part(EMPTY_REPLY)]
        await self._edit_part(chat_id, message_id, parts[0], markup=self._keyboards.get((chat_id, message_id)))
        if len(parts) > 1:
            await self.send_parts(chat_id, parts[1:])

    async def send_buttons(
        self, chat_id: int, text: str, rows: Sequence[Sequence[Button]], *, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        """Send ``text`` with an inline keyboard (on the last part when the text is split)."""
        return await self.send_parts(chat_id, render_parts(text), reply_to=reply_to, thread_id=thread_id, markup=keyboard(rows))

    async def answer_button(self, query_id: str, text: str | None = None, *, alert: bool = False) -> None:
        """Answer a button press (stops the client's spinner). An expired query is only logged."""
        try:
            await self.limits.call(
                None,
                lambda: self.client.answer_callback_query(query_id, text=text, show_alert=alert),
                what="answer_callback_query",
                budget=False,
            )
        except BadRequest as e:  # QUERY_ID_INVALID: the press is too old to answer
            log.info("button press %s not answered: %s", query_id, e)

    async def send_document(
        self, chat_id: int, filename: str, data: bytes, *, caption: str | None = None, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        """Send ``data`` as a file named ``filename``; a caption longer than 1024 units continues in messages."""
        sent = await self._send_file(chat_id, "send_document", data, filename, caption, reply_to, thread_id,
                                     functools.partial(self.client.send_document, file_name=filename))
        self.stats.documents += 1
        return sent

    async def send_photo(
        self, chat_id: int, data: bytes, *, caption: str | None = None, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        """Send ``data`` (PNG/JPEG/WebP) as a photo; a caption longer than 1024 units continues in messages."""
        name = "image.png" if data.startswith(b"\x89PNG") else "image.jpg"
        sent = await self._send_file(chat_id, "send_photo", data, name, caption, reply_to, thread_id, self.client.send_photo)
        self.stats.photos += 1
        return sent

    async def _send_file(self, chat_id: int, what: str, data: bytes, name: str, caption: str | None, reply_to: int | None,
                         thread_id: int | None, send: Callable[..., Awaitable[Any]]) -> Sent:
        """Upload ``data`` with ``send`` (a client method taking ``(chat_id, file, caption=…)``), its
        caption's first 1024 units formatted, the rest continued as messages."""
        parts = split(render(caption), MAX_CAPTION_UNITS) if caption else []
        first = parts[0] if parts else Part("")

        async def op(entities: list | None, reply: int | None) -> Any:
            buf = io.BytesIO(data)
            buf.name = name
            return await send(
                chat_id,
                buf,
                caption=first.text,
                caption_entities=entities,
                parse_mode=enums.ParseMode.DISABLED,
                reply_parameters=types.ReplyParameters(message_id=reply) if reply else None,
                message_thread_id=thread_id,
            )

        msg = await self._deliver(chat_id, what, first, reply_to, op)
        sent = self._record(chat_id, msg)
        if len(parts) > 1:
            rest = split(Part("".join(p.text for p in parts[1:])), MAX_MESSAGE_UNITS)  # re-pack to full messages
            await self.send_parts(chat_id, rest, thread_id=thread_id)
        return sent

    async def send_invoice(self, chat_id: int, invoice: Any, *, reply_to: int | None = None, thread_id: int | None = None) -> Sent:
        """Send an invoice (``tiers.payments.Invoice``: title, description, payload, currency,
        prices as (label, amount) in the smallest unit, provider_token "" for Stars)."""
        prices = [types.LabeledPrice(label, amount) for label, amount in invoice.prices]

        async def op(_entities: list | None, reply: int | None) -> Any:
            return await self.client.send_invoice(
                chat_id,
                title=invoice.title,
                description=invoice.description,
                payload=invoice.payload,
                currency=invoice.currency,
                prices=prices,
                provider_token=invoice.provider_token or None,
                message_thread_id=thread_id,
                reply_parameters=types.ReplyParameters(message_id=reply) if reply else None,
            )

        msg = await self._deliver(chat_id, "send_invoice", Part(invoice.title), reply_to, op)
        self.stats.messages += 1
        return self._record(chat_id, msg)

    async def send_invoice_link(self, chat_id: int, invoice: Any, text: str, button: str, *, reply_to: int | None = None,
                                thread_id: int | None = None) -> Sent:
        """Make ``invoice`` a link (``create_invoice_link``, with its ``subscription_period``: Telegram
        sells Stars subscriptions only so) and send ``text`` with a button opening it."""
        try:
            url = await self.limits.call(
                None,
                lambda: self.client.create_invoice_link(
                    title=invoice.title,
                    description=invoice.description,
                    payload=invoice.payload,
                    currency=invoice.currency,
                    prices=[types.LabeledPrice(label, amount) for label, amount in invoice.prices],
                    provider_token=invoice.provider_token or None,
                    subscription_period=invoice.subscription_period,
                ),
                what="create_invoice_link",
                budget=False,
            )
        except RPCError as e:
            raise DeliveryFailed(chat_id, f"create_invoice_link: {e}") from e
        return await self.send_buttons(chat_id, text, [[Button(button, "", url=url)]], reply_to=reply_to, thread_id=thread_id)

    async def edit_star_subscription(self, user_id: int, charge_id: str, *, canceled: bool) -> None:
        """Cancel or resume the renewal of a user's Stars subscription (``edit_user_star_subscription``)."""
        try:
            await self.limits.call(
                None,
                lambda: self.client.edit_user_star_subscription(user_id, charge_id, is_canceled=canceled),
                what="edit_user_star_subscription",
                budget=False,
            )
        except RPCError as e:
            raise DeliveryFailed(None, f"edit_user_star_subscription: {e}") from e

    async def delete(self, chat_id: int, message_id: int) -> bool:
        """Delete one message; False (logged, no text of it) when Telegram refuses."""
        try:
            await self.limits.call(None, lambda: self.client.delete_messages(chat_id, message_id), what="delete_messages",
                                   budget=False)
        except RPCError as e:
            log.warning("could not delete message %s in chat %s: %s", message_id, chat_id, e)
            return False
        return True

    async def refund_star_payment(self, user_id: int, charge_id: str) -> None:
        """Refund a Stars payment (``payments.refundStarsCharge``). raises RefundRefused."""
        try:
            await self.limits.call(None, lambda: self.client.refund_star_payment(user_id, charge_id),
                                   what="refund_star_payment", budget=False)
        except RPCError as e:
            already = "ALREADY_REFUNDED" in str(getattr(e, "ID", "") or e)
            raise RefundRefused(f"Telegram refused to refund {charge_id}: {e}", already=already) from e

    async def answer_pre_checkout(self, query_id: str, ok: bool, error: str | None = None) -> None:
        """Accept or refuse a pre-checkout query (Telegram waits at most 10 s for the answer)."""
        try:
            await self.limits.call(
                None,
                lambda: self.client.answer_pre_checkout_query(query_id, ok=ok, error_message=None if ok else (error or _("Payment refused"))),
                what="answer_pre_checkout_query",
                budget=False,
            )
        except RPCError as e:
            raise DeliveryFailed(None, f"answer_pre_checkout_query: {e}") from e

    async def stream(self, chat_id: int, *, reply_to: int | None = None, thread_id: int | None = None) -> TelegramReplyStream:
        return TelegramReplyStream(self, chat_id, reply_to, thread_id, use_drafts=self.drafts and chat_id > 0)

    # ------------------------------------------------------------------ internals

    async def send_parts(
        self,
        chat_id: int,
        parts: list[Part],
        *,
        reply_to: int | None = None,
        thread_id: int | None = None,
        markup: types.InlineKeyboardMarkup | None = None,
    ) -> Sent:
        """Send rendered parts in order; the first replies to ``reply_to``, the last carries ``markup``."""
        if not parts:
            parts = [Part(EMPTY_REPLY)]
        first: Sent | None = None
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            sent = await self._send_part(chat_id, part, reply_to if i == 0 else None, thread_id, markup if last else None)
            if first is None:
                first = sent
        assert first is not None
        return first

    async def _send_part(
        self, chat_id: int, part: Part, reply_to: int | None, thread_id: int | None, markup: types.InlineKeyboardMarkup | None
    ) -> Sent:
        async def op(entities: list | None, reply: int | None) -> Any:
            return await self.client.send_message(
                chat_id,
                part.text,
                parse_mode=enums.ParseMode.DISABLED,
                entities=entities,
                link_preview_options=types.LinkPreviewOptions(is_disabled=True),
                reply_parameters=types.ReplyParameters(message_id=reply) if reply else None,
                message_thread_id=thread_id,
                reply_markup=markup,
            )

        msg = await self._deliver(chat_id, "send_message", part, reply_to, op)
        self.stats.messages += 1
        sent = self._record(chat_id, msg)
        if markup is not None:
            self._keyboards.put((chat_id, sent.message_id), markup)
        return sent

    async def _edit_part(self, chat_id: int, message_id: int, part: Part, *, markup: Any = None, wait: bool = True) -> bool:
        """Edit a message to ``part``. wait=False: best effort (skip when over budget; a FloodWait is
        recorded, not waited). Returns False when the edit was skipped."""

        async def op(entities: list | None, _reply: int | None) -> Any:
            # Raw EditMessage: kurigram 2.2.26's edit_message_text drops its ``entities`` argument
            # (it resets the local to None before parsing), so formatted edits would arrive plain.
            client = self.client
            for e in entities or ():
                e._client = client
            return await client.invoke(
                raw.functions.messages.EditMessage(
                    peer=await client.resolve_peer(chat_id),
                    id=message_id,
                    no_webpage=True,
                    message=part.text,
                    entities=[await e.write() for e in entities] if entities else None,
                    reply_markup=await markup.write(client) if markup is not None else None,
                )
            )

        try:
            if wait:
                await self._deliver(chat_id, "edit_message_text", part, None, op)
            else:
                if not self.limits.try_acquire(chat_id):
                    self.stats.progress_skipped += 1
                    return False
                await self._deliver(chat_id, "edit_message_text", part, None, op, acquired=True)
        except MessageNotModified:
            return True
        self.stats.edits += 1
        return True

    async def _deliver(
        self,
        chat_id: int,
        what: str,
        part: Part,
        reply_to: int | None,
        op: Callable[[list | None, int | None], Awaitable[T]],
        *,
        acquired: bool = False,
    ) -> T:
        """Run ``op(entities, reply_to)`` within the budget, falling back to plain text, then to no reply.

        acquired=True: the caller already holds a budget slot and wants no waiting — a FloodWait
        propagates (recorded in the limiter) instead of being waited out.
        """
        entities = to_pyrogram(part.entities) or None

        async def attempt(ents: list | None, reply: int | None) -> T:
            if acquired:
                try:
                    return await op(ents, reply)
                except FloodWait as e:
                    self.limits.flood(chat_id, flood_seconds(e))
                    raise
            return await self.limits.call(chat_id, lambda: op(ents, reply), what=what)

        try:
            try:
                return await attempt(entities, reply_to)
            except MessageNotModified:
                raise
            except BadRequest as e:
                err: BadRequest = e
                if entities:
                    log.info("chat %s: %s rejected the formatting (%s); sending plain text", chat_id, what, e.ID)
                    self.stats.plain_fallbacks += 1
                    try:
                        return await attempt(None, reply_to)
                    except MessageNotModified:
                        raise
                    except BadRequest as e2:
                        err = e2
                if reply_to is not None and _is_reply_error(err):
                    log.info("chat %s: reply target %s rejected (%s); sending without it", chat_id, reply_to, err.ID)
                    self.stats.reply_fallbacks += 1
                    return await attempt(None, None)
                raise err  # noqa: B904 - the request's own error, unchanged
        except (MessageNotModified, FloodWait):
            raise
        except RPCError as e:
            raise DeliveryFailed(chat_id, f"{what}: {e}") from e

    def _record(self, chat_id: int, msg: Any) -> Sent:
        if msg is None:  # pyrogram returns None only for results it cannot parse
            raise DeliveryFailed(chat_id, "Telegram returned no message")
        self._sent_ids.put((chat_id, msg.id))
        return Sent(msg.id, to_utc(msg.date))


class TelegramReplyStream:
    """A reply being generated in one chat (see the module docstring). Created by ``TelegramOutbox.stream``."""

    def __init__(self, outbox: TelegramOutbox, chat_id: int, reply_to: int | None, thread_id: int | None, *, use_drafts: bool) -> None:
        self.outbox = outbox
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.thread_id = thread_id
        self.use_drafts = use_drafts
        self.started = outbox.clock()
        self.message: Sent | None = None  # the progress message (edit mode)
        self.draft_id: int | None = None
        self.shown: Part | None = None
        self.last_shown = float("-inf")
        self.not_before = float("-inf")
        self.penalty = 1.0
        self.updates = 0
        self.edits = 0
        self.drafts = 0
        self.stopped = anyio.Event()  # set by ``TelegramOutbox.stop_draft`` (the user pressed Stop)

    def interval(self, units: int) -> float:
        """Seconds between progress edits for a text of ``units``: the base interval (at least the
        group budget's spacing in groups), ×(1 + units/2048) for long texts, × a FloodWait penalty."""
        out = self.outbox
        base = out.stream_interval_s
        if self.chat_id < 0:
            base = max(base, 60.0 / out.settings.per_group_per_min)
        return base * (1.0 + units / 2048.0) * self.penalty

    def _progress_part(self, text: str) -> Part | None:
        parts = render_parts(text)
        return parts[0] if parts else None

    async def update(self, text: str) -> None:
        """Show the text so far, throttled: nothing during the first interval, then at most one edit
        (or draft) per interval. Never waits for the budget except for the first message. Once the
        user stopped the draft, nothing more is shown until ``finish``."""
        if self.stopped.is_set():
            return
        self.updates += 1
        out = self.outbox
        now = out.clock()
        if self.message is None and self.draft_id is None:
            if now - self.started < self.interval(0):
                out.stats.progress_skipped += 1
                return  # a quick answer goes out whole in finish()
            part = self._progress_part(text)
            if part is None:
                return
            await self._show_first(part)
            return
        if now < self.not_before or now - self.last_shown < self.interval(utf16_len(text)):
            out.stats.progress_skipped += 1
            return
        part = self._progress_part(text)
        if part is None or part == self.shown:
            return
        if self.draft_id is not None:
            await self._draft(part)
            return
        assert self.message is not None
        try:
            shown = await out._edit_part(self.chat_id, self.message.message_id, part, wait=False)
        except FloodWait as e:
            self._flooded(flood_seconds(e))
            return
        except DeliveryFailed as e:  # e.g. the progress message was deleted; finish() sends anew
            log.info("chat %s: progress edit failed: %s", self.chat_id, e.reason)
            self.not_before = now + self.interval(utf16_len(text))
            return
        if shown:
            self.edits += 1
            self.shown = part
            self.last_shown = out.clock()

    async def _show_first(self, part: Part) -> None:
        out = self.outbox
        if self.use_drafts and out.drafts:
            self.draft_id = random.randint(1, 2**62)
            out._drafting.put((self.chat_id, self.draft_id), self)
            if await self._draft(part):
                return
            self.draft_id = None
        self.message = await out._send_part(self.chat_id, part, self.reply_to, self.thread_id, None)
        self.shown = part
        self.last_shown = out.clock()

    async def _draft(self, part: Part) -> bool:
        """Show ``part`` as the chat's draft. On refusal, switch to edits (for this outbox)."""
        out = self.outbox
        if out.limits.blocked_for(self.chat_id) > 0:
            return True
        try:
            await out.client.send_message_draft(
                self.chat_id,
                self.draft_id,
                part.text,
                message_thread_id=self.thread_id,
                parse_mode=enums.ParseMode.DISABLED,
                entities=to_pyrogram(part.entities) or None,
                can_stop=True,
                keep_on_stop=True,  # shown until finish() sends what was generated as a message
            )
        except FloodWait as e:
            out.limits.flood(self.chat_id, flood_seconds(e))
            self._flooded(flood_seconds(e))
            return True
        except RPCError as e:
            log.warning("send_message_draft refused (%s); streaming with message edits instead", e)
            out.drafts = False
            out._drafting.pop((self.chat_id, self.draft_id), None)
            self.draft_id = None
            if self.message is None:
                self.message = await out._send_part(self.chat_id, part, self.reply_to, self.thread_id, None)
                self.shown = part
                self.last_shown = out.clock()
            return False
        self.drafts += 1
        out.stats.drafts += 1
        self.shown = part
        self.last_shown = out.clock()
        return True

    def _flooded(self, seconds: float) -> None:
        self.penalty = min(MAX_PENALTY, self.penalty * 2.0)
        self.not_before = self.outbox.clock() + seconds

    async def finish(self, text: str) -> Sent:
        """Show the final text (formatted, split) and return the first message of the reply. A text
        with a table that fits one message goes as a rich message when the chat takes them."""
        out = self.outbox
        if self.draft_id is not None:
            out._drafting.pop((self.chat_id, self.draft_id), None)
        parts = render_parts(text) or [Part(EMPTY_REPLY)]
        if len(parts) == 1 and has_table(text):
            rich = await out.send_rich(self.chat_id, text, reply_to=self.reply_to, thread_id=self.thread_id)
            if rich is not None:
                if self.message is not None:  # edit mode: the progress message gives way to the rich one
                    await out.delete(self.chat_id, self.message.message_id)
                return rich
        if self.message is None:
            return await out.send_parts(self.chat_id, parts, reply_to=self.reply_to, thread_id=self.thread_id)
        first = self.message
        if parts[0] != self.shown:
            try:
                await out._edit_part(self.chat_id, first.message_id, parts[0])
            except DeliveryFailed as e:  # the progress message is gone: send the whole reply anew
                log.info("chat %s: final edit failed (%s); sending the reply as new messages", self.chat_id, e.reason)
                return await out.send_parts(self.chat_id, parts, reply_to=self.reply_to, thread_id=self.thread_id)
        if len(parts) > 1:
            await out.send_parts(self.chat_id, parts[1:], thread_id=self.thread_id)
        return first


__all__ = ["MAX_MESSAGE_UNITS", "DeliveryFailed", "OutboxStats", "TelegramOutbox", "TelegramReplyStream", "keyboard", "to_utc"]
