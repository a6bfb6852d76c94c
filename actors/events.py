"""Events an actor handles: frozen dataclasses, dispatched with ``match``. No dicts cross actors.

Transports (Telegram, console, replay) build these from their updates and ``tell`` the supervisor.
All dates are timezone-aware UTC; ids are Telegram's (64-bit ints).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

PRIVATE = "private"
PAYMENTS_DESK = 0  # the supervisor key that answers pre-checkout queries (Telegram never uses chat id 0):
# Telegram wants an answer within 10 s, so they must not queue behind a turn of the buyer's chat
GROUP_TYPES = frozenset({"group", "supergroup"})


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sent an update. name: display name used in prompts; username without '@'."""

    user_id: int
    name: str
    username: str | None = None
    is_bot: bool = False


@dataclass(frozen=True, slots=True)
class Incoming:
    """A text message in a chat (captions and media-derived text included).

    chat_type: ``"private"`` | ``"group"`` | ``"supergroup"`` | ``"channel"``.
    mentions_bot / reply_to_bot: trigger facts the transport knows (entities, the replied message's sender).
    respond: force the decision (True/False); None lets the chat's triggers decide (DESIGN §3.2).
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


@dataclass(frozen=True, slots=True)
class CommandEvent:
    """A bot command such as ``/memory`` (``command`` without slash or @botname; ``args`` the rest)."""

    chat_id: int
    chat_type: str
    message_id: int
    sender: Sender
    command: str
    args: str
    date: datetime
    thread_id: int | None = None
    chat_title: str | None = None


@dataclass(frozen=True, slots=True)
class ButtonPress:
    """An inline-keyboard press: ``data`` is the button's callback data; ``query_id`` to answer it."""

    chat_id: int
    message_id: int
    sender: Sender
    data: str
    query_id: str


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
    """A successful payment (``charge_id`` = telegram_payment_charge_id; the same charge may arrive twice)."""

    chat_id: int
    message_id: int
    sender: Sender
    charge_id: str
    payload: str
    total_amount: int
    currency: str
    date: datetime


ChatEvent = Incoming | CommandEvent | ButtonPress | ConfigChanged | PreCheckout | PaymentEvent


def is_group(chat_type: str) -> bool:
    """True for Telegram groups and supergroups."""
    return chat_type in GROUP_TYPES
