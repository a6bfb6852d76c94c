"""The Outbox: how an actor speaks. Telegram, console and replay each implement it.

The actor never imports a transport. Texts are plain Markdown as the model wrote it; a transport
renders and splits it for its medium (Telegram limit: 4096 UTF-16 code units per message).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from tiers.payments import Invoice

__all__ = ["Button", "Outbox", "ReplyStream", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the bot sent: its id in the chat and its date (UTC). A split reply gives its first part."""

    message_id: int
    date: datetime


@dataclass(frozen=True, slots=True)
class Button:
    """An inline-keyboard button: ``text`` shown, ``data`` returned in ``ButtonPress.data`` (≤ 64 bytes);
    with ``url``, a button that opens that link instead (``data`` unused)."""

    text: str
    data: str
    url: str | None = None


@runtime_checkable
class ReplyStream(Protocol):
    """A reply being generated: progress shown with ``update``, the final text with ``finish``.

    A stream the user can stop (Telegram's Stop button on a draft) also has ``stopped``, an
    ``anyio.Event`` set when they press it: the turn then ends the generation and finishes with what
    was generated (not a Protocol member: other transports' streams simply have none)."""

    async def update(self, text: str) -> None:
        """The whole text so far (not a delta). Transports throttle as their medium needs."""

    async def finish(self, text: str) -> Sent:
        """Show the final text (formatted, split if long) and return the first message sent."""


@runtime_checkable
class Outbox(Protocol):
    async def send(self, chat_id: int, text: str, *, reply_to: int | None = None, thread_id: int | None = None) -> Sent: ...

    async def edit(self, chat_id: int, message_id: int, text: str) -> None: ...

    async def send_ephemeral(self, chat_id: int, user_id: int, text: str, *, reply_to: int | None = None,
                             thread_id: int | None = None) -> Sent:
        """Send ``text`` in group ``chat_id`` so that only member ``user_id`` sees it (Telegram's
        ephemeral messages), where the medium allows; otherwise (a private chat, a transport without
        them, a refusal) it is ``send`` — a normal reply everyone in the chat sees."""
        ...

    async def send_buttons(
        self, chat_id: int, text: str, rows: Sequence[Sequence[Button]], *, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent: ...

    async def answer_button(self, query_id: str, text: str | None = None, *, alert: bool = False) -> None: ...

    async def send_document(
        self, chat_id: int, filename: str, data: bytes, *, caption: str | None = None, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent: ...

    async def send_photo(
        self, chat_id: int, data: bytes, *, caption: str | None = None, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        """Send an image (PNG/JPEG/WebP bytes) as a photo; Telegram caption limit: 1024 UTF-16 units."""
        ...

    async def stream(self, chat_id: int, *, reply_to: int | None = None, thread_id: int | None = None) -> ReplyStream: ...

    async def send_invoice(self, chat_id: int, invoice: Invoice, *, reply_to: int | None = None, thread_id: int | None = None) -> Sent:
        """Send a Telegram invoice (``tiers.payments.Invoice``: title, description, payload, currency, prices)."""
        ...

    async def answer_pre_checkout(self, query_id: str, ok: bool, error: str | None = None) -> None:
        """Accept (ok) or refuse (with ``error`` shown to the buyer) a pre-checkout query."""
        ...

    async def refund_star_payment(self, user_id: int, charge_id: str) -> None:
        """Give ``user_id`` back the Telegram Stars of payment ``charge_id`` (Telegram's
        ``refundStarPayment``). raises RefundRefused (``already`` when it was refunded before)."""
        ...

    async def send_invoice_link(self, chat_id: int, invoice: Invoice, text: str, button: str, *, reply_to: int | None = None,
                                thread_id: int | None = None) -> Sent:
        """Send ``text`` with one button, labelled ``button``, that opens ``invoice`` as a link (how
        Telegram sells a Stars subscription: ``invoice.subscription_period``)."""
        ...

    async def edit_star_subscription(self, user_id: int, charge_id: str, *, canceled: bool) -> None:
        """Cancel (``canceled``) or resume the renewal of ``user_id``'s Telegram Stars subscription whose
        first payment was ``charge_id``. raises ActorError when Telegram refuses."""
        ...

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        """Whether ``user_id`` administers group ``chat_id`` (Telegram: owner or administrator)."""
        ...

    async def delete(self, chat_id: int, message_id: int) -> bool:
        """Delete a message from the chat (e.g. one that carried an API key). False when the bot may
        not (Telegram: a bot deletes others' messages in groups only as an admin; any in private
        chats within 48 h)."""
        ...
