"""Subscriptions and payments (``tiers`` keeps their meaning: ``tiers.subscriptions``,
``tiers.payments``, ``tiers.credits``): the ``subscriptions`` and ``payments`` tables of the dialogue
store's database.

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``); every write is
committed before it returns, and times round-trip to the microsecond (tz-aware UTC). The tables come
with the dialogue store's schema (version 2; ``renews`` and ``charge_id`` of a subscription: version 6).
"""
from __future__ import annotations

from typing import Any

from .sql_domain import SqlDomainStore, ts, us
from .types import PaymentRecord, SubscriptionRecord

__all__ = ["BillingStore"]


class BillingStore(SqlDomainStore):
    """Who holds which tier until when (one subscription per ``(scope, scope_id)``: ``"user"`` or
    ``"chat"`` and its id) and the payments received (one per Telegram ``charge_id``).

    Every method raises MemoryStoreError when the database fails."""

    DOMAIN = "subscriptions and payments"

    def _payments_select(self) -> str:
        return ("SELECT charge_id, user_id, chat_id, plan, tier, days, amount, currency, scope, scope_id,"
                f" {self._us('paid_at')} FROM payments")

    # ------------------------------------------------------------ subscriptions

    async def subscriptions(self) -> list[SubscriptionRecord]:
        """Every stored subscription, by ``(scope, scope_id)``; ``expires_at`` None = never expires."""
        rows = await self._query(
            f"SELECT scope, scope_id, tier, {self._us('expires_at')}, source, {self._us('updated_at')}, renews, charge_id"
            " FROM subscriptions ORDER BY scope, scope_id")
        return [SubscriptionRecord(scope, int(scope_id), tier, ts(expires), source, ts(updated),
                                   None if renews is None else bool(renews), charge_id)
                for scope, scope_id, tier, expires, source, updated, renews, charge_id in rows]

    async def put_subscription(self, sub: SubscriptionRecord) -> None:
        """Insert or replace the subscription of ``(sub.scope, sub.scope_id)`` (every column); naive
        times are taken as UTC."""
        await self._query(
            "INSERT INTO subscriptions (scope, scope_id, tier, expires_at, source, updated_at, renews, charge_id)"
            " VALUES (?, ?, ?, {ts}, ?, {ts}, ?, ?)"
            " ON CONFLICT (scope, scope_id) DO UPDATE SET tier = excluded.tier, expires_at = excluded.expires_at,"
            " source = excluded.source, updated_at = excluded.updated_at, renews = excluded.renews,"
            " charge_id = excluded.charge_id",
            [sub.scope, sub.scope_id, sub.tier, us(sub.expires_at), sub.source, us(sub.updated_at), sub.renews,
             sub.charge_id])

    async def delete_subscription(self, scope: str, scope_id: int) -> bool:
        """Delete the subscription of ``scope:scope_id``; True when there was one."""
        return bool(await self._query("DELETE FROM subscriptions WHERE scope = ? AND scope_id = ? RETURNING scope",
                                      [scope, scope_id]))

    # ------------------------------------------------------------ payments

    async def add_payment(self, payment: PaymentRecord) -> bool:
        """Record ``payment`` once per ``charge_id``; False when that charge is already recorded (a
        re-delivered ``successful_payment``: the stored row is kept as it was)."""
        p = payment
        rows = await self._query(
            "INSERT INTO payments (charge_id, user_id, chat_id, plan, tier, days, amount, currency, scope, scope_id, paid_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {ts}) ON CONFLICT (charge_id) DO NOTHING RETURNING charge_id",
            [p.charge_id, p.user_id, p.chat_id, p.plan, p.tier, p.days, p.amount, p.currency, p.scope, p.scope_id,
             us(p.paid_at)])
        return bool(rows)

    async def delete_payment(self, charge_id: str) -> None:
        """Forget the payment ``charge_id`` (its extension could not be applied: a re-delivery applies it
        again); nothing when it is not recorded."""
        await self._query("DELETE FROM payments WHERE charge_id = ?", [charge_id])

    async def payments(self, *, user_id: int | None = None) -> list[PaymentRecord]:
        """Recorded payments (all, or those ``user_id`` paid), newest ``paid_at`` first, ties by charge id."""
        sql = self._payments_select()
        params: list[Any] = []
        if user_id is not None:
            sql += " WHERE user_id = ?"
            params.append(user_id)
        return [_payment(r) for r in await self._query(sql + " ORDER BY paid_at DESC, charge_id", params)]

    async def payment(self, charge_id: str) -> PaymentRecord | None:
        """The payment recorded for ``charge_id`` (one lookup by the key), or None."""
        rows = await self._query(self._payments_select() + " WHERE charge_id = ?", [charge_id])
        return _payment(rows[0]) if rows else None


def _payment(r: tuple[Any, ...]) -> PaymentRecord:
    """A row of ``BillingStore._payments_select`` as a ``PaymentRecord``."""
    return PaymentRecord(r[0], int(r[1]), int(r[2]), r[3], r[4], int(r[5]), int(r[6]), r[7], r[8], int(r[9]),
                         ts(r[10]))
