"""An Outbox for transports without Telegram (console, replay, tests): keeps what the bot says.

Message ids for the bot's messages come from ``IdAllocator``: per chat, above every id the store
has seen, and never below ``LOCAL_ID_BASE`` (2**40) so they cannot collide with Telegram's or a
transcript's ids (Telegram message ids fit in 31 bits).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import i18n
from actors.errors import RefundRefused
from actors.outbox import Button, ReplyStream, Sent
from i18n import _

__all__ = ["LOCAL_ID_BASE", "IdAllocator", "LocalOutbox", "OutMessage"]

LOCAL_ID_BASE = 2**40


class IdAllocator:
    """Next message id per chat: max(stored ids + 1, LOCAL_ID_BASE), then counting up."""

    def __init__(self, max_stored: Callable[[int], Awaitable[int | None]]) -> None:
        self._max_stored = max_stored
        self._next: dict[int, int] = {}

    async def next(self, chat_id: int) -> int:
        n = self._next.get(chat_id)
        if n is None:
            stored = await self._max_stored(chat_id)
            n = max(LOCAL_ID_BASE, (stored or 0) + 1)
        self._next[chat_id] = n + 1
        return n


@dataclass(frozen=True, slots=True)
class OutMessage:
    """Something the bot sent: text (a document's caption, else its file name), and buttons if any.
    filename: a document's file name."""

    chat_id: int
    message_id: int
    text: str
    reply_to: int | None = None
    thread_id: int | None = None
    buttons: tuple[tuple[Button, ...], ...] = ()
    document: bytes | None = None
    invoice: object | None = None
    photo: bytes | None = None
    filename: str | None = None

    def flat_buttons(self) -> tuple[Button, ...]:
        """The buttons row by row, left to right: a console numbers them 1, 2, … in this order."""
        return tuple(b for row in self.buttons for b in row)


class _BufferedStream:
    def __init__(self, outbox: LocalOutbox, chat_id: int, reply_to: int | None, thread_id: int | None) -> None:
        self._outbox, self._chat_id, self._reply_to, self._thread_id = outbox, chat_id, reply_to, thread_id
        self.updates = 0
        self._shown = ""

    async def update(self, text: str) -> None:
        self.updates += 1
        await self._outbox.on_progress(self._chat_id, text[len(self._shown):] if text.startswith(self._shown) else text)
        self._shown = text

    async def finish(self, text: str) -> Sent:
        rest = text[len(self._shown):] if self._shown and text.startswith(self._shown) else None
        return await self._outbox.send(self._chat_id, text, reply_to=self._reply_to, thread_id=self._thread_id, streamed_rest=rest)


@dataclass
class LocalOutbox:
    """Outbox that records every message in ``sent`` (and calls the display hooks of subclasses).

    ``keyboard(chat_id)`` is the latest message with buttons in a chat (as edited since): a console
    presses its buttons. ``language`` is the interface language the bot last spoke (the actor's, when
    it sent or edited something): the transport's own notes use it too."""

    ids: IdAllocator
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    sent: list[OutMessage] = field(default_factory=list)
    answered: list[tuple[str, str | None]] = field(default_factory=list)
    pre_checkouts: list[tuple[str, bool, str | None]] = field(default_factory=list)
    refunds: list[tuple[int, str]] = field(default_factory=list)  # (user id, charge id) refunded
    admins: set[tuple[int, int]] | None = None  # (chat_id, user_id); None: everyone administers (console)
    deleted: list[tuple[int, int]] = field(default_factory=list)  # (chat_id, message_id) deleted by the bot
    star_subscriptions: list[tuple[int, str, bool]] = field(default_factory=list)  # (user_id, charge_id, canceled) asked
    language: str = i18n.DEFAULT
    _keyboards: dict[int, OutMessage] = field(default_factory=dict, init=False, repr=False)

    async def on_progress(self, chat_id: int, delta: str) -> None:
        """A streamed piece of a reply (display hook)."""

    async def on_notice(self, text: str) -> None:
        """A note from the transport itself, not the bot (display hook), e.g. a file it could not read."""

    async def on_message(self, msg: OutMessage, streamed_rest: str | None) -> None:
        """A message was sent (display hook). streamed_rest: the part not shown by on_progress yet."""

    async def on_edit(self, msg: OutMessage) -> None:
        """A message was edited (display hook; ``msg`` as it is now). Default: shown as a message."""
        await self.on_message(msg, None)

    async def on_answer(self, text: str, alert: bool) -> None:
        """A button press was answered with a text (display hook): a toast, or an ``alert`` to dismiss."""

    async def on_idle(self) -> None:
        """The transport waited for the chat's events to be handled (display hook): nothing more is
        coming for now, e.g. a reply whose stream never finished."""

    def keyboard(self, chat_id: int) -> OutMessage | None:
        """The latest message with buttons in ``chat_id`` (as edited since), None when there is none."""
        return self._keyboards.get(chat_id)

    async def _emit(self, msg: OutMessage, streamed_rest: str | None = None) -> Sent:
        self.language = i18n.current()
        self.sent.append(msg)
        if msg.buttons:
            self._keyboards[msg.chat_id] = msg
        await self.on_message(msg, streamed_rest)
        return Sent(msg.message_id, self.clock())

    async def send(
        self, chat_id: int, text: str, *, reply_to: int | None = None, thread_id: int | None = None, streamed_rest: str | None = None
    ) -> Sent:
        return await self._emit(OutMessage(chat_id, await self.ids.next(chat_id), text, reply_to, thread_id), streamed_rest)

    async def send_ephemeral(self, chat_id: int, user_id: int, text: str, *, reply_to: int | None = None,
                             thread_id: int | None = None) -> Sent:
        """No ephemeral messages locally: a normal reply."""
        return await self.send(chat_id, text, reply_to=reply_to, thread_id=thread_id)

    async def edit(self, chat_id: int, message_id: int, text: str) -> None:
        """Replace a message's text; its buttons stay (as on Telegram)."""
        for i, m in enumerate(self.sent):
            if m.chat_id == chat_id and m.message_id == message_id:
                self.language = i18n.current()
                self.sent[i] = replace(m, text=text)
                kb = self._keyboards.get(chat_id)
                if kb is not None and kb.message_id == message_id:
                    self._keyboards[chat_id] = self.sent[i]
                await self.on_edit(self.sent[i])
                return

    async def send_buttons(
        self, chat_id: int, text: str, rows: Sequence[Sequence[Button]], *, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        buttons = tuple(tuple(r) for r in rows)
        return await self._emit(OutMessage(chat_id, await self.ids.next(chat_id), text, reply_to, thread_id, buttons))

    async def answer_button(self, query_id: str, text: str | None = None, *, alert: bool = False) -> None:
        self.answered.append((query_id, text))
        if text:
            self.language = i18n.current()
            await self.on_answer(text, alert)

    async def send_document(
        self, chat_id: int, filename: str, data: bytes, *, caption: str | None = None, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        return await self._emit(OutMessage(chat_id, await self.ids.next(chat_id), caption or filename, reply_to, thread_id,
                                           document=data, filename=filename))

    async def send_photo(
        self, chat_id: int, data: bytes, *, caption: str | None = None, reply_to: int | None = None, thread_id: int | None = None
    ) -> Sent:
        return await self._emit(OutMessage(chat_id, await self.ids.next(chat_id), f"[photo] {caption or ''}".strip(), reply_to, thread_id,
                                           photo=data))

    async def stream(self, chat_id: int, *, reply_to: int | None = None, thread_id: int | None = None) -> ReplyStream:
        return _BufferedStream(self, chat_id, reply_to, thread_id)

    async def send_invoice(self, chat_id: int, invoice, *, reply_to: int | None = None, thread_id: int | None = None) -> Sent:
        prices = ", ".join(f"{label} {amount} {invoice.currency}" for label, amount in invoice.prices)
        return await self._emit(OutMessage(chat_id, await self.ids.next(chat_id), f"[invoice] {invoice.title}: {prices}", reply_to,
                                           thread_id, invoice=invoice))

    async def answer_pre_checkout(self, query_id: str, ok: bool, error: str | None = None) -> None:
        self.pre_checkouts.append((query_id, ok, error))

    async def refund_star_payment(self, user_id: int, charge_id: str) -> None:
        """Recorded in ``refunds``; a charge refunded before raises RefundRefused(already=True), as Telegram does."""
        if (user_id, charge_id) in self.refunds:
            raise RefundRefused(f"CHARGE_ALREADY_REFUNDED: {charge_id}", already=True)
        self.refunds.append((user_id, charge_id))

    async def send_invoice_link(self, chat_id: int, invoice, text: str, button: str, *, reply_to: int | None = None,
                                thread_id: int | None = None) -> Sent:
        """The text and, in place of the link's button (there is no Telegram here), an ``[invoice link]``
        line; the invoice is attached."""
        prices = ", ".join(f"{label} {amount} {invoice.currency}" for label, amount in invoice.prices)
        return await self._emit(OutMessage(chat_id, await self.ids.next(chat_id), f"{text}\n[invoice link] {button}: {prices}",
                                           reply_to, thread_id, invoice=invoice))

    async def edit_star_subscription(self, user_id: int, charge_id: str, *, canceled: bool) -> None:
        self.star_subscriptions.append((user_id, charge_id, canceled))

    async def is_admin(self, chat_id: int, user_id: int) -> bool:
        return self.admins is None or (chat_id, user_id) in self.admins

    async def delete(self, chat_id: int, message_id: int) -> bool:
        self.deleted.append((chat_id, message_id))
        await self.on_notice(_("(the message with the key was deleted from the chat)"))
        return True
