"""Events an actor handles: frozen dataclasses, dispatched with ``match``. No dicts cross actors.

Transports (Telegram, console, replay) build these from their updates and ``tell`` the supervisor.
All dates are timezone-aware UTC; ids are Telegram's (64-bit ints).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import anyio

from memory.markers import marker
from memory.types import CleanupRecord

T = TypeVar("T")

__all__ = [
    "GROUP_TYPES",
    "MEDIA_KINDS",
    "PAYMENTS_DESK",
    "PRIVATE",
    "ButtonPress",
    "Call",
    "CallResult",
    "CapacityCleaned",
    "ChatEvent",
    "CommandEvent",
    "ConfigChanged",
    "Deleted",
    "Download",
    "Edited",
    "Incoming",
    "Media",
    "Migrated",
    "PaymentEvent",
    "PreCheckout",
    "Sender",
    "is_group",
    "media_marker",
    "with_caption",
]

PRIVATE = "private"
PAYMENTS_DESK = 0  # the supervisor key that answers pre-checkout queries (Telegram never uses chat id 0):
# Telegram wants an answer within 10 s, so they must not queue behind a turn of the buyer's chat
GROUP_TYPES = frozenset({"group", "supergroup"})


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent an update. name: display name used in prompts; username without '@'.
    language_code: the IETF tag of the user's Telegram app language (``ru``, ``en-GB``), when Telegram
    sends it (Bot API ``User.language_code``); the interface speaks it (``i18n``)."""

    user_id: int
    name: str
    username: str | None = None
    is_bot: bool = False
    language_code: str | None = None


MEDIA_KINDS = ("photo", "document", "voice", "audio", "video_note", "video", "animation", "sticker")

Download = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Media:
    """A file attached to a message, described before anything is downloaded.

    kind: one of ``MEDIA_KINDS``. mime_type: as the sender's client declared it (None if unknown).
    size: bytes (None if Telegram did not say). file_name: documents and audio files; None for photos
    and voice notes. duration_s: voice, audio, video notes and videos. emoji: a sticker's emoji.
    download: the lazy handle — awaiting it fetches the file's bytes (raises ``actors.errors.MediaUnavailable``);
    the actor calls it only after deciding (tier, size, kind). Not compared (two events for the same
    message are equal whatever the handle).
    """

    kind: str
    mime_type: str | None = None
    size: int | None = None
    file_name: str | None = None
    duration_s: float | None = None
    emoji: str | None = None
    download: Download | None = field(default=None, compare=False, repr=False)

    @property
    def mb(self) -> float:
        """The size in MiB (0 when unknown)."""
        return (self.size or 0) / (1024 * 1024)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message in a chat: text, or a file (``media``) with its caption as ``text``.

    chat_type: ``"private"`` | ``"group"`` | ``"supergroup"`` | ``"channel"``.
    mentions_bot / reply_to_bot: trigger facts the transport knows (entities, the replied message's sender).
    respond: force the decision (True/False); None lets the chat's triggers decide (docs/design.md §3.2).
    reply_media: the file of the message this one replies to (its lazy handle downloads it), when the
    transport has it — a photo to edit ("edit this: …").
    """

    chat_id: int
    chat_type: str
    message_id: int
    sender: Sender
    text: str
    date: datetime
    reply_to: int | None = None
    reply_to_bot: bool = False
    thread_id: int | None = None
    mentions_bot: bool = False
    chat_title: str | None = None
    respond: bool | None = None
    media: Media | None = None
    reply_media: Media | None = None


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """A bot command such as ``/memory`` (``command`` without slash or @botname; ``args`` the rest).

    media: the command message's own file (a photo captioned ``/image edit …``: the mask).
    reply_media: the file of the message the command replies to (the photo ``/image edit`` edits).
    """

    chat_id: int
    chat_type: str
    message_id: int
    sender: Sender
    command: str
    args: str
    date: datetime
    thread_id: int | None = None
    chat_title: str | None = None
    reply_to_user: int | None = None  # the command replies to a message of this user (e.g. /admin grant premium)
    media: Media | None = None
    reply_media: Media | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    """An inline-keyboard press: ``data`` is the button's callback data; ``query_id`` to answer it."""

    chat_id: int
    message_id: int
    sender: Sender
    data: str
    query_id: str


@dataclass(frozen=True, slots=True)
class Edited:
    """A member edited message ``message_id``: ``text`` is its new text (or caption)."""

    chat_id: int
    message_id: int
    sender: Sender
    text: str
    date: datetime


@dataclass(frozen=True, slots=True)
class Deleted:
    """Messages deleted in the chat (Telegram tells a bot only for supergroups and channels)."""

    chat_id: int
    message_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConfigChanged:
    """The chat's settings changed outside the actor (e.g. via the CLI): reload them."""

    chat_id: int


@dataclass(frozen=True, slots=True)
class PreCheckout:
    """Telegram asks whether to accept a payment (answer within 10 s). Routed to the buyer's private chat.

    total_amount: in the currency's smallest unit (Stars for XTR). payload: the invoice payload.
    """

    chat_id: int
    sender: Sender
    query_id: str
    payload: str
    total_amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """A successful payment (``charge_id`` = telegram_payment_charge_id; the same charge may arrive twice).

    A Telegram Stars subscription's payment has ``subscription_until`` (its
    ``subscription_expiration_date``, UTC); ``renewal``: it renews one (``is_recurring`` and not
    ``is_first_recurring``) rather than starting it."""

    chat_id: int
    message_id: int
    sender: Sender
    charge_id: str
    payload: str
    total_amount: int
    currency: str
    date: datetime
    subscription_until: datetime | None = None
    renewal: bool = False


@dataclass(frozen=True, slots=True)
class Migrated:
    """Basic group ``chat_id`` was upgraded to supergroup ``to_chat_id`` (Telegram's
    ``migrate_to_chat_id``): its memory, settings, subscription and keys move there. Told to the old
    chat, after everything it received before."""

    chat_id: int
    to_chat_id: int
    title: str | None = None


class CallResult(Generic[T]):
    """Where a ``Call``'s outcome lands: ``await result.wait()`` returns the work's value (a ``T``)
    or raises its exception."""

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    async def run(self, work: Callable[[Any], Awaitable[T]], actor: Any) -> None:
        try:
            self._value = await work(actor)
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set by run() before _done


@dataclass(frozen=True, slots=True, eq=False)
class Call:
    """Work for a chat's actor from outside Telegram (e.g. ``kith memory forget`` while the bot runs),
    run between the chat's events so that its context and the stores stay in step:
    ``await work(actor)``, the outcome delivered to ``result`` (``Supervisor.call``)."""

    chat_id: int
    work: Callable[[Any], Awaitable[Any]]
    result: CallResult[Any]


@dataclass(frozen=True, slots=True)
class CapacityCleaned:
    """The capacity cleanup removed memories or messages of this chat (or, in a member's private
    chat, of theirs in any chat): ``records`` say what and why (``memory.types.CleanupRecord``)."""

    chat_id: int
    records: tuple[CleanupRecord, ...]


ChatEvent = (Incoming | CommandEvent | ButtonPress | ConfigChanged | PreCheckout | PaymentEvent | Edited | Deleted | Migrated | Call
             | CapacityCleaned)


def media_marker(media: Media) -> str:
    """The marker a message with ``media`` is stored under (``memory.markers.marker``): ``[photo]``,
    ``[file report.pdf]``, ``[voice 0:42]``, ``[sticker 😀]``."""
    return marker(media.kind, file_name=media.file_name, duration_s=media.duration_s, emoji=media.emoji)


def with_caption(media: Media, caption: str) -> str:
    """The stored text of a message with ``media`` and ``caption``: the marker, then the caption."""
    caption = caption.strip()
    return f"{media_marker(media)} {caption}" if caption else media_marker(media)


def is_group(chat_type: str) -> bool:
    """True for Telegram groups and supergroups."""
    return chat_type in GROUP_TYPES
