"""Credits beside subscriptions (issue #26): packs sold for Stars, answers paid from a balance.

- **Packs** (``tiers.yaml`` ``credit_packs``) are sold like plans (``tiers.payments``), with their own
  invoice payload ``kith:credits:<pack>:<scope>:<id>``: ``pack_invoice`` → ``validate_pack_checkout``
  → ``apply_pack_payment``, which credits the ledger once per ``charge_id`` (the ledger row, key
  ``purchase:<charge id>``, and the payment row are both idempotent, so a re-delivered update, or
  one that comes again after a crash between the two, adds nothing twice).
- **Answers**: when a tier's quota is spent and its ``when_spent`` is ``credits``, ``Admission.admit``
  picks the payer (``payer``: the member's own balance first, then — in a group — the group's) and
  the turn debits the answered message once (``memory.ledger.debit_key``).

The ledger itself is ``memory.ledger.Ledger``; this module holds the rules on top of it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio

import i18n
from config.models import CreditPack, TiersConfig
from config.secrets import payment_provider_token
from i18n import _, ngettext
from memory.ledger import Ledger, LedgerEntry, Posting, expiry_key, purchase_key, refund_key
from memory.store import DialogueStore
from memory.types import PaymentRecord

from .errors import PaymentError
from .payments import STARS, Invoice, build_payload, split_payload

__all__ = ["PACK_PREFIX", "Lot", "apply_pack_payment", "expire_all", "expire_due", "expiring_soon", "is_pack_payload", "lots", "make_pack_payload",
           "pack_invoice", "parse_pack_payload", "payer", "refund_purchase", "validate_pack_checkout"]

log = logging.getLogger(__name__)

PACK_PREFIX = "kith:credits:"
_TITLE_MAX, _DESCRIPTION_MAX = 32, 255  # Telegram's limits


def is_pack_payload(payload: str) -> bool:
    """Whether ``payload`` is a credit pack's (not a plan's)."""
    return isinstance(payload, str) and payload.startswith(PACK_PREFIX)


def make_pack_payload(pack: str, scope: str, scope_id: int) -> str:
    """``kith:credits:<pack>:<scope>:<id>``. raises PaymentError."""
    return build_payload(PACK_PREFIX, "pack", pack, scope, scope_id)


def parse_pack_payload(payload: str) -> tuple[str, str, int]:
    """``(pack, scope, scope_id)`` of a payload made by ``make_pack_payload``. raises PaymentError."""
    return split_payload(PACK_PREFIX, payload)


def pack_title(name: str, pack: CreditPack) -> str:
    """The pack's title in the current language (its own, else "N credits")."""
    return i18n.pick(pack.title) or ngettext("{n} credit", "{n} credits", pack.credits, n=i18n.number(pack.credits)) or name


def pack_invoice(name: str, cfg: TiersConfig, *, scope: str = "user", scope_id: int,
                 provider_token: str | None = None) -> Invoice:
    """The invoice selling pack ``name`` to ``scope:scope_id`` (a member, or a group's balance).
    raises PaymentError for an unknown pack, or a non-XTR one with no provider token."""
    pack = cfg.credit_packs.get(name)
    if pack is None:
        raise PaymentError(f"unknown credit pack {name!r}; packs: {', '.join(cfg.credit_packs) or 'none'}")
    currency = pack.currency.upper()
    token: str | None = ""
    if currency != STARS:
        token = provider_token if provider_token is not None else payment_provider_token()
        if not token:
            raise PaymentError(f"credit pack {name!r} is priced in {currency}, which needs a payment provider: "
                               "set TELEGRAM_PAYMENT_PROVIDER_TOKEN (or price it in XTR, Telegram Stars)")
    title = pack_title(name, pack)
    n = i18n.number(pack.credits)
    if scope == "chat":
        description = ngettext("{n} credit for this group's balance.", "{n} credits for this group's balance.", pack.credits, n=n)
    else:
        description = ngettext("{n} credit for your balance.", "{n} credits for your balance.", pack.credits, n=n)
    return Invoice(plan=name, title=title[:_TITLE_MAX], description=description[:_DESCRIPTION_MAX],
                   payload=make_pack_payload(name, scope, scope_id), currency=currency,
                   prices=((title[:_TITLE_MAX], pack.price),), provider_token=token or "")


def validate_pack_checkout(payload: str, total_amount: int, currency: str, cfg: TiersConfig) -> str | None:
    """None when the checkout matches a pack sold now; else a short text for the buyer."""
    try:
        name, _scope, _id = parse_pack_payload(payload)
    except PaymentError:
        return _("This invoice is not valid. Please open /buy again.")
    pack = cfg.credit_packs.get(name)
    if pack is None:
        return _("This credit pack is no longer offered. Please open /buy again.")
    if (currency or "").upper() != pack.currency.upper() or total_amount != pack.price:
        return _("The price of this credit pack has changed. Please open /buy again.")
    return None


async def apply_pack_payment(ledger: Ledger, store: DialogueStore, cfg: TiersConfig, charge_id: str, payload: str,
                             amount: int, currency: str, user_id: int, chat_id: int) -> Posting | None:
    """Credit the pack paid with ``charge_id`` to the balance the payload names — once per charge.

    The ledger row (``purchase:<charge id>``) goes first: it is the money's record; the payment row
    (``payments``, as for plans, plan ``credits:<pack>``) follows. Both ignore a second delivery.
    Returns the posting (``status`` ``"duplicate"`` for a charge already credited); None when the
    pack is unknown (the payment is recorded with 0 credits, ERROR logged, for the owner to refund).
    """
    if not charge_id:
        raise PaymentError("a successful payment without a charge id")
    try:
        name, scope, scope_id = parse_pack_payload(payload)
    except PaymentError:
        name, scope, scope_id = payload[:64], "user", user_id
    pack = cfg.credit_packs.get(name)
    with anyio.CancelScope(shield=True):  # once money moved, both rows must be written
        posting = None
        if pack is not None:
            now = ledger.now()
            expires = now + timedelta(days=pack.expires_days) if pack.expires_days else None
            posting = await ledger.append(LedgerEntry(
                purchase_key(charge_id), scope, scope_id, "purchase", pack.credits, ts=now, user_id=user_id,
                chat_id=chat_id, charge_id=charge_id, note=name, expires=expires))
        await store.billing.add_payment(PaymentRecord(
            charge_id, user_id, chat_id, f"credits:{name}", "", 0, int(amount), (currency or "").upper(), scope, scope_id,
            ledger.now()))
    if pack is None:
        log.error("payment %s (%s %s by user %s) is for no known credit pack (payload %r): recorded, not credited; "
                  "refund it or grant by hand", charge_id, amount, currency, user_id, payload)
    elif posting is not None and not posting.added:
        log.info("payment %s already credited; ignoring the re-delivery", charge_id)
    return posting


async def payer(ledger: Ledger, chat_id: int, user_id: int, in_group: bool, need: int, overdraft: int) -> tuple[str, int] | None:
    """Who pays ``need`` credits: the member (``("user", id)``) when their balance covers it (down to
    ``-overdraft``), else — in a group — the group (``("chat", id)``); None when neither can."""
    need = max(1, need)
    await expire_due(ledger, "user", user_id)
    if await ledger.balance("user", user_id) + overdraft >= need:
        return "user", user_id
    if not in_group:
        return None
    await expire_due(ledger, "chat", chat_id)
    if await ledger.balance("chat", chat_id) + overdraft >= need:
        return "chat", chat_id
    return None


# ---------------------------------------------------------------------- lots: what is left of each purchase


@dataclass(slots=True)
class Lot:
    """What is left (``remaining`` credits) of one purchase or grant of a balance, as ``lots`` reads
    the ledger. expires: when its unspent credits expire (None: never)."""

    key: str
    kind: str
    amount: int
    remaining: int
    ts: datetime
    expires: datetime | None
    charge_id: str | None = None


def lots(entries: Iterable[LedgerEntry]) -> tuple[list[Lot], int]:
    """Read one balance's rows (oldest first, ``Ledger.entries``) as lots: each purchase or grant,
    and how much of it is left; and the deficit (credits owed: an overdraft). Invariant:
    ``sum(remaining) - deficit == balance``.

    Spending (debits, revokes, refunds or expiries naming no lot) takes from the lots that were not
    expired at that moment, soonest-expiring first, then the oldest of those that never expire; what
    no lot covers is the deficit, which the next purchase or grant pays first. A refund or expiry
    takes from its own lot (``ref``)."""
    out: list[Lot] = []
    by_key: dict[str, Lot] = {}
    deficit = 0

    def spend(n: int, at: datetime) -> None:
        nonlocal deficit
        live = [lot for lot in out if lot.remaining > 0 and (lot.expires is None or lot.expires > at)]
        live.sort(key=lambda lot: (lot.expires is None, lot.expires or lot.ts, lot.ts))
        for lot in live:
            if n <= 0:
                break
            take = min(n, lot.remaining)
            lot.remaining -= take
            n -= take
        deficit += n

    for e in entries:
        assert e.ts is not None
        if e.amount > 0:
            lot = Lot(e.key, e.kind, e.amount, e.amount, e.ts, e.expires, e.charge_id)
            paid = min(deficit, lot.remaining)
            lot.remaining -= paid
            deficit -= paid
            out.append(lot)
            by_key[e.key] = lot
            continue
        n = -e.amount
        own = by_key.get(e.ref or "") if e.kind in ("refund", "expiry") else None
        if own is not None:
            take = min(n, own.remaining)
            own.remaining -= take
            n -= take
        if n:
            spend(n, e.ts)
    return out, deficit


async def expire_due(ledger: Ledger, scope: str, scope_id: int, now: datetime | None = None) -> int:
    """Take what is left of ``scope:scope_id``'s purchases and grants that expired by ``now`` (one
    ``expiry`` row each, keyed by the lot, never below a zero balance); the credits taken."""
    now = now or ledger.now()
    if not await ledger.may_expire(scope, scope_id, now) or not await ledger.expiring(now, scope, scope_id):
        return 0
    taken = 0
    found, _deficit = lots(await ledger.entries(scope, scope_id))
    for lot in found:
        if lot.expires is None or lot.expires > now or lot.remaining <= 0:
            continue
        balance = await ledger.balance(scope, scope_id)
        amount = min(lot.remaining, max(0, balance))  # 0: spent into an overdraft, nothing of it is left (recorded all the same)
        posting = await ledger.append(LedgerEntry(expiry_key(lot.key), scope, scope_id, "expiry", -amount, ts=now,
                                                  ref=lot.key, note=lot.kind))
        if posting.added:
            taken += amount
            log.info("%s:%s: %d unspent credits of %s expired", scope, scope_id, amount, lot.key)
    return taken


async def expire_all(ledger: Ledger, now: datetime | None = None) -> int:
    """``expire_due`` for every balance holding an expired lot; the credits taken."""
    now = now or ledger.now()
    return sum([await expire_due(ledger, scope, scope_id, now) for scope, scope_id in await ledger.expiring(now)])


async def expiring_soon(ledger: Ledger, scope: str, scope_id: int) -> list[Lot]:
    """The lots of ``scope:scope_id`` with credits left that will expire, soonest first."""
    found, _deficit = lots(await ledger.entries(scope, scope_id))
    return sorted((lot for lot in found if lot.expires is not None and lot.remaining > 0), key=lambda lot: lot.expires or lot.ts)


async def refund_purchase(ledger: Ledger, scope: str, scope_id: int, charge_id: str, *, note: str | None = None) -> Posting:
    """Record the refund of the purchase paid with ``charge_id`` (its money went back through
    Telegram): its unspent credits leave the balance (never below zero; 0 when everything it bought
    was spent), once — a second call returns the first refund's posting (``"duplicate"``).
    raises PaymentError when ``scope:scope_id`` has no such purchase."""
    key = purchase_key(charge_id)
    found, _deficit = lots(await ledger.entries(scope, scope_id))
    lot = next((lot for lot in found if lot.key == key), None)
    if lot is None:
        raise PaymentError(f"{scope}:{scope_id} has no credit purchase with charge id {charge_id}")
    balance = await ledger.balance(scope, scope_id)
    amount = min(lot.remaining, max(0, balance))
    return await ledger.append(LedgerEntry(refund_key(charge_id), scope, scope_id, "refund", -amount, ref=key,
                                           charge_id=charge_id, note=note or "refund"))
