"""Credits in the chat (issue #26): /balance, /buy → invoice → pre-checkout → successful payment.

The rules are in ``tiers.credits`` and the ledger in ``memory.ledger``; this module talks to the
member. A pack bought in a private chat goes to the member's balance; in a group, to the group's
(its admins only), which pays for members whose own balance is empty. Plan payloads go on to
``billing`` (this module is the payment handler of both).
"""
from __future__ import annotations

import logging

import i18n
from actors.events import PRIVATE, ButtonPress, CommandEvent, PaymentEvent, PreCheckout, is_group
from actors.handlers import ChatContext
from actors.outbox import Button
from i18n import N_, _, ngettext
from tiers.credits import (
    apply_pack_payment,
    expire_due,
    expiring_soon,
    is_pack_payload,
    pack_invoice,
    pack_title,
    validate_pack_checkout,
)
from tiers.errors import PaymentError

from . import billing
from .replies import reply

__all__ = ["BUTTON", "HISTORY", "KIND_NAMES", "cmd_balance", "cmd_buy", "credits_text", "handle_payment",
           "handle_pre_checkout", "press", "send_packs", "upgrade_buttons"]

log = logging.getLogger(__name__)

BUTTON = "credits"
HISTORY = 5  # movements /balance shows
KIND_NAMES = {  # marked for the catalog; translated where shown
    "purchase": N_("purchase"), "debit": N_("answer"), "refund": N_("refund"), "grant": N_("grant"),
    "revoke": N_("revoked"), "expiry": N_("expired"),
}


def credits_text(n: int) -> str:
    """``1 credit`` / ``250 credits`` in the member's language and number format."""
    return ngettext("{n} credit", "{n} credits", abs(n), n=i18n.number(n))


def upgrade_buttons(ctx: ChatContext) -> list[list[Button]] | None:
    """The buttons under a tier refusal: the plans (/billing) and the credit packs (/buy), each when sold."""
    rows = billing.plans_button(ctx) or []
    if ctx.svc.config.tiers.credit_packs:
        rows = [*rows, [Button(_("💳 Buy credits"), f"{BUTTON}:show")]]
    return rows or None


async def cmd_balance(ctx: ChatContext, ev: CommandEvent) -> None:
    """The member's balance (and the group's), the last movements, and what an answer costs here."""
    adm = ctx.svc.admission
    ledger = adm.ledger if adm is not None else None
    if adm is None or ledger is None:
        await reply(ctx, ev, _("Credits are not enabled on this bot."))
        return
    uid = ev.sender.user_id
    await expire_due(ledger, "user", uid)
    lines = [_("Your balance: **{credits}**", credits=credits_text(await ledger.balance("user", uid)))]
    lines += [_("{credits} expire on {date}.", credits=credits_text(lot.remaining), date=i18n.date(lot.expires))
              for lot in (await expiring_soon(ledger, "user", uid))[:3] if lot.expires is not None]
    if is_group(ev.chat_type):
        await expire_due(ledger, "chat", ctx.chat_id)
        lines.append(_("This group's balance: **{credits}**", credits=credits_text(await ledger.balance("chat", ctx.chat_id))))
    tier = await adm.tier_of(ctx.chat_id, uid)
    alias = ctx.model_for(await ctx.user_settings(uid))
    lines.append(billing.price_line(ctx, tier, alias))
    moves = await ledger.history("user", uid, HISTORY)
    if moves:
        lines.append(_("Recent movements:"))
        for m in moves:
            what = _(KIND_NAMES[m.kind]) if m.kind in KIND_NAMES else m.kind
            sign = "+" if m.amount > 0 else "−"
            when = i18n.datetime_(m.ts) if m.ts is not None else ""
            lines.append(f"• {when} {what}: {sign}{i18n.number(abs(m.amount))}" + (f" ({m.note})" if m.note else ""))
    await reply(ctx, ev, "\n".join(lines), upgrade_buttons(ctx) if ctx.svc.config.tiers.credit_packs else None)


async def cmd_buy(ctx: ChatContext, ev: CommandEvent) -> None:
    """The credit packs as buttons; in a group, for the group's balance."""
    await send_packs(ctx, "user" if ev.chat_type == PRIVATE else "chat", ev.message_id, ev.thread_id)


async def send_packs(ctx: ChatContext, scope: str, reply_to: int | None, thread_id: int | None) -> None:
    packs = ctx.svc.config.tiers.credit_packs
    if not packs:
        await ctx.outbox.send(ctx.chat_id, _("This bot sells no credits."), reply_to=reply_to, thread_id=thread_id)
        return
    rows = [[Button(_("{title} — {price}", title=pack_title(name, p), price=billing.price_text(p.price, p.currency)),
                    f"{BUTTON}:buy:{name}:{scope}")] for name, p in packs.items()]
    if scope == "user":
        text = _("Credits — a purchase here goes to your own balance:")
    else:
        text = _("Credits — a purchase here goes to this group's balance (admins only); members pay from their own "
                 "balance first, then the group's:")
    await ctx.outbox.send_buttons(ctx.chat_id, text, rows, reply_to=reply_to, thread_id=thread_id)


async def press(ctx: ChatContext, ev: ButtonPress, rest: str) -> None:
    """``credits:show`` (the packs) and ``credits:buy:<pack>:<scope>`` (its invoice)."""
    action, _sep, arg = rest.partition(":")
    if action == "show":
        await send_packs(ctx, "user" if ctx.chat_id > 0 else "chat", None, None)
        await ctx.outbox.answer_button(ev.query_id)
        return
    pack, _sep, scope = arg.partition(":")
    scope = scope if scope in ("user", "chat") else "user"
    if scope == "chat" and not await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id):
        await ctx.outbox.answer_button(ev.query_id, _("Only this group's admins can buy credits for it."), alert=True)
        return
    scope_id = ev.sender.user_id if scope == "user" else ctx.chat_id
    try:
        invoice = pack_invoice(pack, ctx.svc.config.tiers, scope=scope, scope_id=scope_id)
    except PaymentError as exc:
        log.warning("chat %s: credit pack %r cannot be sold: %s", ctx.chat_id, pack, exc)
        await ctx.outbox.answer_button(ev.query_id, _("Sorry, this credit pack can't be bought right now."), alert=True)
        return
    await ctx.outbox.send_invoice(ctx.chat_id, invoice)
    await ctx.outbox.answer_button(ev.query_id)


async def handle_pre_checkout(ctx: ChatContext, ev: PreCheckout) -> None:
    """A credit pack's checkout is checked here; a plan's by ``billing``."""
    if not is_pack_payload(ev.payload):
        await billing.handle_pre_checkout(ctx, ev)
        return
    error = validate_pack_checkout(ev.payload, ev.total_amount, ev.currency, ctx.svc.config.tiers)
    await ctx.outbox.answer_pre_checkout(ev.query_id, error is None, error)


async def handle_payment(ctx: ChatContext, ev: PaymentEvent) -> None:
    """A credit pack paid: credited once per charge id (a plan: ``billing``)."""
    if not is_pack_payload(ev.payload):
        await billing.handle_payment(ctx, ev)
        return
    adm = ctx.svc.admission
    if adm is None or adm.ledger is None:
        log.error("payment %s for credits received but credits are disabled", ev.charge_id)
        return

    await adm.open()
    posting = await apply_pack_payment(adm.ledger, adm.store, adm.cfg, ev.charge_id, ev.payload, ev.total_amount, ev.currency,
                                       ev.sender.user_id, ctx.chat_id)
    if posting is None:
        text = _("Thank you! Your payment was received, but its credit pack no longer exists: the bot's owner will sort it out.")
    elif posting.entry.scope == "user":
        text = _("Thank you! {credits} added; your balance is {balance}.", credits=credits_text(posting.entry.amount),
                 balance=credits_text(posting.balance))
    else:
        text = _("Thank you! {credits} added to this group; its balance is {balance}.",
                 credits=credits_text(posting.entry.amount), balance=credits_text(posting.balance))
    await ctx.outbox.send(ctx.chat_id, text, reply_to=ev.message_id)
