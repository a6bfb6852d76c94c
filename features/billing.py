"""Tiers in the chat: /profile, /usage, /billing → invoice → pre-checkout → successful payment.

The tier logic lives in ``tiers`` (``Admission``); this module only talks to the member. Payments
are applied once per ``charge_id`` even when Telegram delivers the update twice.

A renewing plan (``subscription_period``) is sold to a member as a Telegram Stars subscription: its
buy button sends a message whose button opens an invoice link (Telegram sells subscriptions only so).
In a group the same plan is sold as a one-off purchase of its days for the whole group (a Telegram
subscription is one user's). While a member's subscription runs, /billing says when it renews (or
that it ends and won't renew; /profile says it too) and offers "Cancel renewal" or "Resume renewal"
(``sub:cancel``, ``sub:resume``: ``edit_user_star_subscription``), instead of selling the renewing
plans again.
"""
from __future__ import annotations

import logging

import i18n
from actors.errors import ActorError
from actors.events import PRIVATE, ButtonPress, CommandEvent, PaymentEvent, PreCheckout
from actors.handlers import ChatContext
from actors.outbox import Button
from i18n import _, ngettext
from tiers.errors import PaymentError
from tiers.payments import invoice_for, validate_pre_checkout
from tiers.subscriptions import Subscription

from .replies import features_line, reply, reply_privately, short

__all__ = ["SUB_BUTTON", "cmd_billing", "cmd_profile", "cmd_usage", "handle_payment", "handle_pre_checkout",
           "model_prices_line", "plans_button", "press_buy", "press_subscription", "price_line", "price_text",
           "running_subscription", "send_plans", "subscription_line", "usage_lines"]

log = logging.getLogger(__name__)

SUB_BUTTON = "sub"  # sub:cancel, sub:resume — the member's own Telegram Stars subscription


def plans_button(ctx: ChatContext) -> list[list[Button]] | None:
    """The one-button keyboard under a tier refusal that opens /billing's plans; None when the bot
    sells no plans."""
    return [[Button(_("⭐ Plans"), "billing:show")]] if ctx.svc.config.tiers.plans else None


def _limit(n: float) -> str:
    return _("unlimited") if n < 0 else i18n.number(n)


def _expiry(sub) -> str:
    """`` (no expiry)`` / `` until <date, time> UTC`` after a subscription's tier ("" for None)."""
    if sub is None:
        return ""
    if sub.expires_at is None:
        return " " + _("(no expiry)")
    return " " + _("until {when} UTC", when=i18n.datetime_(sub.expires_at))


async def usage_lines(ctx: ChatContext, user_id: int) -> list[str]:
    """Today's usage against each quota of the member's tier here."""
    adm = ctx.svc.admission
    assert adm is not None, "usage lines need tiers"
    p = await adm.profile(ctx.chat_id, user_id)
    q, t = p.quotas, p.today
    # deferred: ~7 ms; `kith memory stats` imports this module and must not pay it
    from tiers.quotas import ANY_MODEL, images_per_request, request_usage

    lines = []
    shared = [a for a in ctx.svc.config.settings.models if a not in q.requests_per_day]
    for alias in ctx.svc.config.settings.models:
        if alias in shared and ANY_MODEL in q.requests_per_day:
            continue  # shown once below, as the shared quota it is
        used, limit = request_usage(q, t.requests, alias)
        lines.append(_("• {model}: {used} / {limit} requests", model=alias, used=i18n.number(used), limit=_limit(limit)))
    if shared and ANY_MODEL in q.requests_per_day:
        used, limit = request_usage(q, t.requests, shared[0])
        lines.append(_("• {models} (shared): {used} / {limit} requests", models=", ".join(shared), used=i18n.number(used),
                       limit=_limit(limit)))
    lines.append(_("• tokens: {used} / {limit}", used=i18n.number(t.tokens), limit=_limit(q.tokens_per_day)))
    if q.images_per_day != 0 and p.features.image_generation:
        lines.append(_("• images: {used} / {limit}", used=i18n.number(t.images), limit=_limit(q.images_per_day)) + " "
                     + _("(up to {n} per request)", n=i18n.number(images_per_request(q))))
    if q.audio_seconds_per_day != 0 and p.features.voice:
        lines.append(_("• transcribed audio: {used} / {limit} s", used=i18n.number(t.audio_seconds, digits=0),
                       limit=_limit(q.audio_seconds_per_day)))
    if q.tool_calls_per_day > 0 or t.tool_calls:  # a limit, or calls made today
        lines.append(_("• tool calls: {used} / {limit}", used=i18n.number(t.tool_calls), limit=_limit(q.tool_calls_per_day)))
    if q.chat_requests_per_day >= 0 or q.chat_tokens_per_day >= 0:
        lines.append(_("• this chat: {requests} / {requests_limit} requests, {tokens} / {tokens_limit} tokens",
                       requests=i18n.number(t.chat_requests), requests_limit=_limit(q.chat_requests_per_day),
                       tokens=i18n.number(t.chat_tokens), tokens_limit=_limit(q.chat_tokens_per_day)))
    lines.append(_("Resets at {time} UTC.", time=t.resets_at.strftime("%H:%M")))
    return lines


async def cmd_profile(ctx: ChatContext, ev: CommandEvent) -> None:

    user = await ctx.user_settings(ev.sender.user_id)
    lines = [f"**{ev.sender.name}**"]
    if ctx.svc.admission is not None:

        p = await ctx.svc.admission.profile(ctx.chat_id, ev.sender.user_id)
        lines.append(_("Tier here: **{tier}** — {features}", tier=p.tier, features=features_line(p.features)))
        running = await running_subscription(ctx, ev.sender.user_id)
        if running is not None:  # a Telegram Stars subscription: renews on … / ends on …, as /billing says
            lines.append(subscription_line(running))
        elif p.user_sub is not None:
            lines.append(_("Your subscription: {tier}{until}", tier=p.user_sub.tier, until=_expiry(p.user_sub)))
        if p.chat_sub is not None and ctx.chat_id != ev.sender.user_id:
            lines.append(_("This chat's subscription: {tier}{until}", tier=p.chat_sub.tier, until=_expiry(p.chat_sub)))
        prices = model_prices_line(ctx, p.tier)
        if prices:
            lines.append(prices)
    lines.append(_("Model: {model}", model=ctx.model_for(user)))
    if user.role:
        lines.append(_("Persona: {persona}", persona=short(user.role, 200)))
    mine = await ctx.svc.memory.store.messages.count(ctx.chat_id, user_id=ev.sender.user_id)
    lines.append(_("Your messages in this chat: {n}", n=i18n.number(mine)))
    if ctx.svc.admission is not None:
        lines.append(_("Today:"))
        lines += await usage_lines(ctx, ev.sender.user_id)
    await reply_privately(ctx, ev, "\n".join(lines))


async def cmd_usage(ctx: ChatContext, ev: CommandEvent) -> None:

    if ctx.svc.admission is None:
        await reply(ctx, ev, _("Usage limits are not enabled on this bot."))
        return
    tier = await ctx.svc.admission.tier_of(ctx.chat_id, ev.sender.user_id)
    lines = await usage_lines(ctx, ev.sender.user_id)
    await reply_privately(ctx, ev, "\n".join([_("Today's usage (tier **{tier}**):", tier=tier), *lines]))


async def cmd_billing(ctx: ChatContext, ev: CommandEvent) -> None:
    """The plans as buttons; in a group, a plan bought here covers the whole group."""
    await send_plans(ctx, "user" if ev.chat_type == PRIVATE else "chat", ev.message_id, ev.thread_id, ev.sender.user_id)


async def running_subscription(ctx: ChatContext, user_id: int) -> Subscription | None:
    """The member's Telegram Stars subscription while it runs (renewing or not), else None."""
    adm = ctx.svc.admission
    if adm is None:
        return None
    sub = await adm.subs.get("user", user_id)
    if sub is None or not sub.recurring or sub.expires_at is None or not sub.active(adm.clock()):
        return None
    return sub


def subscription_line(sub: Subscription) -> str:
    """"renews on <date>" or "ends on <date> and won't renew", for /billing and /profile."""
    assert sub.expires_at is not None
    when = i18n.datetime_(sub.expires_at)
    if sub.renews:
        return _("Your **{tier}** subscription renews on {when} UTC.", tier=sub.tier, when=when)
    return _("Your **{tier}** subscription ends on {when} UTC and won't renew.", tier=sub.tier, when=when)


async def send_plans(ctx: ChatContext, scope: str, reply_to: int | None, thread_id: int | None, user_id: int | None = None) -> None:
    """The plans as buttons (``scope``: ``"user"`` in a private chat, ``"chat"`` in a group). For a
    member (``user_id``, scope ``user``) with a running Telegram subscription: its state and the
    button that cancels or resumes its renewal, in place of the renewing plans."""
    plans = ctx.svc.config.tiers.plans
    if not plans:
        await ctx.outbox.send(ctx.chat_id, _("This bot sells no plans."), reply_to=reply_to, thread_id=thread_id)
        return
    running = await running_subscription(ctx, user_id) if scope == "user" and user_id is not None else None
    rows = []
    for name, p in plans.items():
        title, price = i18n.pick(p.title) or name, _price(p.price, p.currency)
        if p.subscription_period is not None and scope == "user":
            if running is not None:
                continue  # one Telegram subscription at a time: cancel or resume it below
            label = ngettext("{title}: {tier}, renewed every {n} day — {price}", "{title}: {tier}, renewed every {n} days — {price}",
                             p.days, title=title, n=i18n.number(p.days), tier=p.tier, price=price)
        else:
            label = ngettext("{title}: {n} day of {tier} — {price}", "{title}: {n} days of {tier} — {price}", p.days,
                             title=title, n=i18n.number(p.days), tier=p.tier, price=price)
        rows.append([Button(label, f"buy:{name}:{scope}")])
    if scope == "user":
        text = _("Plans — a purchase here covers you (in every chat):")
    else:
        text = _("Plans — a purchase here covers everyone in this group:")
    if running is not None:
        text = subscription_line(running) + "\n\n" + text
        rows.append([Button(_("Cancel renewal"), f"{SUB_BUTTON}:cancel") if running.renews
                     else Button(_("Resume renewal"), f"{SUB_BUTTON}:resume")])
    await ctx.outbox.send_buttons(ctx.chat_id, text, rows, reply_to=reply_to, thread_id=thread_id)


def model_prices_line(ctx: ChatContext, tier: str) -> str | None:
    """What an answer with each model costs in credits once ``tier``'s quota is spent (``when_spent:
    credits``), for /profile and /model; None when the tier does not pay with credits."""
    cfg = ctx.svc.config.tiers
    t = cfg.tiers.get(tier)
    if t is None or t.spent_mode != "credits" or not cfg.prices.priced:
        return None
    models = ", ".join(f"{alias} {i18n.number(cfg.prices.message(alias))}" for alias in ctx.svc.config.settings.models)
    line = _("Credits per answer once the quota is spent: {models}", models=models)
    if cfg.prices.per_1k_tokens:
        line += " " + _("(+{n} per 1,000 tokens)", n=i18n.number(cfg.prices.per_1k_tokens))
    return line


def price_line(ctx: ChatContext, tier: str, alias: str) -> str:
    """What one answer with ``alias`` costs the member at ``tier`` (for /balance)."""
    cfg = ctx.svc.config.tiers
    t = cfg.tiers.get(tier)
    if t is None or t.spent_mode != "credits" or not cfg.prices.priced:
        return _("On the {tier} tier answers are not paid with credits.", tier=tier)
    n = cfg.prices.message(alias)
    line = ngettext("An answer with {model} costs {n} credit once today's quota is spent.",
                    "An answer with {model} costs {n} credits once today's quota is spent.", n, model=alias, n=i18n.number(n))
    if cfg.prices.per_1k_tokens:
        line += " " + _("(+{n} per 1,000 tokens)", n=i18n.number(cfg.prices.per_1k_tokens))
    return line


def price_text(amount: int, currency: str) -> str:
    """``_price``, for the credit packs' buttons."""
    return _price(amount, currency)


def _price(amount: int, currency: str) -> str:
    """A plan's price for a button: ``250 ⭐`` (Telegram Stars), else money in the member's locale
    (``amount`` is in the currency's smallest unit, e.g. cents: 499 USD → ``$4.99``)."""
    code = currency.upper()
    if code == "XTR":
        return f"{i18n.number(amount)} ⭐"
    from babel.numbers import get_currency_precision  # deferred: babel.numbers (~10 ms); `kith memory stats` imports this module

    return i18n.money(amount / 10 ** get_currency_precision(code), code)


async def press_buy(ctx: ChatContext, ev: ButtonPress, rest: str) -> None:
    plan, _sep, scope = rest.partition(":")
    scope_id = ev.sender.user_id if scope == "user" else ctx.chat_id
    try:
        invoice = invoice_for(plan, ctx.svc.config.tiers, scope=scope if scope in ("user", "chat") else "user", scope_id=scope_id)
    except PaymentError as exc:
        log.warning("chat %s: plan %r cannot be sold: %s", ctx.chat_id, plan, exc)
        await ctx.outbox.answer_button(ev.query_id, _("Sorry, this plan can't be bought right now."), alert=True)
        return
    if invoice.subscription_period is None:
        await ctx.outbox.send_invoice(ctx.chat_id, invoice)
        await ctx.outbox.answer_button(ev.query_id)
        return
    if await running_subscription(ctx, ev.sender.user_id) is not None:
        await ctx.outbox.answer_button(ev.query_id, _("You already have a subscription: see /billing."), alert=True)
        return
    p = ctx.svc.config.tiers.plans[plan]
    price = _price(p.price, p.currency)
    text = ngettext("**{title}**: {price} every {n} day. Telegram renews it by itself until you cancel it (here in /billing, "
                    "or in Telegram's settings).",
                    "**{title}**: {price} every {n} days. Telegram renews it by itself until you cancel it (here in /billing, "
                    "or in Telegram's settings).", p.days, title=invoice.title, price=price, n=i18n.number(p.days))
    try:
        await ctx.outbox.send_invoice_link(ctx.chat_id, invoice, text, _("Subscribe for {price}", price=price))
    except ActorError as exc:
        log.warning("chat %s: no invoice link for plan %r: %s", ctx.chat_id, plan, exc)
        await ctx.outbox.answer_button(ev.query_id, _("Sorry, this plan can't be bought right now."), alert=True)
        return
    await ctx.outbox.answer_button(ev.query_id)


async def press_subscription(ctx: ChatContext, ev: ButtonPress, rest: str) -> None:
    """``sub:cancel`` / ``sub:resume``: stop or restart the renewal of the presser's own subscription."""
    uid = ev.sender.user_id
    sub = await running_subscription(ctx, uid)
    if rest not in ("cancel", "resume") or sub is None or ctx.svc.admission is None:
        await ctx.outbox.answer_button(ev.query_id, _("You have no subscription to change."), alert=True)
        return
    cancel = rest == "cancel"
    try:
        await ctx.outbox.edit_star_subscription(uid, sub.charge_id or "", canceled=cancel)
    except ActorError as exc:
        log.warning("user %s: subscription %s not %s: %s", uid, sub.charge_id, "cancelled" if cancel else "resumed", exc)
        await ctx.outbox.answer_button(ev.query_id, _("Telegram did not accept the change. Please try again later."), alert=True)
        return
    await ctx.svc.admission.subs.set_renews("user", uid, not cancel)
    await ctx.outbox.answer_button(ev.query_id, _("Renewal cancelled.") if cancel else _("Renewal resumed."))
    await send_plans(ctx, "user", None, None, uid)


async def handle_pre_checkout(ctx: ChatContext, ev: PreCheckout) -> None:
    error = validate_pre_checkout(ev.payload, ev.total_amount, ev.currency, ctx.svc.config.tiers, ev.sender.user_id)
    await ctx.outbox.answer_pre_checkout(ev.query_id, error is None, error)


async def handle_payment(ctx: ChatContext, ev: PaymentEvent) -> None:
    if ctx.svc.admission is None:
        log.error("payment %s received but tiers are disabled", ev.charge_id)
        return
    sub = await ctx.svc.admission.apply_payment(ev.charge_id, ev.payload, ev.total_amount, ev.currency, ev.sender.user_id, ctx.chat_id,
                                                subscription_until=ev.subscription_until, renewal=ev.renewal)
    if sub is None:
        text = _("Thank you! Your payment was received, but its plan no longer exists: the bot's owner will sort it out.")
    elif ev.subscription_until is not None and ev.renewal:
        text = _("Your subscription was renewed: you are on **{tier}**{until}.", tier=sub.tier, until=_expiry(sub))
    elif ev.subscription_until is not None and sub.scope == "user":
        text = _("Thank you! You are on **{tier}**{until}; Telegram renews it by itself. /billing shows it and can cancel it.",
                 tier=sub.tier, until=_expiry(sub))
    elif sub.scope == "user":
        text = _("Thank you! You are on **{tier}**{until}.", tier=sub.tier, until=_expiry(sub))
    else:
        text = _("Thank you! This chat is on **{tier}**{until}.", tier=sub.tier, until=_expiry(sub))
    await ctx.outbox.send(ctx.chat_id, text, reply_to=ev.message_id)
