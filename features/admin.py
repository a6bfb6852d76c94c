"""/admin: the bot's owners (``telegram.owners`` in kith.yaml; the host in ``kith chat``) run it from Telegram.

In a private chat with the bot, an owner gets, in one message: health (actors, queues, embedding
backend), today's usage and cost (UTC day, by model), the largest chats, the active subscriptions;
and can grant or revoke a subscription:

    /admin
    /admin grant user:12345 premium 30     (days; none = no expiry)   ·   /admin grant here premium
    /admin revoke chat:-100123             ·   /admin revoke here
    /admin grant premium 30 · /admin revoke   (as a reply to a member's message: that member)
    /admin refund CHARGE_ID                 (a Telegram Stars payment: the Stars go back to the payer)

A refund goes through Telegram (``refundStarPayment``) first, then is recorded once in the credit
ledger (``refund:<charge id>``): a refunded credit pack takes its unspent credits off the balance
(never below zero), a refunded plan takes its days back off the subscription (ending it when none
are left). Running it again says it was done; when Telegram refunded but the bot stopped before
recording, running it again records it.

``here`` is the chat the command is sent in. Anyone else gets the same answer as for an unknown
command (the command is not advertised), and in a group the overview is refused (it names other
chats). Grants go through the running admission's subscription store, so they apply at once.
"""
from __future__ import annotations

from datetime import UTC, datetime, time

import anyio

import i18n
from actors.errors import RefundRefused
from actors.events import PRIVATE, CommandEvent
from actors.handlers import ChatContext
from i18n import N_, _, ngettext
from memory.ledger import LedgerEntry, purchase_key, refund_key
from tiers.credits import refund_purchase
from tiers.errors import TierError
from tiers.subscriptions import parse_target
from tiers.usage import usage_summary

from .capacity import describe
from .credits import credits_text
from .replies import reply

__all__ = ["TOP_CHATS", "USAGE", "cmd_admin", "overview", "refund"]

USAGE = N_("/admin · /admin grant user:ID|chat:ID|here TIER [DAYS] · /admin revoke user:ID|chat:ID|here "
           "(or, replying to a member's message: /admin grant TIER [DAYS] · /admin revoke) · /admin refund CHARGE_ID")
TOP_CHATS = 5


async def cmd_admin(ctx: ChatContext, ev: CommandEvent) -> None:

    if ev.sender.user_id not in ctx.svc.owners:
        await reply(ctx, ev, _("Unknown command /{command}. Try /help.", command=ev.command))
        return
    args = ev.args.split()
    if not args:
        if ev.chat_type != PRIVATE:
            await reply(ctx, ev, _("The overview names other chats: send /admin in a private chat with me."))
            return
        await reply(ctx, ev, await overview(ctx))
        return
    verb, rest = args[0].lower(), args[1:]
    if verb == "refund" and len(rest) == 1:
        await reply(ctx, ev, await refund(ctx, rest[0]))
        return
    if ev.reply_to_user is not None and not (rest and _is_target(rest[0])):
        rest = [f"user:{ev.reply_to_user}", *rest]  # a reply names the member
    try:
        if verb == "grant" and len(rest) in (2, 3):
            scope, scope_id = _target(rest[0], ev)
            days = float(rest[2]) if len(rest) == 3 else None
            sub = await _subs(ctx).grant(scope, scope_id, rest[1], days, f"admin:{ev.sender.user_id}")
            if sub.expires_at is None:
                granted = _("{target}: {tier}, no expiry.", target=sub.target, tier=sub.tier)
            else:
                granted = _("{target}: {tier}, until {when} UTC.", target=sub.target, tier=sub.tier,
                            when=i18n.datetime_(sub.expires_at.astimezone(UTC)))
            await reply(ctx, ev, granted)
            return
        if verb == "revoke" and len(rest) == 1:
            scope, scope_id = _target(rest[0], ev)
            gone = await _subs(ctx).revoke(scope, scope_id)
            target = f"{scope}:{scope_id}"
            await reply(ctx, ev, _("{target}: revoked.", target=target) if gone else
                        _("{target}: had no subscription.", target=target))
            return
    except ValueError:
        await reply(ctx, ev, _("DAYS must be a number. {usage}", usage=_(USAGE)))
        return
    except TierError as exc:
        await reply(ctx, ev, f"{exc}. {_(USAGE)}")  # (a TierError's text is English: tiers has no catalog)
        return
    await reply(ctx, ev, _(USAGE))


async def refund(ctx: ChatContext, charge_id: str) -> str:
    """Refund the Stars payment ``charge_id`` and record it (see the module's text); the owner's answer."""
    adm = ctx.svc.admission
    if adm is None:
        return _("This bot runs without tiers: it has no payments.")
    payment = await adm.store.billing.payment(charge_id)
    if payment is None:
        return _("No payment has the charge id {charge}.", charge=charge_id)
    if payment.currency.upper() != "XTR":
        return _("That payment is in {currency}: refund it in your payment provider's dashboard.", currency=payment.currency)
    ledger = adm.ledger
    if ledger is not None:
        await ledger.open()
        done = await ledger.get(refund_key(charge_id))
        if done is not None and done.ts is not None:
            return _("Payment {charge} was refunded on {when} UTC.", charge=charge_id, when=i18n.datetime_(done.ts.astimezone(UTC)))
    try:
        await ctx.outbox.refund_star_payment(payment.user_id, charge_id)
    except RefundRefused as exc:
        if not exc.already:
            return _("Telegram refused the refund: {error}", error=str(exc))
        # refunded by an earlier /admin refund that stopped before recording it: record it now
    stars = ngettext("{n} Star", "{n} Stars", payment.amount, n=i18n.number(payment.amount))
    with anyio.CancelScope(shield=True):  # the Stars went back: the record must follow
        if payment.plan.startswith("credits:"):
            if ledger is None or await ledger.get(purchase_key(charge_id)) is None:
                return _("{stars} refunded to user {user}; no credits had been added for it.", stars=stars, user=payment.user_id)
            posting = await refund_purchase(ledger, payment.scope, payment.scope_id, charge_id,
                                            note=f"admin:{ctx.chat_id}")
            return _("{stars} refunded to user {user}; {credits} unspent taken off {target} (balance {balance}).",
                     stars=stars, user=payment.user_id, credits=credits_text(-posting.entry.amount),
                     target=f"{payment.scope}:{payment.scope_id}", balance=credits_text(posting.balance))
        sub = None
        if payment.tier and payment.days:
            sub = await adm.subs.shorten(payment.scope, payment.scope_id, payment.tier, payment.days)
        if ledger is not None:
            await ledger.append(LedgerEntry(refund_key(charge_id), payment.scope, payment.scope_id, "refund", 0,
                                            ref=purchase_key(charge_id), charge_id=charge_id, note=f"plan:{payment.plan}"))
    target = f"{payment.scope}:{payment.scope_id}"
    if sub is None:
        return _("{stars} refunded to user {user}; {target} has no subscription now.", stars=stars, user=payment.user_id,
                 target=target)
    if sub.expires_at is None:
        return _("{stars} refunded to user {user}; {target} keeps {tier}, no expiry.", stars=stars, user=payment.user_id,
                 target=target, tier=sub.tier)
    return _("{stars} refunded to user {user}; {target}: {tier} until {when} UTC.", stars=stars, user=payment.user_id,
             target=target, tier=sub.tier, when=i18n.datetime_(sub.expires_at.astimezone(UTC)))


def _subs(ctx: ChatContext):
    adm = ctx.svc.admission
    if adm is None:
        raise TierError("this bot runs without tiers")
    return adm.subs


def _is_target(text: str) -> bool:
    return text.lower() == "here" or ":" in text


def _target(text: str, ev: CommandEvent) -> tuple[str, int]:
    """``here`` → this chat (a private chat's id is its user's); else ``user:ID`` / ``chat:ID``."""
    if text.lower() == "here":
        return ("user", ev.chat_id) if ev.chat_type == PRIVATE else ("chat", ev.chat_id)
    return parse_target(text)


async def overview(ctx: ChatContext) -> str:
    """The owner's one-message overview (Markdown)."""
    svc = ctx.svc
    now = svc.clock()
    sup, mem = svc.supervisor, svc.memory
    emb = mem.embedder
    num = i18n.number
    actors = (_("chat actors: {running} running, {started} started, {restarted} restarted after a crash",
                running=num(sup.active), started=num(sup.stats.spawned), restarted=num(sup.stats.restarted))
              if sup is not None else _("no supervisor"))
    lines = [_("**Admin overview**"),
             _("Health: {actors}; indexer queue {indexer}, store queue {store}; embedding {backend} ({precision})",
               actors=actors, indexer=num(mem.indexer.pending), store=num(mem.store.pending), backend=emb.backend,
               precision=emb.encoder.precision)]
    day = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    rep = await usage_summary(mem.store, by="model", since=day)
    t = rep["total"]
    tokens = t["prompt_tokens"] + t["completion_tokens"]
    lines.append(_("Today (UTC): {requests}, {tokens}, cost {cost}", requests=_requests(t["requests"]),
                   tokens=ngettext("{n} token", "{n} tokens", tokens, n=num(tokens)), cost=t["cost"]))
    lines += [f"• {g['key']}: {_requests(g['requests'])}, {g['cost']}" for g in rep["rows"]]
    chats = sorted(await mem.store.settings.chats(), key=lambda c: c.messages, reverse=True)[:TOP_CHATS]
    if chats:
        lines.append(_("Largest chats:"))
        lines += [f"• {c.title or c.type} ({c.chat_id}): " + ngettext("{n} message", "{n} messages", c.messages, n=num(c.messages))
                  for c in chats]
    cleaned = await mem.store.index.cleanups()
    if cleaned:
        lines.append(_("Capacity cleanup (the host's imports are never removed):"))
        lines += [f"• {r.chat_id}: {describe(r)}" for r in cleaned[-TOP_CHATS:]]
    if svc.admission is not None:
        subs = await svc.admission.subs.list()
        lines.append(_("Subscriptions: {n} active", n=num(len(subs)))
                     + (": " + ", ".join(f"{s.target} {s.tier}" for s in subs[:10]) if subs else ""))
    lines.append(_(USAGE))
    return "\n".join(lines)


def _requests(n: int) -> str:
    return ngettext("{n} request", "{n} requests", n, n=i18n.number(n))
