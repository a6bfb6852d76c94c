"""An offline Telegram for tests: a real ``pyrogram.Client`` (kurigram) whose network is replaced.

What is real: the client, its storage (in memory), ``start()``/``stop()``, ``handle_updates``, the
dispatcher and its update parsers, ``send_message``/``edit_message_text``/... building their raw
requests and parsing the results. What is fake: ``client.connect`` (primes the storage as a login
would: dc, auth key, bot user id), ``client.invoke`` (a recorder answering like Telegram does) and
``client.save_file`` (uploads go to a media DC session).

Pitfalls handled here (docs/design.md §10): raw objects built by hand are round-tripped through
``write()``/``TLObject.read()`` (so optional vectors are ``[]``, not ``None``); the client is built
inside the running loop; one dispatcher worker; ``settle()`` waits for the dispatcher with a marker
update handled by a raw handler in the last group; dispatcher exceptions are only logged, so tests
check ``pyrogram_errors(caplog)``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import anyio
import pyrogram
from pyrogram import raw, utils
from pyrogram.errors import RPCError
from pyrogram.handlers import RawUpdateHandler
from pyrogram.raw.core import TLObject

from transports.telegram.client import CLIENT_OPTIONS

BOT_ID = 7_000_000_001
MARKER_GROUP = 10**9


def roundtrip(obj: TLObject) -> TLObject:
    """Serialize and parse ``obj`` the way bytes from Telegram would be."""
    return TLObject.read(BytesIO(obj.write()))


def rpc_error(message: str, code: int = 400, function: type = raw.functions.messages.SendMessage) -> RPCError:
    """The pyrogram exception Telegram's ``code``/``message`` maps to (e.g. "ENTITY_BOUNDS_INVALID")."""
    try:
        RPCError.raise_it(raw.types.RpcError(error_code=code, error_message=message), function)
    except RPCError as e:
        return e
    raise AssertionError("raise_it did not raise")


def pyrogram_errors(caplog) -> list[logging.LogRecord]:
    """ERROR (and worse) records logged by pyrogram (the dispatcher only logs handler exceptions)."""
    return [r for r in caplog.records if r.name.startswith("pyrogram") and r.levelno >= logging.ERROR]


def utf16_offset(text: str, needle: str) -> tuple[int, int]:
    """(offset, length) of ``needle`` in ``text`` in UTF-16 code units."""
    i = text.index(needle)
    n = lambda s: len(s.encode("utf-16-le")) // 2  # noqa: E731
    return n(text[:i]), n(needle)


def failing_connect(h: TelegramHarness, failures: list[BaseException]) -> None:
    """Make ``h``'s client raise each of ``failures`` in turn on connect (Telegram unreachable or
    refusing), then connect normally."""
    real = h.client.connect

    async def connect() -> bool:
        if failures:
            raise failures.pop(0)
        return await real()

    h.client.connect = connect


class _NullSession:
    """Stands in for the MTProto session (``client.stop()`` stops it)."""

    async def stop(self) -> None:
        return None


@dataclass
class Sent:
    """A message the bot sent, as Telegram recorded it."""

    chat_id: int
    message_id: int
    text: str
    entities: list
    reply_to: int | None
    thread_id: int | None
    markup: Any
    kind: str = "text"  # "text" | "document" | "photo" | "invoice" | "rich" (send_rich_message: text is its Markdown)
    at: float = 0.0  # time.perf_counter() when Telegram got it


class _MediaSession:
    """A media-DC session that serves ``upload.GetFile`` from the harness's ``files``."""

    def __init__(self, harness: TelegramHarness) -> None:
        self.harness = harness

    async def invoke(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(query, raw.functions.upload.GetFile):
            raise AssertionError(f"the media session does not answer {type(query).__name__}")
        media_id = query.location.id
        self.harness.downloads.append(media_id)
        data = self.harness.files[media_id]
        part = data[query.offset: query.offset + query.limit]
        return roundtrip(raw.types.upload.File(type=raw.types.storage.FileUnknown(), mtime=0, bytes=part))

    async def stop(self) -> None:
        return None


class TelegramHarness:
    """Build with ``await TelegramHarness.create()`` inside the test's event loop.

    ``client``: the real pyrogram client (not started: ``serve()`` or ``start()`` starts it).
    ``calls``: every raw function the client invoked, in order. ``sent``/``edits``/``drafts``:
    what the bot sent; ``invoice_links``: the invoices it made links of; ``star_subscriptions``:
    the Stars subscriptions it cancelled or resumed. ``fail(Function, exc, ...)`` queues exceptions for the next calls of a
    function (e.g. ``FloodWait(value=3)``). ``members``: channel/group membership status by
    (chat_id, user_id) — "member" | "admin" | "creator" | "left" (missing = not a participant).
    """

    def __init__(self, *, bot_id: int = BOT_ID, bot_username: str = "kith_bot", bot_name: str = "Kith",
                 can_read_all: bool = False) -> None:
        self.bot_id = bot_id
        self.bot_username = bot_username
        self.bot = raw.types.User(id=bot_id, is_self=True, bot=True, access_hash=1, first_name=bot_name, username=bot_username,
                                  bot_chat_history=can_read_all, bot_info_version=1)
        self.users: dict[int, raw.types.User] = {bot_id: self.bot}
        self.chats: dict[int, Any] = {}  # raw id → raw Chat/Channel
        self.calls: list[TLObject] = []
        self.sent: list[Sent] = []
        self.edits: list[Sent] = []
        self.drafts: list[tuple[int, str]] = []
        self.ephemeral: list[Sent] = []  # ephemeral messages (only ``to[i]`` sees ``ephemeral[i]``)
        self.ephemeral_to: list[int] = []
        self.deleted: list[tuple[int, int]] = []  # (chat_id, message_id) the bot deleted
        self._ephemeral_ids = itertools.count(1)
        self.answers: list[tuple[str, str | None, bool]] = []
        self.pre_checkout_answers: list[tuple[str, bool, str | None]] = []
        self.invoice_links: list[Any] = []  # the InputMediaInvoice of each invoice link made (payments.ExportInvoice)
        self.star_subscriptions: list[tuple[int, str, bool]] = []  # (user id, charge id, restore) of each cancel/resume
        self.commands: list[str] = []
        self.uploads: list[tuple[str, bytes]] = []
        self.members: dict[tuple[int, int], str] = {}
        self.messages: dict[tuple[int, int], TLObject] = {}  # (chat_id, id) → raw message (for GetMessages)
        self.pending_difference: list[TLObject] = []  # raw messages GetDifference returns once (missed while offline)
        self.files: dict[int, bytes] = {}  # media id → the file's bytes (served by upload.GetFile)
        self.downloads: list[int] = []  # media ids of every upload.GetFile call, in order
        self._media_ids = itertools.count(5_000_000)
        self._errors: dict[type, deque] = defaultdict(deque)
        self._pts = 100
        self._channel_pts: dict[int, int] = defaultdict(lambda: 100)
        self._common_ids = itertools.count(1000)  # private chats and basic groups share one id sequence
        self._channel_ids: dict[int, itertools.count] = defaultdict(lambda: itertools.count(1000))
        self._query_ids = itertools.count(900_000)
        self._marker: object | None = None
        self._marker_seen: anyio.Event | None = None
        self.client: Any = None
        self.on_sent: Any = None  # called with each Sent (benchmarks)

    @classmethod
    async def create(cls, **kwargs: Any) -> TelegramHarness:
        h = cls(**kwargs)
        h.client = h._build()
        await anyio.sleep(0)  # add_handler registers from a task
        return h

    # ------------------------------------------------------------------ client

    def _build(self) -> Any:
        client = pyrogram.Client(
            name="kith-test",
            api_id=1,
            api_hash="0" * 32,
            bot_token=f"{self.bot_id}:test",
            in_memory=True,
            **CLIENT_OPTIONS,
        )
        client.invoke = self.invoke
        client.connect = self._connect
        client.save_file = self._save_file
        client.get_session = self._get_session
        client.add_handler(RawUpdateHandler(self._on_marker), MARKER_GROUP)
        return client

    async def _connect(self) -> bool:
        """What ``connect()`` + a completed bot login leave behind, without a network."""
        st = self.client.storage
        await st.open()
        await st.dc_id(2)
        await st.api_id(1)
        await st.test_mode(False)
        await st.auth_key(b"\x01" * 256)
        await st.date(int(time.time()))
        await st.user_id(self.bot_id)
        await st.is_bot(True)
        self.client.session = _NullSession()
        self.client.is_connected = True
        return True

    async def start(self) -> Any:
        """Start the client (for tests that do not go through ``serve``)."""
        await self.client.start()
        return self.client

    async def stop(self) -> None:
        if self.client.is_initialized:
            await self.client.stop()

    async def _save_file(self, path: Any, file_id: int | None = None, file_part: int = 0, progress: Any = None, progress_args: tuple = ()) -> Any:
        if path is None:
            return None
        data = path.getvalue() if isinstance(path, BytesIO) else open(path, "rb").read()
        self.uploads.append((getattr(path, "name", str(path)), data))
        return raw.types.InputFile(id=len(self.uploads), parts=1, name=getattr(path, "name", "file"), md5_checksum="")

    async def _get_session(self, dc_id: Any = None, is_media: bool = False, **kwargs: Any) -> Any:
        """The media DC session downloads go through: answers ``upload.GetFile`` from ``files``."""
        return _MediaSession(self)

    # ------------------------------------------------------------------ media (files users send)

    def _media_id(self, data: bytes) -> int:
        mid = next(self._media_ids)
        self.files[mid] = data
        return mid

    def document_media(self, data: bytes, file_name: str, mime_type: str, *, size: int | None = None,
                       attributes: list | None = None) -> Any:
        """A raw ``MessageMediaDocument``; ``size`` may claim more than ``len(data)`` (a big file)."""
        t = raw.types
        doc = t.Document(id=self._media_id(data), access_hash=1, file_reference=b"ref", date=int(time.time()), mime_type=mime_type,
                         size=size if size is not None else len(data), dc_id=2,
                         attributes=[t.DocumentAttributeFilename(file_name=file_name), *(attributes or [])])
        return t.MessageMediaDocument(document=doc)

    def voice_media(self, data: bytes, duration: int) -> Any:
        t = raw.types
        doc = t.Document(id=self._media_id(data), access_hash=1, file_reference=b"ref", date=int(time.time()),
                         mime_type="audio/ogg", size=len(data), dc_id=2,
                         attributes=[t.DocumentAttributeAudio(duration=duration, voice=True)])
        return t.MessageMediaDocument(document=doc)

    def photo_media(self, data: bytes, w: int = 800, h: int = 600) -> Any:
        t = raw.types
        photo = t.Photo(id=self._media_id(data), access_hash=1, file_reference=b"ref", date=int(time.time()), dc_id=2,
                        sizes=[t.PhotoSize(type="y", w=w, h=h, size=len(data))])
        return t.MessageMediaPhoto(photo=photo)

    def sticker_media(self, emoji: str = "😀") -> Any:
        t = raw.types
        doc = t.Document(id=self._media_id(b"RIFF0000WEBP"), access_hash=1, file_reference=b"ref", date=int(time.time()),
                         mime_type="image/webp", size=12, dc_id=2,
                         attributes=[t.DocumentAttributeSticker(alt=emoji, stickerset=t.InputStickerSetEmpty()),
                                     t.DocumentAttributeImageSize(w=512, h=512)])
        return t.MessageMediaDocument(document=doc)

    # ------------------------------------------------------------------ peers

    def user(self, user_id: int, first_name: str, last_name: str | None = None, username: str | None = None, *, bot: bool = False) -> raw.types.User:
        u = raw.types.User(id=user_id, access_hash=user_id * 7 + 1, first_name=first_name, last_name=last_name, username=username, bot=bot or None)
        self.users[user_id] = u
        return u

    def supergroup(self, raw_id: int, title: str, *, forum: bool = False, username: str | None = None) -> int:
        """A supergroup (a megagroup channel); returns its chat id (-100…)."""
        self.chats[raw_id] = raw.types.Channel(id=raw_id, title=title, photo=raw.types.ChatPhotoEmpty(), date=int(time.time()),
                                               access_hash=raw_id * 3 + 1, megagroup=True, forum=forum or None, username=username)
        return utils.get_channel_id(raw_id)

    def channel(self, raw_id: int, title: str, username: str) -> int:
        """A broadcast channel (for the membership gate); returns its chat id."""
        self.chats[raw_id] = raw.types.Channel(id=raw_id, title=title, photo=raw.types.ChatPhotoEmpty(), date=int(time.time()),
                                               access_hash=raw_id * 3 + 1, broadcast=True, username=username)
        return utils.get_channel_id(raw_id)

    def basic_group(self, raw_id: int, title: str) -> int:
        self.chats[raw_id] = raw.types.Chat(id=raw_id, title=title, photo=raw.types.ChatPhotoEmpty(), participants_count=3,
                                            date=int(time.time()), version=1)
        return -raw_id

    def _peer(self, chat_id: int) -> Any:
        if chat_id > 0:
            return raw.types.PeerUser(user_id=chat_id)
        if utils.get_peer_type(chat_id) == "channel":
            return raw.types.PeerChannel(channel_id=utils.get_channel_id(chat_id))
        return raw.types.PeerChat(chat_id=-chat_id)

    def _chat_id_of_input(self, peer: Any) -> int:
        if isinstance(peer, raw.types.InputPeerUser):
            return peer.user_id
        if isinstance(peer, raw.types.InputPeerChat):
            return -peer.chat_id
        if isinstance(peer, raw.types.InputPeerChannel):
            return utils.get_channel_id(peer.channel_id)
        if isinstance(peer, (raw.types.InputChannel,)):
            return utils.get_channel_id(peer.channel_id)
        if isinstance(peer, raw.types.InputPeerSelf):
            return self.bot_id
        raise AssertionError(f"unexpected peer {peer!r}")

    def _user_id_of_input(self, peer: Any) -> int:
        if isinstance(peer, (raw.types.InputPeerUser, raw.types.InputUser)):
            return peer.user_id
        if isinstance(peer, (raw.types.InputPeerSelf, raw.types.InputUserSelf)):
            return self.bot_id
        raise AssertionError(f"unexpected user peer {peer!r}")

    def _is_channel(self, chat_id: int) -> bool:
        return chat_id < 0 and utils.get_peer_type(chat_id) == "channel"

    def _next_id(self, chat_id: int) -> int:
        return next(self._channel_ids[chat_id]) if self._is_channel(chat_id) else next(self._common_ids)

    def _new_update(self, chat_id: int, message: Any) -> Any:
        if self._is_channel(chat_id):
            self._channel_pts[chat_id] += 1
            return raw.types.UpdateNewChannelMessage(message=message, pts=self._channel_pts[chat_id], pts_count=1)
        self._pts += 1
        return raw.types.UpdateNewMessage(message=message, pts=self._pts, pts_count=1)

    def _peers_of(self, chat_id: int, *user_ids: int) -> tuple[list, list]:
        users = [self.users[u] for u in {self.bot_id, *user_ids} if u in self.users]
        chats = []
        if chat_id < 0:
            raw_id = utils.get_channel_id(chat_id) if self._is_channel(chat_id) else -chat_id
            chats.append(self.chats[raw_id])
        return users, chats

    # ------------------------------------------------------------------ feeding updates

    def message(self, chat_id: int, from_id: int, text: str, *, entities: list | None = None, reply_to: int | None = None,
                topic: int | None = None, message_id: int | None = None, out: bool = False, date: int | None = None,
                media: Any = None) -> raw.types.Message:
        """A raw message in ``chat_id`` from ``from_id`` (registered as known for GetMessages); with
        ``media`` (``document_media`` …) ``text`` is its caption."""
        mid = message_id if message_id is not None else self._next_id(chat_id)
        header = None
        if reply_to is not None or topic is not None:
            header = raw.types.MessageReplyHeader(
                reply_to_msg_id=reply_to if reply_to is not None else topic,
                reply_to_top_id=topic if (topic is not None and reply_to is not None and reply_to != topic) else None,
                forum_topic=True if topic is not None else None,
            )
        peer = raw.types.PeerUser(user_id=from_id) if chat_id > 0 and not out else self._peer(chat_id)
        msg = raw.types.Message(
            id=mid,
            peer_id=peer,
            from_id=raw.types.PeerUser(user_id=from_id),
            date=date or int(time.time()),
            message=text,
            out=out or None,
            entities=entities or None,
            reply_to=header,
            media=media,
        )
        self.messages[(chat_id, mid)] = msg
        return msg

    def packet(self, *messages_or_updates: Any, chat_id: int | None = None, user_ids: tuple[int, ...] = ()) -> bytes:
        """The bytes of a ``raw.types.Updates`` carrying raw messages (wrapped in new-message updates,
        with their users and chats) or raw updates (peers of ``chat_id`` and ``user_ids``)."""
        updates, users, chats = [], {}, {}
        for item in messages_or_updates:
            if isinstance(item, (raw.types.Message, raw.types.MessageService)):
                cid = utils.get_peer_id(item.peer_id)
                from_id = item.from_id.user_id if isinstance(item.from_id, raw.types.PeerUser) else None
                extra = tuple(getattr(item.action, "users", ()) or ()) if isinstance(item, raw.types.MessageService) else ()
                u, c = self._peers_of(cid, *(x for x in (from_id, *extra) if x))
                updates.append(self._new_update(cid, item))
            else:
                u, c = self._peers_of(chat_id, *user_ids) if chat_id is not None else ([self.bot], [])
                updates.append(item)
            users.update({x.id: x for x in u})
            chats.update({x.id: x for x in c})
        batch = raw.types.Updates(updates=updates, users=list(users.values()), chats=list(chats.values()), date=int(time.time()), seq=0)
        return batch.write()

    async def receive(self, packet: bytes) -> None:
        """Parse ``packet`` as the session would and hand it to ``client.handle_updates``."""
        await self.client.handle_updates(TLObject.read(BytesIO(packet)))

    async def deliver(self, *messages_or_updates: Any, chat_id: int | None = None, user_ids: tuple[int, ...] = ()) -> None:
        """Feed raw messages (wrapped in new-message updates) or raw updates through ``handle_updates``."""
        await self.receive(self.packet(*messages_or_updates, chat_id=chat_id, user_ids=user_ids))

    async def private(self, user: raw.types.User, text: str, **kw: Any) -> int:
        """A private message from ``user`` to the bot; returns its message id."""
        msg = self.message(user.id, user.id, text, **kw)
        await self.deliver(msg)
        return msg.id

    async def group(self, chat_id: int, user: raw.types.User, text: str, **kw: Any) -> int:
        """A message from ``user`` in group ``chat_id``; returns its message id."""
        msg = self.message(chat_id, user.id, text, **kw)
        await self.deliver(msg)
        return msg.id

    async def added_to_group(self, chat_id: int, by: raw.types.User, *user_ids: int) -> int:
        """The service message "``by`` added ``user_ids`` (default: the bot)" in ``chat_id``."""
        mid = self._next_id(chat_id)
        msg = raw.types.MessageService(
            id=mid, peer_id=self._peer(chat_id), from_id=raw.types.PeerUser(user_id=by.id), date=int(time.time()),
            action=raw.types.MessageActionChatAddUser(users=list(user_ids or (self.bot_id,))),
        )
        await self.deliver(msg)
        return mid

    async def press(self, user: raw.types.User, chat_id: int, message_id: int, data: str) -> str:
        """The user presses an inline button with ``data`` under message ``message_id``; returns the query id."""
        qid = next(self._query_ids)
        upd = raw.types.UpdateBotCallbackQuery(query_id=qid, user_id=user.id, peer=self._peer(chat_id), msg_id=message_id,
                                               chat_instance=chat_id * 31, data=data.encode())
        await self.deliver(upd, chat_id=chat_id, user_ids=(user.id,))
        return str(qid)

    async def pre_checkout(self, user: raw.types.User, payload: str, amount: int, currency: str = "XTR") -> str:
        """The user confirms paying an invoice: Telegram asks the bot (answer within 10 s); returns the query id."""
        qid = next(self._query_ids)
        upd = raw.types.UpdateBotPrecheckoutQuery(query_id=qid, user_id=user.id, payload=payload.encode(), currency=currency, total_amount=amount)
        await self.deliver(upd, chat_id=user.id, user_ids=(user.id,))
        return str(qid)

    async def paid(self, user: raw.types.User, chat_id: int, payload: str, amount: int, charge_id: str, currency: str = "XTR", *,
                   until: int | None = None, first: bool = False, renewal: bool = False) -> int:
        """The service message of a successful payment in ``chat_id``; returns its message id. A Stars
        subscription's payment: ``until`` (its expiration, Unix time) and ``first`` (the payment that
        starts it: ``recurring_init``) or ``renewal`` (``recurring_used``)."""
        mid = self._next_id(chat_id)
        msg = raw.types.MessageService(
            id=mid, peer_id=raw.types.PeerUser(user_id=user.id) if chat_id > 0 else self._peer(chat_id),
            from_id=raw.types.PeerUser(user_id=user.id), date=int(time.time()),
            action=raw.types.MessageActionPaymentSentMe(currency=currency, total_amount=amount, payload=payload.encode(),
                                                        charge=raw.types.PaymentCharge(id=charge_id, provider_charge_id=""),
                                                        subscription_until_date=until, recurring_init=first or None,
                                                        recurring_used=renewal or None),
        )
        await self.deliver(msg)
        return mid

    # ------------------------------------------------------------------ waiting

    async def _on_marker(self, client: Any, update: Any, users: Any, chats: Any) -> None:
        if update is self._marker and self._marker_seen is not None:
            self._marker_seen.set()

    async def dispatched(self, timeout: float = 10.0) -> None:
        """Wait until every update fed so far went through the dispatcher (handlers returned)."""
        self._marker = raw.types.UpdateConfig()
        self._marker_seen = anyio.Event()
        self.client.dispatcher.updates_queue.put_nowait((self._marker, {}, {}))
        with anyio.fail_after(timeout):
            await self._marker_seen.wait()

    async def settle(self, supervisor: Any = None, timeout: float = 30.0) -> None:
        """Wait for the dispatcher, then for every chat actor to go idle (and once more, for
        events the turns caused)."""
        with anyio.fail_after(timeout):
            for _ in range(2):
                await self.dispatched(timeout)
                if supervisor is not None:
                    await supervisor.wait_all_idle()
                await anyio.sleep(0)

    async def until(self, condition: Any, timeout: float = 10.0) -> None:
        """Poll ``condition()`` until true (for work done in background tasks)."""
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(0.01)

    # ------------------------------------------------------------------ the fake Telegram

    def fail(self, function: type, *errors: BaseException) -> None:
        """The next calls of ``function`` (a raw function class) raise ``errors`` in order."""
        self._errors[function].extend(errors)

    def count(self, function: type) -> int:
        return sum(1 for c in self.calls if isinstance(c, function))

    async def invoke(self, query: TLObject, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(query, raw.functions.messages.GetMessages):  # pyrogram reads its Vector<InputMessage> as longs
            query = roundtrip(query)
        self.calls.append(query)
        errors = self._errors.get(type(query))
        if errors:
            raise errors.popleft()
        result = self._answer(query)
        if isinstance(result, TLObject):
            result = roundtrip(result)
        await self.client.fetch_peers(getattr(result, "users", []))
        await self.client.fetch_peers(getattr(result, "chats", []))
        return result

    def _answer(self, q: TLObject) -> Any:
        f, t = raw.functions, raw.types
        now = int(time.time())
        if isinstance(q, f.updates.GetState):
            return t.updates.State(pts=self._pts, qts=0, date=now, seq=0, unread_count=0)
        if isinstance(q, f.users.GetFullUser):
            uid = self._user_id_of_input(q.id)
            full = t.UserFull(id=uid, settings=t.PeerSettings(), notify_settings=t.PeerNotifySettings(), common_chats_count=0)
            return t.users.UserFull(full_user=full, chats=[], users=[self.users[uid]])
        if isinstance(q, f.users.GetUsers):
            ids = [self._user_id_of_input(p) for p in q.id]
            if not all(i in self.users for i in ids):
                raise rpc_error("PEER_ID_INVALID", function=f.users.GetUsers)
            return [self.users[i] for i in ids]
        if isinstance(q, f.updates.GetDifference):
            if not self.pending_difference:
                return t.updates.DifferenceEmpty(date=now, seq=0)
            msgs, self.pending_difference = self.pending_difference, []
            ids = {m.from_id.user_id for m in msgs if isinstance(m.from_id, t.PeerUser)}
            self._pts += len(msgs)
            return t.updates.Difference(new_messages=msgs, new_encrypted_messages=[], other_updates=[], chats=[],
                                        users=[self.users[i] for i in ids | {self.bot_id}],
                                        state=t.updates.State(pts=self._pts, qts=0, date=now, seq=0, unread_count=0))
        if isinstance(q, f.updates.GetChannelDifference):
            return t.updates.ChannelDifferenceEmpty(pts=self._channel_pts[self._chat_id_of_input(q.channel)], final=True)
        if isinstance(q, (f.messages.SendMessage, f.messages.SendMedia)):
            return self._send(q)
        if isinstance(q, f.messages.EditMessage):
            return self._edit(q)
        if isinstance(q, (f.messages.DeleteMessages, f.channels.DeleteMessages)):
            chat_id = self._chat_id_of_input(q.channel) if isinstance(q, f.channels.DeleteMessages) else None
            self.deleted.extend((chat_id if chat_id is not None else 0, i) for i in q.id)
            self._pts += len(q.id)
            return t.messages.AffectedMessages(pts=self._pts, pts_count=len(q.id))
        if isinstance(q, f.ephemeral.SendMessage):
            return self._send_ephemeral(q)
        if isinstance(q, f.messages.SetTyping):
            action = q.action
            if isinstance(action, t.SendMessageTextDraftAction):
                self.drafts.append((self._chat_id_of_input(q.peer), action.text.text))
            return True
        if isinstance(q, f.messages.SetBotPrecheckoutResults):
            self.pre_checkout_answers.append((str(q.query_id), bool(q.success), q.error))
            return True
        if isinstance(q, f.payments.ExportInvoice):
            self.invoice_links.append(q.invoice_media)
            return t.payments.ExportedInvoice(url=f"https://t.me/$kith-invoice-{len(self.invoice_links)}")
        if isinstance(q, f.payments.BotCancelStarsSubscription):
            self.star_subscriptions.append((self._user_id_of_input(q.user_id), q.charge_id, bool(q.restore)))
            return True
        if isinstance(q, f.messages.SetBotCallbackAnswer):
            self.answers.append((str(q.query_id), q.message, bool(q.alert)))
            return True
        if isinstance(q, f.bots.SetBotCommands):
            self.commands = [c.command for c in q.commands]
            return True
        if isinstance(q, f.contacts.ResolveUsername):
            for raw_id, c in self.chats.items():
                if getattr(c, "username", None) and c.username.lower() == q.username.lower():
                    return t.contacts.ResolvedPeer(peer=t.PeerChannel(channel_id=raw_id), chats=[c], users=[])
            for u in self.users.values():
                if u.username and u.username.lower() == q.username.lower():
                    return t.contacts.ResolvedPeer(peer=t.PeerUser(user_id=u.id), chats=[], users=[u])
            raise rpc_error("USERNAME_NOT_OCCUPIED", function=f.contacts.ResolveUsername)
        if isinstance(q, f.channels.GetParticipant):
            chat_id = self._chat_id_of_input(q.channel)
            uid = self._user_id_of_input(q.participant)
            status = self.members.get((chat_id, uid))
            if status in (None, "left"):
                raise rpc_error("USER_NOT_PARTICIPANT", function=f.channels.GetParticipant)
            part = {
                "member": lambda: t.ChannelParticipant(user_id=uid, date=now),
                "admin": lambda: t.ChannelParticipantAdmin(user_id=uid, promoted_by=self.bot_id, date=now, admin_rights=t.ChatAdminRights()),
                "creator": lambda: t.ChannelParticipantCreator(user_id=uid, admin_rights=t.ChatAdminRights()),
            }[status]()
            users = [self.users[x] for x in {uid, self.bot_id} if x in self.users]
            return t.channels.ChannelParticipant(participant=part, chats=[self.chats[utils.get_channel_id(chat_id)]], users=users)
        if isinstance(q, f.channels.GetChannels):
            found = [self.chats[c.channel_id] for c in q.id if c.channel_id in self.chats]
            if not found:
                raise rpc_error("CHANNEL_INVALID", function=f.channels.GetChannels)
            return t.messages.Chats(chats=found)
        if isinstance(q, f.messages.GetFullChat):
            chat_id = -q.chat_id
            parts = []
            for (cid, uid), status in self.members.items():
                if cid != chat_id or status == "left":
                    continue
                if status == "creator":
                    parts.append(t.ChatParticipantCreator(user_id=uid))
                elif status == "admin":
                    parts.append(t.ChatParticipantAdmin(user_id=uid, inviter_id=self.bot_id, date=now))
                else:
                    parts.append(t.ChatParticipant(user_id=uid, inviter_id=self.bot_id, date=now))
            full = t.ChatFull(id=q.chat_id, about="", participants=t.ChatParticipants(chat_id=q.chat_id, participants=parts, version=1),
                              notify_settings=t.PeerNotifySettings())
            users = [self.users[uid] for (cid, uid) in self.members if cid == chat_id and uid in self.users]
            return t.messages.ChatFull(full_chat=full, chats=[self.chats[q.chat_id]], users=users)
        if isinstance(q, (f.messages.GetMessages, f.channels.GetMessages)):
            chat_id = self._chat_id_of_input(q.channel) if isinstance(q, f.channels.GetMessages) else None
            found = []
            for ref in q.id:
                if isinstance(ref, t.InputMessageID):
                    key = next((k for k in self.messages if k[1] == ref.id and (chat_id is None or k[0] == chat_id)), None)
                    if key is not None:
                        found.append(self.messages[key])
            users = [u for u in self.users.values()]
            return t.messages.Messages(messages=found, topics=[], chats=list(self.chats.values()), users=users)
        raise AssertionError(f"the harness does not answer {type(q).__name__}")

    def _send(self, q: Any) -> Any:
        t = raw.types
        chat_id = self._chat_id_of_input(q.peer)
        mid = self._next_id(chat_id)
        reply = q.reply_to if isinstance(q.reply_to, t.InputReplyToMessage) else None
        reply_to = reply.reply_to_msg_id if reply else None
        thread_id = reply.top_msg_id if reply else None
        text = q.message
        entities = list(q.entities or [])
        kind = "text"
        rich = getattr(q, "rich_message", None)
        if rich is not None:  # send_rich_message: the Markdown (or HTML) Telegram renders
            text, kind = getattr(rich, "markdown", None) or getattr(rich, "html", ""), "rich"
        if isinstance(q, raw.functions.messages.SendMedia):
            kind = ("invoice" if isinstance(q.media, t.InputMediaInvoice)
                    else "photo" if isinstance(q.media, t.InputMediaUploadedPhoto) else "document")
            if kind == "invoice":
                text = q.media.title
        self.sent.append(Sent(chat_id, mid, text, entities, reply_to, thread_id, q.reply_markup, kind, time.perf_counter()))
        if self.on_sent is not None:
            self.on_sent(self.sent[-1])
        now = int(time.time())
        header = t.MessageReplyHeader(reply_to_msg_id=reply_to, reply_to_top_id=thread_id if thread_id != reply_to else None,
                                      forum_topic=True if thread_id else None) if reply_to else None
        msg = t.Message(id=mid, peer_id=self._peer(chat_id), from_id=t.PeerUser(user_id=self.bot_id), date=now, message=text, out=True,
                        entities=entities or None, reply_to=header, reply_markup=q.reply_markup)
        self.messages[(chat_id, mid)] = msg
        if chat_id > 0 and kind in ("text", "rich"):
            self._pts += 1
            return t.UpdateShortSentMessage(id=mid, pts=self._pts, pts_count=1, date=now, out=True, entities=entities or None)
        users, chats = self._peers_of(chat_id, *([chat_id] if chat_id > 0 else []))
        return t.Updates(updates=[t.UpdateMessageID(id=mid, random_id=q.random_id), self._new_update(chat_id, msg)],
                         users=users, chats=chats, date=now, seq=0)

    def _send_ephemeral(self, q: Any) -> Any:
        """``ephemeral.sendMessage``: recorded in ``ephemeral``/``ephemeral_to`` (the receiver must be an
        ``InputUser``, as the schema says), answered with an ``UpdateNewEphemeralMessage``."""
        t = raw.types
        if not isinstance(q.receiver_id, t.InputUser):
            raise rpc_error("INPUT_CONSTRUCTOR_INVALID", function=raw.functions.ephemeral.SendMessage)
        chat_id = self._chat_id_of_input(q.peer)
        reply_to = getattr(q.reply_to, "reply_to_msg_id", None)
        thread_id = getattr(q.reply_to, "top_msg_id", None)
        mid = next(self._ephemeral_ids)
        self.ephemeral.append(Sent(chat_id, mid, q.message, list(q.entities or []), reply_to, thread_id, None, at=time.perf_counter()))
        self.ephemeral_to.append(q.receiver_id.user_id)
        msg = t.EphemeralMessage(id=mid, from_id=t.PeerUser(user_id=self.bot_id), receiver_id=q.receiver_id.user_id,
                                 date=int(time.time()), message=q.message, out=True, peer_id=self._peer(chat_id),
                                 entities=q.entities or None)
        users, chats = self._peers_of(chat_id, q.receiver_id.user_id)
        return t.Updates(updates=[t.UpdateNewEphemeralMessage(message=msg)], users=users, chats=chats, date=int(time.time()), seq=0)

    def _edit(self, q: Any) -> Any:
        t = raw.types
        chat_id = self._chat_id_of_input(q.peer)
        old = self.messages.get((chat_id, q.id))
        if old is None:
            raise rpc_error("MESSAGE_ID_INVALID", function=raw.functions.messages.EditMessage)
        if old.message == q.message and list(old.entities or []) == list(q.entities or []) and q.reply_markup is None:
            raise rpc_error("MESSAGE_NOT_MODIFIED", function=raw.functions.messages.EditMessage)
        entities = list(q.entities or [])
        self.edits.append(Sent(chat_id, q.id, q.message, entities, None, None, q.reply_markup))
        msg = t.Message(id=q.id, peer_id=old.peer_id, from_id=old.from_id, date=old.date, message=q.message, out=True,
                        entities=entities or None, reply_to=old.reply_to, reply_markup=q.reply_markup, edit_date=int(time.time()))
        self.messages[(chat_id, q.id)] = msg
        if self._is_channel(chat_id):
            self._channel_pts[chat_id] += 1
            upd = t.UpdateEditChannelMessage(message=msg, pts=self._channel_pts[chat_id], pts_count=1)
        else:
            self._pts += 1
            upd = t.UpdateEditMessage(message=msg, pts=self._pts, pts_count=1)
        users, chats = self._peers_of(chat_id, *([chat_id] if chat_id > 0 else []))
        return t.Updates(updates=[upd], users=users, chats=chats, date=int(time.time()), seq=0)

    # ------------------------------------------------------------------ views

    def texts(self, chat_id: int | None = None) -> list[str]:
        """Texts the bot sent (final state after edits), in order, optionally in one chat."""
        final = {(e.chat_id, e.message_id): e.text for e in self.edits}
        return [final.get((s.chat_id, s.message_id), s.text) for s in self.sent if chat_id is None or s.chat_id == chat_id]

    def replies_to(self, chat_id: int, message_id: int) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == chat_id and s.reply_to == message_id]


@asynccontextmanager
async def bot_served(cfg: Any, data_dir: Any, model: Any, **serve_kw: Any) -> AsyncIterator[tuple[TelegramHarness, Any]]:
    """The whole bot (``operations.bot.serve`` with ``cfg``, ``data_dir`` and the embedding ``model``)
    on a harness client; yields ``(harness, app)`` and stops the bot on leaving."""
    from operations.bot import serve  # the top layer: imported only by the tests that serve the bot

    h = await TelegramHarness.create()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        app = await tg.start(functools.partial(serve, h.client, cfg, data_dir, model=model, stop=stop, **serve_kw))
        try:
            yield h, app
        finally:
            stop.set()
