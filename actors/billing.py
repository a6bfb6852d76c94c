"""Tiers in the chat: /profile, /usage, /billing → invoice → pre-checkout → successful payment.

The tier logic lives in ``tiers`` (``Admission``); this module only talks to the member. Payments
are applied once per ``charge_id`` even when Telegram delivers the update twice.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tiers.errors import PaymentError
from tiers.payments import invoice_for, validate_pre_checkout

from .events import PRIVATE, ButtonPress, CommandEvent, PaymentEvent, PreCheckout
from .outbox import Button

if TYPE_CHECKING:
    from .chat import ChatActor

log = logging.getLogger(__name__)


def plans_button(actor: "ChatActor") -> list[list[Button]] | None:
    """The one-button keyboard under a tier refusal that opens /billing's plans; None when the bot
    sells no plans."""
    return [[Button("⭐ Plans", "billing:show")]] if actor.svc.config.tiers.plans else None


def _limit(n: int) -> str:
    return "unlimited" if n < 0 else str(n)


def _expiry(sub) -> str:
    if sub is None:
        return ""
    return " (no expiry)" if sub.expires_at is None else f" until {sub.expires_at:%Y-%m-%d %H:%M} UTC"


async def usage_lines(actor: "ChatActor", user_id: int) -> list[str]:
    """Today's usage against each quota of the member's tier here."""
    adm = actor.svc.admission
    assert adm is not None, "usage lines need tiers"
    p = await adm.profile(actor.chat_id, user_id)
    q, t = p.quotas, p.today
    from tiers.quotas import ANY_MODEL, request_usage

    lines = []
    shared = [a for a in actor.svc.config.settings.models if a not in q.requests_per_day]
    for alias in actor.svc.config.settings.models:
        if alias in shared and ANY_MODEL in q.requests_per_day:
            continue  # shown once below, as the shared quota it is
        used, limit = request_usage(q, t.requests, alias)
        lines.append(f"• {alias}: {used} / {_limit(limit)} requests")
    if shared and ANY_MODEL in q.requests_per_day:
        used, limit = request_usage(q, t.requests, shared[0])
        lines.append(f"• {', '.join(shared)} (shared): {used} / {_limit(limit)} requests")
    lines.append(f"• tokens: {t.tokens} / {_limit(q.tokens_per_day)}")
    if q.images_per_day != 0 and p.features.image_generation:
        lines.append(f"• images: {t.images} / {_limit(q.images_per_day)}")
    if q.audio_seconds_per_day != 0 and p.features.voice:
        lines.append(f"• transcribed audio: {t.audio_seconds:.0f} / {_limit(q.audio_seconds_per_day)} s")
    if q.chat_requests_per_day >= 0 or q.chat_tokens_per_day >= 0:
        lines.append(f"• this chat: {t.chat_requests} / {_limit(q.chat_requests_per_day)} requests, "
                     f"{t.chat_tokens} / {_limit(q.chat_tokens_per_day)} tokens")
    lines.append(f"Resets at {t.resets_at:%H:%M} UTC.")
    return lines


async def cmd_profile(actor: "ChatActor", ev: CommandEvent) -> None:
    from .commands import _short, reply

    user = await actor._user(ev.sender.user_id)
    lines = [f"**{ev.sender.name}**"]
    if actor.svc.admission is not None:
        from .commands import features_line

        p = await actor.svc.admission.profile(actor.chat_id, ev.sender.user_id)
        lines.append(f"Tier here: **{p.tier}** — {features_line(p.features)}")
        if p.user_sub is not None:
            lines.append(f"Your subscription: {p.user_sub.tier}{_expiry(p.user_sub)}")
        if p.chat_sub is not None and actor.chat_id != ev.sender.user_id:
            lines.append(f"This chat's subscription: {p.chat_sub.tier}{_expiry(p.chat_sub)}")
    lines.append(f"Model: {actor._model_for(user)}")
    if user.get("role"):
        lines.append(f"Persona: {_short(user['role'], 200)}")
    mine = await actor.svc.memory.store.count_messages(actor.chat_id, user_id=ev.sender.user_id)
    lines.append(f"Your messages in this chat: {mine}")
    if actor.svc.admission is not None:
        lines.append("Today:")
        lines += await usage_lines(actor, ev.sender.user_id)
    await reply(actor, ev, "\n".join(lines))


async def cmd_usage(actor: "ChatActor", ev: CommandEvent) -> None:
    from .commands import reply

    if actor.svc.admission is None:
        await reply(actor, ev, "Usage limits are not enabled on this bot.")
        return
    tier = await actor.svc.admission.tier_of(actor.chat_id, ev.sender.user_id)
    await reply(actor, ev, f"Today's usage (tier **{tier}**):\n" + "\n".join(await usage_lines(actor, ev.sender.user_id)))


async def cmd_billing(actor: "ChatActor", ev: CommandEvent) -> None:
    """The plans as buttons; in a group, a plan bought here covers the whole group."""
    await send_plans(actor, "user" if ev.chat_type == PRIVATE else "chat", ev.message_id, ev.thread_id)


async def send_plans(actor: "ChatActor", scope: str, reply_to: int | None, thread_id: int | None) -> None:
    """The plans as buttons (``scope``: ``"user"`` in a private chat, ``"chat"`` in a group)."""
    plans = actor.svc.config.tiers.plans
    if not plans:
        await actor.outbox.send(actor.chat_id, "This bot sells no plans.", reply_to=reply_to, thread_id=thread_id)
        return
    rows = [[Button(f"{p.title or name}: {p.days} days of {p.tier} — {p.price} {_currency(p.currency)}", f"buy:{name}:{scope}")]
            for name, p in plans.items()]
    who = "you (in every chat)" if scope == "user" else "everyone in this group"
    await actor.outbox.send_buttons(actor.chat_id, f"Plans — a purchase here covers {who}:", rows, reply_to=reply_to,
                                    thread_id=thread_id)


def _currency(code: str) -> str:
    return "⭐" if code == "XTR" else code


async def press_buy(actor: "ChatActor", ev: ButtonPress, rest: str) -> None:
    plan, _, scope = rest.partition(":")
    scope_id = ev.sender.user_id if scope == "user" else actor.chat_id
    try:
        invoice = invoice_for(plan, actor.svc.config.tiers, scope=scope if scope in ("user", "chat") else "user", scope_id=scope_id)
    except PaymentError as exc:
        await actor.outbox.answer_button(ev.query_id, str(exc)[:190], alert=True)
        return
    await actor.outbox.send_invoice(actor.chat_id, invoice)
    await actor.outbox.answer_button(ev.query_id)


async def handle_pre_checkout(actor: "ChatActor", ev: PreCheckout) -> None:
    error = validate_pre_checkout(ev.payload, ev.total_amount, ev.currency, actor.svc.config.tiers)
    await actor.outbox.answer_pre_checkout(ev.query_id, error is None, error)


async def handle_payment(actor: "ChatActor", ev: PaymentEvent) -> None:
    if actor.svc.admission is None:
        log.error("payment %s received but tiers are disabled", ev.charge_id)
        return
    sub = await actor.svc.admission.apply_payment(ev.charge_id, ev.payload, ev.total_amount, ev.currency, ev.sender.user_id, actor.chat_id)
    if sub is None:
        text = "Thank you! Your payment was received, but its plan no longer exists: the bot's owner will sort it out."
    else:
        who = "You are" if sub.scope == "user" else "This chat is"
        text = f"Thank you! {who} on **{sub.tier}**{_expiry(sub)}."
    await actor.outbox.send(actor.chat_id, text, reply_to=ev.message_id)
