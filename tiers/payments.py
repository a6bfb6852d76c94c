"""Telegram payments for the plans of tiers.yaml — pure logic, no Telegram calls.

The flow (Bot API names; kurigram has the same methods):

1. ``/billing`` → ``invoice_for(plan, cfg, scope="user", scope_id=user_id)`` → ``send_invoice(chat_id,
   title, description, payload, currency, prices, provider_token)``. XTR (Telegram Stars) needs no
   provider token; any other currency needs ``TELEGRAM_PAYMENT_PROVIDER_TOKEN``.
2. ``pre_checkout_query`` → ``validate_pre_checkout(payload, total_amount, currency, cfg)`` → answer
   ``ok=True`` when it returns None, else ``ok=False, error_message=<the text>``. Telegram needs the
   answer within 10 s.
3. ``successful_payment`` message → ``await apply_successful_payment(subs, store, charge_id, payload,
   total_amount, currency, user_id, chat_id)`` with ``charge_id = telegram_payment_charge_id``.
   Applied once per charge id: a re-delivered update gets the same subscription back and changes
   nothing.

Renewing plans (``subscription_period``): Telegram sends a Stars subscription's invoice only as a
link (``create_invoice_link(…, subscription_period=2592000)``): ``invoice_for`` sets
``Invoice.subscription_period`` for a member (scope ``user``); for a whole group (scope ``chat``) the
plan is sold as a one-off purchase of its days (Telegram's subscriptions are a user's own). The
first payment and every renewal come as successful payments with ``subscription_expiration_date``:
``apply_successful_payment(…, subscription_until=…, renewal=…)`` runs the subscription until that
date (``SubscriptionStore.run_until``), once per charge id. Telegram tells the bot nothing when a
member cancels in their settings: a renewal that does not come means the subscription expires.

Payload: ``kith:plan:<plan>:<scope>:<id>`` (≤ 128 bytes, Telegram's limit), e.g.
``kith:plan:month:user:42`` or ``kith:plan:month:chat:-100123`` (premium for a whole group).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio

import i18n
from config.models import Plan, TiersConfig
from config.secrets import payment_provider_token
from i18n import _, ngettext
from memory.store import DialogueStore
from memory.types import PaymentRecord

from .errors import PaymentError
from .subscriptions import SCOPES, Subscription, SubscriptionStore

__all__ = [
    "PAYLOAD_PREFIX",
    "STARS",
    "Invoice",
    "apply_successful_payment",
    "build_payload",
    "invoice_for",
    "make_payload",
    "parse_payload",
    "payments",
    "split_payload",
    "validate_pre_checkout",
]

log = logging.getLogger(__name__)

STARS = "XTR"
PAYLOAD_PREFIX = "kith:plan:"
_TITLE_MAX, _DESCRIPTION_MAX, _PAYLOAD_MAX = 32, 255, 128  # Telegram's limits


@dataclass(frozen=True, slots=True)
class Invoice:
    """Arguments for ``send_invoice``. prices: ``(label, amount)`` in the currency's smallest unit.
    provider_token: ``""`` for Telegram Stars (XTR). subscription_period: seconds (2592000) for a
    Telegram Stars subscription, sold only as an invoice link; None: a one-off invoice."""

    plan: str
    title: str
    description: str
    payload: str
    currency: str
    prices: tuple[tuple[str, int], ...]
    provider_token: str
    subscription_period: int | None = None

    @property
    def total(self) -> int:
        return sum(amount for _label, amount in self.prices)


def build_payload(prefix: str, what: str, name: str, scope: str, scope_id: int) -> str:
    """``<prefix><name>:<scope>:<id>``, an invoice payload (Telegram: at most 128 bytes) for ``what``
    (``"plan"``, ``"pack"``: named in errors). raises PaymentError (bad scope, a ':' in the name, too long)."""
    if scope not in SCOPES:
        raise PaymentError(f"scope must be 'user' or 'chat', not {scope!r}")
    if ":" in name or not name:
        raise PaymentError(f"{what} name {name!r} cannot be used in a payload")
    payload = f"{prefix}{name}:{scope}:{int(scope_id)}"
    if len(payload.encode()) > _PAYLOAD_MAX:
        raise PaymentError(f"{what} name {name!r} is too long for an invoice payload")
    return payload


def split_payload(prefix: str, payload: str) -> tuple[str, str, int]:
    """``(name, scope, scope_id)`` of a payload made by ``build_payload(prefix, …)``. raises
    PaymentError when it has another prefix or is malformed."""
    if not isinstance(payload, str) or not payload.startswith(prefix):
        raise PaymentError(f"not a {prefix}… invoice payload: {payload!r}")
    parts = payload[len(prefix):].split(":")
    if len(parts) != 3 or not parts[0] or parts[1] not in SCOPES:
        raise PaymentError(f"malformed invoice payload: {payload!r}")
    try:
        return parts[0], parts[1], int(parts[2])
    except ValueError:
        raise PaymentError(f"malformed invoice payload: {payload!r}") from None


def make_payload(plan_name: str, scope: str, scope_id: int) -> str:
    """``kith:plan:<plan>:<scope>:<id>``. raises PaymentError (bad scope, a ':' in the plan name, too long)."""
    return build_payload(PAYLOAD_PREFIX, "plan", plan_name, scope, scope_id)


def parse_payload(payload: str) -> tuple[str, str, int]:
    """``(plan, scope, scope_id)`` of a payload made by ``make_payload``. raises PaymentError."""
    return split_payload(PAYLOAD_PREFIX, payload)


def _plan(cfg: TiersConfig, name: str) -> Plan:
    plan = cfg.plans.get(name)
    if plan is None:
        raise PaymentError(f"unknown plan {name!r}; plans: {', '.join(cfg.plans) or 'none'}")
    return plan


def invoice_for(plan_name: str, cfg: TiersConfig, *, scope: str = "user", scope_id: int,
                provider_token: str | None = None) -> Invoice:
    """The invoice selling ``plan_name`` for ``scope:scope_id`` (a user, or a whole chat), its default
    title and description in the current language (``i18n``; a plan's own ``title``/``description`` as given).

    provider_token: for non-XTR currencies; default ``$TELEGRAM_PAYMENT_PROVIDER_TOKEN``.
    raises PaymentError for an unknown plan, or a non-XTR plan with no provider token.
    """
    plan = _plan(cfg, plan_name)
    currency = plan.currency.upper()
    token: str | None = ""
    if currency != STARS:
        token = provider_token if provider_token is not None else payment_provider_token()
        if not token:
            raise PaymentError(f"plan {plan_name!r} is priced in {currency}, which needs a payment provider: "
                               "set TELEGRAM_PAYMENT_PROVIDER_TOKEN (or price it in XTR, Telegram Stars)")
    days = plan.days
    renewing = plan.subscription_period is not None and scope == "user"  # a group buys it one-off
    title = i18n.pick(plan.title) or ngettext("{tier} for {n} day", "{tier} for {n} days", days, tier=plan.tier.capitalize(), n=days)
    if plan.description:
        description = i18n.pick(plan.description) or ""
    elif renewing:
        description = ngettext("The {tier} tier for you, renewed every {n} day until you cancel it.",
                               "The {tier} tier for you, renewed every {n} days until you cancel it.", days, n=days, tier=plan.tier)
    elif scope == "chat":
        description = ngettext("{n} day of the {tier} tier for this chat.", "{n} days of the {tier} tier for this chat.", days,
                               n=days, tier=plan.tier)
    else:
        description = ngettext("{n} day of the {tier} tier for you.", "{n} days of the {tier} tier for you.", days,
                               n=days, tier=plan.tier)
    return Invoice(
        plan=plan_name,
        title=title[:_TITLE_MAX],
        description=description[:_DESCRIPTION_MAX],
        payload=make_payload(plan_name, scope, scope_id),
        currency=currency,
        prices=((title[:_TITLE_MAX], plan.price),),
        provider_token=token or "",
        subscription_period=plan.subscription_seconds if renewing else None,
    )


def validate_pre_checkout(payload: str, total_amount: int, currency: str, cfg: TiersConfig,
                          user_id: int | None = None) -> str | None:
    """None when the checkout matches a plan sold now; else a short text for the buyer (Telegram shows
    it and cancels the payment), in the current language. user_id: the payer; a renewing plan's link
    (it can be forwarded) is paid only by the member it was made for."""
    try:
        name, scope, scope_id = parse_payload(payload)
    except PaymentError:
        return _("This invoice is not valid. Please open /billing again.")
    plan = cfg.plans.get(name)
    if plan is None:
        return _("This plan is no longer offered. Please open /billing again.")
    if (currency or "").upper() != plan.currency.upper() or total_amount != plan.price:
        return _("The price of this plan has changed. Please open /billing again.")
    if plan.subscription_period is not None and scope == "user" and user_id is not None and user_id != scope_id:
        return _("This subscription link was made for someone else. Please open /billing yourself.")
    return None


async def apply_successful_payment(
    subs: SubscriptionStore,
    store: DialogueStore,
    charge_id: str,
    payload: str,
    amount: int,
    currency: str,
    user_id: int,
    chat_id: int,
    *,
    subscription_until: datetime | None = None,
    renewal: bool = False,
) -> Subscription | None:
    """Record the payment and extend the paid-for subscription by the plan's days — once per
    ``charge_id`` (``telegram_payment_charge_id``).

    subscription_until: a Telegram Stars subscription's payment (its ``subscription_expiration_date``):
    the subscription runs until then and renews (``SubscriptionStore.run_until``); renewal: it is a
    renewal (``is_recurring`` and not ``is_first_recurring``), not the first payment.

    Returns the subscription after the payment; for a charge already applied, the current one
    (nothing changes). Returns None when the payload is not a Kith plan or the plan no longer exists
    (the payment is still recorded, with tier '' and 0 days, so the owner can refund it; log ERROR).
    """
    if not charge_id:
        raise PaymentError("a successful payment without a charge id")
    try:
        name, scope, scope_id = parse_payload(payload)
        plan: Plan | None = subs.cfg.plans.get(name)
    except PaymentError:
        name, scope, scope_id, plan = payload[:64], "user", user_id, None
    tier_ok = plan is not None and plan.tier in subs.cfg.tiers
    # Shielded: once the payment row is in, the extension must follow (a cancelled half would be lost).
    async with subs.payment_lock:
        with anyio.CancelScope(shield=True):
            result = await _apply(subs, store, charge_id, payload, amount, currency, user_id, chat_id,
                                  name, scope, scope_id, plan if tier_ok else None, subscription_until, renewal)
    return result


async def _apply(subs: SubscriptionStore, store: DialogueStore, charge_id: str, payload: str, amount: int,
                 currency: str, user_id: int, chat_id: int, name: str, scope: str, scope_id: int,
                 plan: Plan | None, until: datetime | None, renewal: bool) -> Subscription | None:
    inserted = await store.billing.add_payment(PaymentRecord(
        charge_id, user_id, chat_id, name, plan.tier if plan else "", plan.days if plan else 0,
        int(amount), (currency or "").upper(), scope, scope_id, subs.clock()))
    if not inserted:
        log.info("payment %s already applied; ignoring the re-delivery", charge_id)
        return await subs.get(scope, scope_id) if plan else None
    if plan is None:
        log.error("payment %s (%s %s by user %s) is for no known plan (payload %r): recorded, not applied; "
                  "refund it or grant by hand", charge_id, amount, currency, user_id, payload)
        return None
    try:
        if until is not None:
            return await subs.run_until(scope, scope_id, plan.tier, until, f"payment:{charge_id}", charge_id=charge_id,
                                        renewal=renewal, period=timedelta(days=plan.subscription_period or plan.days))
        return await subs.extend(scope, scope_id, plan.tier, plan.days, f"payment:{charge_id}")
    except Exception:
        # Not applied: forget the payment so that a re-delivery applies it.
        await store.billing.delete_payment(charge_id)
        raise


async def payments(store: DialogueStore, *, user_id: int | None = None) -> list[dict[str, Any]]:
    """Recorded payments (all, or by one payer), newest first, as dicts (for the CLI and /billing)."""
    return [dataclasses.asdict(p) for p in await store.billing.payments(user_id=user_id)]
