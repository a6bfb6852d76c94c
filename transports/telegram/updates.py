"""pyrogram updates → chat events (docs/design.md §2, §8). Handlers are thin: convert, then ``supervisor.tell``.

``UpdateRouter`` owns the handlers. It converts a text (or captioned) message into ``Incoming``, a
``/command`` into ``CommandEvent`` (ignoring commands addressed to another bot), a button press
into ``ButtonPress``, a pre-checkout query into ``PreCheckout`` (told to the buyer's private chat)
and a successful payment into ``PaymentEvent``; it drops re-delivered updates (an LRU of (chat_id, message_id) seen), applies
the optional channel gate, and, when the bot is added to a group where it cannot read every
message, says once how to fix that. Sending those two notices is transport work, done in the
background so the dispatcher never waits for a send budget.

Until ``attach`` the handlers wait (updates queue up in order, e.g. those recovered at start);
after ``close`` they drop updates and remember where each dropped update's sequence (pts) began,
so ``rewind`` can make Telegram deliver them again after the restart.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from pyrogram import enums, utils
from pyrogram.errors import FloodWait, RPCError, UserNotParticipant
from pyrogram.handlers import (
    CallbackQueryHandler,
    DeletedMessagesHandler,
    EditedMessageHandler,
    MessageHandler,
    PreCheckoutQueryHandler,
    RawUpdateHandler,
    StoppedMessageGenerationHandler,
)
from pyrogram.storage import UpdateState

import i18n
from actors.errors import MediaUnavailable, SupervisorClosed
from actors.events import (
    PAYMENTS_DESK,
    ButtonPress,
    ChatEvent,
    CommandEvent,
    ConfigChanged,
    Deleted,
    Edited,
    Incoming,
    Media,
    Migrated,
    PaymentEvent,
    PreCheckout,
    Sender,
)
from actors.services import BotIdentity
from config.models import TelegramSettings
from i18n import N_
from memory.markers import contact_text, location_text, poll_text

from .limits import flood_seconds
from .outbox import LRU, TelegramOutbox, to_utc
from .render import plain_parts, utf16_slice

log = logging.getLogger(__name__)

CAPTION_COMMANDS = frozenset({"image"})  # a file captioned with these is the command (its media: /image edit's mask)
SEEN_KEPT = 16_384  # (chat_id, message_id) pairs remembered to drop re-delivered updates
GATE_TTL_S = 600.0  # channel membership is cached this long
_COMMAND = re.compile(r"/([A-Za-z0-9_]{1,64})(?:@([A-Za-z0-9_]{1,64}))?(?=\s|$)(.*)", re.DOTALL)

# The transport's own notices (catalog ids; sent in the language of the user they answer: ``i18n.in_language``)
PRIVACY_NOTICE = N_(
    "Hi! I can only see messages here that mention me, reply to me or start with a /command, "
    "so I cannot remember this chat's conversation yet. To fix it, either make me an admin of this group, "
    "or ask my owner to open @BotFather → /setprivacy → @{username} → Disable (then remove me from the group and add me again)."
)
GATE_NOTICE = N_("To talk with me, please join {link} first — then write to me again. Thank you!")
BUSY_NOTICE = N_("I'm busy with this chat's earlier messages; I've saved yours and will remember it, but I can't answer it now.")

_CHAT_TYPES = {
    enums.ChatType.PRIVATE: "private",
    enums.ChatType.BOT: "private",
    enums.ChatType.GROUP: "group",
    enums.ChatType.SUPERGROUP: "supergroup",
    enums.ChatType.FORUM: "supergroup",
    enums.ChatType.CHANNEL: "channel",
}


# ---------------------------------------------------------------------- pure conversions


def language_of(user: Any) -> str | None:
    """The interface language of a pyrogram user (its Telegram ``language_code``, if there is a
    catalog for it), for the notices the transport sends itself; None: English."""
    code = getattr(user, "language_code", None)
    return i18n.normalize(code) if isinstance(code, str) else None


def chat_type_of(chat: Any) -> str | None:
    """pyrogram chat → ``"private" | "group" | "supergroup" | "channel"`` (None: not handled)."""
    kind = getattr(chat, "type", None)
    return _CHAT_TYPES.get(kind) if kind is not None else None


def sender_of(message: Any) -> Sender | None:
    """Who sent ``message``: the user, else the chat it was sent on behalf of (anonymous admins, channels)."""
    u = message.from_user
    if u is not None:
        return user_sender(u)
    c = message.sender_chat
    if c is not None:
        return Sender(c.id, c.title or c.username or str(c.id), c.username, False)
    return None


def user_sender(u: Any) -> Sender:
    name = " ".join(p for p in (u.first_name, u.last_name) if p) or u.username or str(u.id)
    return Sender(u.id, name, u.username, bool(u.is_bot), getattr(u, "language_code", None))


def mentions_bot(text: str, entities: Any, bot: BotIdentity) -> bool:
    """True if an entity of ``text`` is ``@botusername`` or a text mention of the bot's user id."""
    uname = ("@" + bot.username).lower() if bot.username else None
    for e in entities or ():
        if e.type == enums.MessageEntityType.MENTION and uname is not None:
            if utf16_slice(text, e.offset, e.length).lower() == uname:
                return True
        elif e.type == enums.MessageEntityType.TEXT_MENTION and e.user is not None and e.user.id == bot.user_id:
            return True
    return False


def parse_command(text: str, bot_username: str | None) -> tuple[str, str] | bool | None:
    """``/cmd@bot args`` → (``cmd`` lower-cased, ``args`` stripped); None if not a command;
    False if the command is addressed to another bot."""
    m = _COMMAND.match(text)
    if m is None:
        return None
    cmd, target, args = m.groups()
    if target and bot_username and target.lower() != bot_username.lower():
        return False
    return cmd.lower(), args.strip()


def thread_of(message: Any) -> int | None:
    """The forum topic of ``message`` (None outside forums and in the General topic)."""
    chat = message.chat
    if chat is not None and getattr(chat, "is_forum", False) and getattr(message, "topic_message", False):
        return message.message_thread_id
    return None


class TelegramDownload:
    """The lazy download handle of a message's file (``Media.download``): awaiting it fetches the
    bytes through the client (MTProto ``upload.GetFile``, 1 MiB parts). raises MediaUnavailable."""

    __slots__ = ("client", "message")

    def __init__(self, client: Any, message: Any) -> None:
        self.client = client
        self.message = message

    async def __call__(self) -> bytes:
        try:
            buf = await self.client.download_media(self.message, in_memory=True)
        except (RPCError, ValueError, OSError) as exc:
            raise MediaUnavailable(f"download of message {self.message.id} failed: {exc}") from exc
        if buf is None:
            raise MediaUnavailable(f"message {self.message.id} has nothing to download")
        return bytes(buf.getbuffer())


def media_of(message: Any, client: Any = None) -> Media | None:
    """The file a pyrogram ``Message`` carries, as ``Media`` (None for a message without one we know).
    A photo is its largest size; ``download`` is set when a client is given."""
    kinds = (("photo", message.photo), ("document", message.document), ("voice", message.voice),
             ("audio", message.audio), ("video_note", message.video_note), ("video", message.video),
             ("animation", message.animation), ("sticker", message.sticker))
    for kind, obj in kinds:
        if obj is None:
            continue
        duration = getattr(obj, "duration", None)
        emoji = getattr(obj, "emoji", None) if kind == "sticker" else None
        name = getattr(obj, "file_name", None) if kind in ("document", "audio", "video", "animation") else None
        mime = getattr(obj, "mime_type", None) or ("image/jpeg" if kind == "photo" else None)
        size = getattr(obj, "file_size", None)
        return Media(kind, mime, int(size) if size else None, name, float(duration) if duration is not None else None, emoji,
                     TelegramDownload(client, message) if client is not None and kind != "sticker" else None)
    return None


def shared_text(message: Any) -> str | None:
    """The stored text of a poll, location or contact message (``memory.markers``); None otherwise."""
    poll = message.poll
    if poll is not None:
        return poll_text(str(poll.question or ""), [str(o.text or "") for o in poll.options or ()])
    venue = message.venue
    loc = venue.location if venue is not None else message.location
    if loc is not None:
        return location_text(loc.latitude, loc.longitude, venue.title if venue is not None else None)
    contact = message.contact
    if contact is not None:
        return contact_text(" ".join(p for p in (contact.first_name, contact.last_name) if p) or None)
    return None


def message_to_event(message: Any, bot: BotIdentity, *, sent_by_bot: Callable[[int, int], bool] = lambda c, m: False,
                     client: Any = None) -> Incoming | CommandEvent | PaymentEvent | None:
    """A pyrogram ``Message`` → ``Incoming`` / ``CommandEvent``; None for anything else (service
    messages, the bot's own messages, commands for another bot). A message with a file carries it
    as ``Incoming.media`` (caption as the text); ``client`` makes its download handle. A file captioned
    with one of ``CAPTION_COMMANDS`` (``/image edit …``) is that command, its file as ``CommandEvent.media``.
    The file of the replied-to message, if any, is ``reply_media`` (the photo ``/image edit`` edits)."""
    chat_type = chat_type_of(message.chat)
    if chat_type is None or message.outgoing:
        return None
    sender = sender_of(message)
    if sender is None or sender.user_id == bot.user_id:
        return None
    if message.successful_payment is not None:
        return _payment_event(message, sender)
    content = _content_of(message, client)
    if content is None:
        return None
    text, entities, media = content
    chat_id = message.chat.id
    thread_id = thread_of(message)
    date = to_utc(message.date)
    title = message.chat.title if chat_type != "private" else None
    replied = message.reply_to_message
    reply_media = media_of(replied, client) if replied is not None else None
    cmd = _command_of(message, text, media, bot.username)
    if cmd is False:
        return None
    if isinstance(cmd, tuple):
        replied_to = replied.from_user if replied is not None else None
        return CommandEvent(chat_id, chat_type, message.id, sender, cmd[0], cmd[1], date, thread_id=thread_id, chat_title=title,
                            reply_to_user=replied_to.id if replied_to is not None and not replied_to.is_bot else None,
                            media=media, reply_media=reply_media)
    reply_to, reply_to_bot = _reply_of(message, thread_id, bot, sent_by_bot)
    return Incoming(
        chat_id=chat_id,
        chat_type=chat_type,
        message_id=message.id,
        sender=sender,
        text=text,
        date=date,
        reply_to=reply_to,
        reply_to_bot=reply_to_bot,
        thread_id=thread_id,
        mentions_bot=mentions_bot(text, entities, bot),
        chat_title=title,
        media=media,
        reply_media=reply_media,
    )


def _payment_event(message: Any, sender: Sender) -> PaymentEvent:
    """A successful payment message (``message.successful_payment``) → ``PaymentEvent``."""
    payment = message.successful_payment
    return PaymentEvent(
        chat_id=message.chat.id,
        message_id=message.id,
        sender=sender,
        charge_id=payment.telegram_payment_charge_id or "",
        payload=_text(payment.invoice_payload),
        total_amount=int(payment.total_amount),
        currency=payment.currency,
        date=to_utc(message.date),
        subscription_until=to_utc(until) if (until := payment.subscription_expiration_date) is not None else None,
        renewal=bool(payment.is_recurring) and not payment.is_first_recurring,
    )


def _content_of(message: Any, client: Any) -> tuple[str, Any, Media | None] | None:
    """(text, its entities, file) of ``message``: its text; else its caption and file; else a poll, a
    location or a contact as text (``shared_text``). None when it has none of them."""
    text = message.text
    entities = message.entities
    media = None
    if text is None:
        text, entities = message.caption, message.caption_entities
        media = media_of(message, client)
        if text is None and media is None:
            text = shared_text(message)  # a poll, a location, a contact: kept as text
    if text is None and media is None:
        return None
    return str(text or ""), entities, media


def _command_of(message: Any, text: str, media: Media | None, bot_username: str | None) -> tuple[str, str] | bool | None:
    """The command ``message`` is, (name, args); False when it is dropped (a text command for another
    bot); None when it is not a command (an ``Incoming``: a captioned file is a command only for
    ``CAPTION_COMMANDS``)."""
    if not (text.startswith("/") and (message.text is not None or media is not None)):
        return None
    cmd = parse_command(text, bot_username)
    if cmd is False and message.text is not None:
        return False
    if isinstance(cmd, tuple) and (message.text is not None or cmd[0] in CAPTION_COMMANDS):
        return cmd
    return None


def _reply_of(message: Any, thread_id: int | None, bot: BotIdentity, sent_by_bot: Callable[[int, int], bool]) -> tuple[int | None, bool]:
    """(the message ``message`` replies to, whether the bot sent that one). A plain message in a forum
    topic replies to nothing (Telegram has it reply to the topic's first message)."""
    reply_to = message.reply_to_message_id
    if thread_id is not None and reply_to == thread_id and not message.reply_to_top_message_id:
        reply_to = None  # a plain message in a topic "replies" to the topic's first message
    replied = message.reply_to_message
    reply_to_bot = reply_to is not None and (
        (replied is not None and replied.from_user is not None and replied.from_user.id == bot.user_id)
        or sent_by_bot(message.chat.id, reply_to)
    )
    return reply_to, reply_to_bot


def callback_to_event(query: Any) -> ButtonPress | None:
    """A pyrogram ``CallbackQuery`` → ``ButtonPress`` (None for inline-mode presses without a message)."""
    msg = query.message
    if msg is None or msg.chat is None or query.from_user is None:
        return None
    return ButtonPress(msg.chat.id, msg.id, user_sender(query.from_user), _text(query.data), str(query.id))


def pre_checkout_to_event(query: Any) -> PreCheckout:
    """A pyrogram ``PreCheckoutQuery`` → ``PreCheckout`` for the buyer's private chat."""
    u = query.from_user
    return PreCheckout(u.id, user_sender(u), str(query.id), _text(query.invoice_payload), int(query.total_amount), query.currency)


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


# ---------------------------------------------------------------------- channel gate


class ChannelGate:
    """Serve only members of ``channel`` (membership via ``get_chat_member``, cached 10 minutes).

    When Telegram cannot tell (the bot is not an admin of the channel, the channel is unknown, a
    FloodWait) the gate lets the user through and logs a warning: a misconfigured gate must not
    silence the bot.
    """

    def __init__(self, client: Any, channel: str, outbox: TelegramOutbox, *, ttl_s: float = GATE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.channel = channel.strip().removeprefix("@").removeprefix("https://t.me/")
        self.link = f"https://t.me/{self.channel}"
        self.outbox = outbox
        self.ttl_s = ttl_s
        self.clock = clock
        self._members: LRU = LRU(100_000)
        self._told: LRU = LRU(100_000)
        self.checks = 0

    async def is_member(self, user_id: int) -> bool:
        now = self.clock()
        hit = self._members.get(user_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        limits = self.outbox.limits
        if limits.blocked_for(None, now) > 0:
            return True
        self.checks += 1
        try:
            member = await self.client.get_chat_member(self.channel, user_id)
        except UserNotParticipant:
            ok = False
        except FloodWait as e:
            limits.flood(None, flood_seconds(e))
            log.warning("channel gate: FloodWait %s s checking @%s; letting users through meanwhile", e.value, self.channel)
            return True
        except RPCError as e:
            log.warning("channel gate: cannot check membership of @%s (%s); is the bot an admin there? letting user %s through",
                        self.channel, e, user_id)
            ok = True
        else:
            ok = member.status not in (enums.ChatMemberStatus.LEFT, enums.ChatMemberStatus.BANNED) and (
                member.status != enums.ChatMemberStatus.RESTRICTED or member.is_member is not False
            )
        self._members.put(user_id, (ok, now + self.ttl_s))
        return ok

    def should_tell(self, user_id: int) -> bool:
        """True once per user per TTL: the moment to send the join link."""
        now = self.clock()
        last = self._told.get(user_id)
        if last is not None and now - last < self.ttl_s:
            return False
        self._told.put(user_id, now)
        return True


# ---------------------------------------------------------------------- the router


@dataclass
class RouterStats:
    received: int = 0
    told: int = 0
    duplicates: int = 0
    ignored: int = 0
    gated: int = 0
    overflowed: int = 0  # stored without an answer: the chat's inbox was full
    dropped: int = 0  # arrived while shutting down (rewound: delivered again after the restart)


class UpdateRouter:
    """Registers the handlers on a client and routes its updates to the supervisor.

    ``register(client)`` before ``client.start()``; ``attach(supervisor, bot)`` once the runtime is
    open (handlers wait until then); ``close()`` at shutdown; ``await rewind(storage)`` before the
    client stops. spawn: runs a notice send in the background (``task_group.start_soon``).
    """

    def __init__(self, client: Any, outbox: TelegramOutbox, settings: TelegramSettings | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.outbox = outbox
        settings = settings or TelegramSettings()
        self.gate = ChannelGate(client, settings.require_channel, outbox, clock=clock) if settings.require_channel else None
        self.supervisor: Any = None
        self.bot: BotIdentity | None = None
        self.can_read_all: bool | None = None
        self.spawn: Callable[..., Any] | None = None
        self.stats = RouterStats()
        self._ready = anyio.Event()
        self._closing = False
        self._seen: LRU = LRU(SEEN_KEPT)
        self._notified: LRU = LRU(16_384)
        self._busy_told: LRU = LRU(16_384)  # chats told "busy" since their inbox last had room
        self._last_raw: tuple[int, int] | None = None  # (state id, pts before) of the update being dispatched
        self._rewind: dict[int, int] = {}
        self.handlers: list[tuple[Any, int]] = []

    # ------------------------------------------------------------------ lifecycle

    def register(self, client: Any | None = None, group: int = 0) -> None:
        client = client or self.client
        self.handlers = [
            (RawUpdateHandler(self.on_raw), group - 1),
            (MessageHandler(self.on_message), group),
            (CallbackQueryHandler(self.on_callback), group),
            (PreCheckoutQueryHandler(self.on_pre_checkout), group),
            (EditedMessageHandler(self.on_edited), group),
            (DeletedMessagesHandler(self.on_deleted), group),
            (StoppedMessageGenerationHandler(self.on_stopped), group),
        ]
        for handler, g in self.handlers:
            client.add_handler(handler, g)

    def attach(self, supervisor: Any, bot: BotIdentity, *, spawn: Callable[..., Any],
               can_read_all_group_messages: bool | None = None) -> None:
        """Start routing to ``supervisor``; waiting handlers proceed. spawn: starts a background
        notice send in the caller's task group (``task_group.start_soon``), which owns it."""
        self.supervisor = supervisor
        self.bot = bot
        self.can_read_all = can_read_all_group_messages
        self.spawn = spawn
        self._ready.set()

    def close(self) -> None:
        """Stop routing: updates from now on are dropped and rewound (see ``rewind``)."""
        self._closing = True
        self._ready.set()

    @property
    def closing(self) -> bool:
        return self._closing

    async def rewind(self, storage: Any) -> dict[int, int]:
        """Move the stored update state back to before the first update dropped at shutdown, so
        ``recover_gaps`` at the next start delivers it again. Returns {state id: pts}."""
        if self._rewind:
            await storage.set_update_state([UpdateState(sid, pts, None, None, None) for sid, pts in self._rewind.items()])
            log.info("shutdown: %d update(s) not handled; they will be recovered at the next start", self.stats.dropped)
        return dict(self._rewind)

    # ------------------------------------------------------------------ handlers

    async def on_raw(self, client: Any, update: Any, users: Any, chats: Any) -> None:
        """Runs first for every update: remember where its pts sequence began (for ``rewind``)."""
        pts, count = getattr(update, "pts", None), getattr(update, "pts_count", None)
        if pts is None or count is None or count < 0:  # recovered updates carry pts_count = -1
            self._last_raw = None
            return
        channel_id = getattr(getattr(getattr(update, "message", None), "peer_id", None), "channel_id", None) or getattr(update, "channel_id", None)
        self._last_raw = (utils.get_channel_id(channel_id) if channel_id else 0, pts - count)

    def _drop(self) -> None:
        self.stats.dropped += 1
        if self._last_raw is not None:
            sid, pts = self._last_raw
            if pts < self._rewind.get(sid, pts + 1):
                self._rewind[sid] = pts

    async def _enter(self) -> bool:
        """Wait for ``attach``; False when the update must be dropped (shutting down)."""
        if not self._ready.is_set():
            await self._ready.wait()
        if self._closing:
            self._drop()
            return False
        return True

    async def on_message(self, client: Any, message: Any) -> None:
        if not await self._enter():
            return
        self.stats.received += 1
        bot = self.bot
        assert bot is not None
        if message.new_chat_members or message.group_chat_created:
            if message.group_chat_created or any(u.id == bot.user_id for u in message.new_chat_members or ()):
                self._background(self._on_added(message.chat.id, message.message_thread_id if thread_of(message) else None,
                                                language_of(getattr(message, "from_user", None))))
            return
        if message.migrate_to_chat_id or message.migrate_from_chat_id:
            await self._on_migrated(message)
            return
        key = (message.chat.id, message.id)
        if key in self._seen:
            self.stats.duplicates += 1
            log.info("chat %s: message %s delivered again; dropped", key[0], key[1])
            return
        event = message_to_event(message, bot, sent_by_bot=self.outbox.sent_by_bot, client=self.client)
        if event is None:
            self.stats.ignored += 1
            return
        self._seen.put(key)
        if (
            self.gate is not None
            and not isinstance(event, PaymentEvent)  # never refuse a payment that went through
            and not event.sender.is_bot
            and event.sender.user_id > 0
            and not await self.gate.is_member(event.sender.user_id)
        ):
            self.stats.gated += 1
            addressed = event.chat_type == "private" or isinstance(event, CommandEvent) or event.mentions_bot or event.reply_to_bot
            if addressed and self.gate.should_tell(event.sender.user_id):
                text = i18n.in_language(event.sender.language_code, GATE_NOTICE, link=self.gate.link)
                self._background(self._send_notice(event.chat_id, text, message.id, event.thread_id))
            return
        await self._tell(event)

    async def on_edited(self, client: Any, message: Any) -> None:
        """A member edited a message: its stored text and memory follow (the bot's own edits are skipped)."""
        if not await self._enter():
            return
        self.stats.received += 1
        bot = self.bot
        assert bot is not None
        event = message_to_event(message, bot, sent_by_bot=self.outbox.sent_by_bot)
        if not isinstance(event, Incoming):
            self.stats.ignored += 1
            return
        await self._tell(Edited(event.chat_id, event.message_id, event.sender, event.text, event.date))

    async def on_deleted(self, client: Any, messages: Any) -> None:
        """Messages deleted in a supergroup or channel leave memory (Telegram names no chat for others)."""
        if not await self._enter():
            return
        self.stats.received += 1
        by_chat: dict[int, list[int]] = {}
        for m in messages or ():
            if m.chat is not None:
                by_chat.setdefault(m.chat.id, []).append(m.id)
        for chat_id, ids in by_chat.items():
            await self._tell(Deleted(chat_id, tuple(ids)))

    async def on_stopped(self, client: Any, stopped: Any) -> None:
        """The user pressed Stop on a streamed draft (``MessageGenerationStopped``): a signal to the
        reply stream showing it, keyed by (chat id, draft id) — not an event for the chat's actor,
        whose inbox waits behind the very turn to stop. Unknown drafts are ignored."""
        self.stats.received += 1
        if not self.outbox.stop_draft(stopped.chat.id, stopped.draft_id):
            self.stats.ignored += 1
            log.info("chat %s: stop for draft %s, which no reply is streaming", stopped.chat.id, stopped.draft_id)

    async def on_callback(self, client: Any, query: Any) -> None:
        if not await self._enter():
            return
        self.stats.received += 1
        event = callback_to_event(query)
        if event is None:
            self.stats.ignored += 1
            self._background(self.outbox.answer_button(str(query.id)))
            return
        if self.gate is not None and not await self.gate.is_member(event.sender.user_id):
            self.stats.gated += 1
            text = i18n.in_language(event.sender.language_code, GATE_NOTICE, link=self.gate.link)
            self._background(self.outbox.answer_button(event.query_id, text, alert=True))
            return
        await self._tell(event)

    async def on_pre_checkout(self, client: Any, query: Any) -> None:
        """Telegram waits at most 10 s for the answer: the buyer's chat actor gives it."""
        if not await self._enter():
            return
        self.stats.received += 1
        event = pre_checkout_to_event(query)
        await self.supervisor.tell(PAYMENTS_DESK, event)  # answered at once, not behind the buyer's turns

    async def _tell(self, event: ChatEvent) -> None:
        """Hand ``event`` to its chat's actor (a full inbox gets the "busy" notice, in the sender's language)."""
        try:
            if isinstance(event, Incoming):
                if not await self.supervisor.offer(event.chat_id, event):  # that chat is swamped: never block the others
                    self.supervisor.overflow(event)
                    self.stats.overflowed += 1
                    if self._busy_told.get(event.chat_id) is None:
                        self._busy_told.put(event.chat_id)
                        self._background(self._send_notice(event.chat_id, i18n.in_language(event.sender.language_code, BUSY_NOTICE), event.message_id,
                                                           event.thread_id))
                    return
                self._busy_told.pop(event.chat_id, None)
            else:
                await self.supervisor.tell(event.chat_id, event)
        except SupervisorClosed:
            self._drop()
            return
        self.stats.told += 1

    async def _on_migrated(self, message: Any) -> None:
        """A basic group became a supergroup (service messages in both chats; either one is enough,
        the move is idempotent): the old chat's actor moves its memory, then the supergroup's
        actor reloads (in the background: the dispatcher never waits for a move)."""
        if message.migrate_to_chat_id:
            old, new = message.chat.id, message.migrate_to_chat_id
        else:
            old, new = message.migrate_from_chat_id, message.chat.id
        title = getattr(message.chat, "title", None)
        await self._tell(Migrated(old, new, title))

        async def then_reload() -> None:
            await self.supervisor.wait_idle(old)
            await self.supervisor.tell(new, ConfigChanged(new))

        self._background(then_reload())

    # ------------------------------------------------------------------ transport-level notices

    def _background(self, coro: Awaitable[Any]) -> None:
        assert self.spawn is not None, "attach() gives the task group notices run in"
        self.spawn(_logged, coro)

    async def _on_added(self, chat_id: int, thread_id: int | None, lang: str | None = None) -> None:
        """The bot joined a group: if privacy mode hides messages from it, say once how to fix it (in
        ``lang``, the language of whoever added the bot)."""
        if chat_id in self._notified:
            return
        self._notified.put(chat_id)
        bot = self.bot
        assert bot is not None
        if self.can_read_all:
            return
        if await self.outbox.is_admin(chat_id, bot.user_id):
            return
        await self._send_notice(chat_id, i18n.in_language(lang, PRIVACY_NOTICE, username=bot.username or "your_bot"), None, thread_id)

    async def _send_notice(self, chat_id: int, text: str, reply_to: int | None, thread_id: int | None) -> None:
        await self.outbox.send_parts(chat_id, plain_parts(text), reply_to=reply_to, thread_id=thread_id)


async def _logged(coro: Awaitable[Any]) -> None:
    try:
        await coro
    except Exception:
        log.warning("telegram notice failed", exc_info=True)


__all__ = [
    "CAPTION_COMMANDS",
    "GATE_NOTICE",
    "PRIVACY_NOTICE",
    "ChannelGate",
    "RouterStats",
    "TelegramDownload",
    "UpdateRouter",
    "callback_to_event",
    "chat_type_of",
    "language_of",
    "media_of",
    "mentions_bot",
    "message_to_event",
    "parse_command",
    "pre_checkout_to_event",
    "sender_of",
    "thread_of",
]
