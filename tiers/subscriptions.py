"""Subscriptions: which tier a user or a chat has, until when (the ``subscriptions`` table).

One row per ``(scope, scope_id)``: ``scope`` is ``"user"`` (a Telegram user id) or ``"chat"`` (a chat
id; everyone in that chat gets the tier there). ``expires_at`` None = never expires.

``SubscriptionStore`` keeps every row in memory after the first read (``store.billing.subscriptions()``):
one bot process owns the dialogue store and every change goes through this object (``kith sub`` goes
through the running bot), so the cache cannot go stale, and the hot path (``get`` from
``Admission.admit``) never waits for the database.
"""
from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from memory.store import DialogueStore

from config.models import TiersConfig
from memory.schema import from_us, to_us
from memory.types import SubscriptionRecord

from .errors import BadScope, TierError, UnknownTier

__all__ = ["SCOPES", "Subscription", "SubscriptionStore", "parse_target"]

SCOPES = ("user", "chat")


@dataclass(frozen=True, slots=True)
class Subscription(SubscriptionRecord):
    """A tier held by a user or a chat (the stored row: scope, scope_id, tier, expires_at, source,
    updated_at). Times are tz-aware UTC; ``expires_at`` None = never.

    source: who set it — ``"cli"`` (``kith sub grant``), ``"payment:<charge id>"``, or a caller's label.
    renews / charge_id: a Telegram Stars subscription's state (``memory.types.SubscriptionRecord``).
    """

    @property
    def recurring(self) -> bool:
        """True for a Telegram Stars subscription (one that can renew, be cancelled or resumed)."""
        return self.renews is not None and bool(self.charge_id)

    def active(self, now: datetime) -> bool:
        """True when it has not expired at ``now`` (a never-expiring one is always active)."""
        return self.expires_at is None or _utc(now) < self.expires_at

    @property
    def target(self) -> str:
        """``"user:<id>"`` or ``"chat:<id>"`` (the CLI's notation)."""
        return f"{self.scope}:{self.scope_id}"


def parse_target(text: str) -> tuple[str, int]:
    """``"user:123"`` → ``("user", 123)``; ``"chat:-100123"`` → ``("chat", -100123)``. raises BadScope."""
    scope, sep, ident = text.strip().partition(":")
    scope = scope.strip().lower()
    if not sep or scope not in SCOPES:
        raise BadScope(f"{text!r}: expected user:<id> or chat:<id>")
    try:
        return scope, int(ident.strip())
    except ValueError:
        raise BadScope(f"{text!r}: the id must be a whole number") from None


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _check_scope(scope: str, scope_id: int) -> None:
    if scope not in SCOPES:
        raise BadScope(f"scope must be 'user' or 'chat', not {scope!r}")
    if not isinstance(scope_id, int) or isinstance(scope_id, bool):
        raise BadScope(f"scope_id must be an int, not {scope_id!r}")


class SubscriptionStore:
    """Read and change subscriptions, through ``store``'s connection, cached in memory.

    cfg: the tiers (for checking tier names and comparing tiers in ``extend``).
    clock: the current tz-aware UTC time.
    max_age_s: the cache is read again when older than this (seconds), so a grant written by another
    process sharing the store (PostgreSQL) applies within that time; None = never.
    Every method is async and must run on the event loop that owns ``store``.
    """

    def __init__(self, store: DialogueStore, cfg: TiersConfig, clock: Callable[[], datetime],
                 max_age_s: float | None = 60.0) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.max_age_s = max_age_s
        self._loaded_at = 0.0  # time.monotonic() of the last read
        self._cache: dict[tuple[str, int], Subscription] | None = None
        self._lock = anyio.Lock()  # changes are read-modify-write: one at a time
        self.payment_lock = anyio.Lock()  # payments.apply_successful_payment: one at a time
        self.owners: frozenset[int] = frozenset()  # the bot's owners: hold ``cfg.owners_tier()`` (``get``)

    # ------------------------------------------------------------ reads

    async def load(self) -> None:
        """Read every subscription into memory (once, then again when older than ``max_age_s``)."""
        if self._cache is None or self._stale():
            async with self._lock:
                if self._stale():
                    self._cache = None
                await self._cached()

    def _stale(self) -> bool:
        return self.max_age_s is not None and time.monotonic() - self._loaded_at > self.max_age_s

    def reload(self) -> None:
        """Read the subscriptions from the store again at the next call (they changed behind this
        object's back, e.g. a group's moved to its supergroup's id)."""
        self._cache = None

    async def get(self, scope: str, scope_id: int) -> Subscription | None:
        """The subscription of ``scope:scope_id`` (expired ones too; check ``active(now)``), or None.
        An owner of the bot (``owners``: ``telegram.owners``, the host at the terminal) holds the
        owners' tier (tiers.yaml ``owner_tier``) as a standing subscription, whatever is stored."""
        await self.load()
        assert self._cache is not None
        if scope == "user" and scope_id in self.owners:
            tier = self.cfg.owners_tier()
            return Subscription("user", scope_id, tier, None, "owner", _utc(self.clock()))
        return self._cache.get((scope, scope_id))

    async def list(self, expired: bool = False) -> builtins.list[Subscription]:
        """The active subscriptions (and the expired ones too when ``expired``), by scope and id."""
        await self.load()
        assert self._cache is not None
        now = self.clock()
        subs = [s for s in self._cache.values() if expired or s.active(now)]
        return sorted(subs, key=lambda s: (s.scope, s.scope_id))

    # ------------------------------------------------------------ changes

    async def grant(self, scope: str, scope_id: int, tier: str, days: float | None, source: str) -> Subscription:
        """Set ``scope:scope_id`` to ``tier`` for ``days`` from now (None = never expires), replacing
        whatever it had — except a Telegram Stars subscription's state (``renews``, ``charge_id``),
        which is kept: Telegram still renews (or not) and /billing still cancels or resumes it.
        raises UnknownTier, BadScope, TierError (days ≤ 0)."""
        self._check(scope, scope_id, tier, days)
        async with self._lock:
            now = _utc(self.clock())
            expires = None if days is None else now + timedelta(days=days)
            new = Subscription(scope, scope_id, tier, expires, source, now)
            cur = (await self._cached()).get((scope, scope_id))
            if cur is not None and cur.recurring:
                new = dataclasses.replace(new, renews=cur.renews, charge_id=cur.charge_id)
            return await self._put(new)

    async def extend(self, scope: str, scope_id: int, tier: str, days: float, source: str) -> Subscription:
        """Add ``days`` of ``tier`` (what a payment does).

        - no subscription, or an expired one: ``tier`` from now for ``days``;
        - an active one of the same or a worse tier: ``tier`` from its expiry + ``days`` (so paying
          early loses nothing, and an upgrade keeps the time left); a never-expiring one of the same
          tier stays never-expiring; a never-expiring one of a worse tier becomes ``tier`` from now;
        - an active one of a *better* tier (or one not in tiers.yaml any more, which ranks lowest):
          the better tier is kept — never worse off for paying — until the later of its expiry and
          now + ``days``.

        raises UnknownTier, BadScope, TierError (days ≤ 0 or None).
        """
        if days is None:
            raise TierError("extend needs a number of days (use grant for a never-expiring subscription)")
        self._check(scope, scope_id, tier, days)
        async with self._lock:
            now = _utc(self.clock())
            cur = (await self._cached()).get((scope, scope_id))
            span = timedelta(days=days)
            if cur is None or not cur.active(now):
                new = Subscription(scope, scope_id, tier, now + span, source, now)
            elif self._rank(cur.tier) <= self.cfg.rank(tier):
                expires = (None if cur.tier == tier else now + span) if cur.expires_at is None else cur.expires_at + span
                new = Subscription(scope, scope_id, tier, expires, source, now)
            else:  # a better tier is active: keep it
                expires = None if cur.expires_at is None else max(cur.expires_at, now + span)
                new = Subscription(scope, scope_id, cur.tier, expires, source, now)
            if cur is not None and cur.recurring:  # a Telegram subscription still renews (or not) as before
                new = dataclasses.replace(new, renews=cur.renews, charge_id=cur.charge_id)
            return await self._put(new)

    async def shorten(self, scope: str, scope_id: int, tier: str, days: float) -> Subscription | None:
        """Take ``days`` of ``tier`` back from ``scope:scope_id`` (a refunded payment): its expiry moves
        earlier by ``days``; when that is now or before, the subscription ends (removed). Nothing
        changes when it has no subscription of ``tier`` or one that never expires. The subscription
        after it (None: none left)."""
        _check_scope(scope, scope_id)
        async with self._lock:
            now = _utc(self.clock())
            cache = await self._cached()
            cur = cache.get((scope, scope_id))
            if cur is None or cur.tier != tier or cur.expires_at is None or days <= 0:
                return cur
            expires = cur.expires_at - timedelta(days=days)
            if expires > now:
                return await self._put(dataclasses.replace(cur, expires_at=expires, updated_at=now))
            await self.store.billing.delete_subscription(scope, scope_id)
            cache.pop((scope, scope_id), None)
            return None

    async def run_until(self, scope: str, scope_id: int, tier: str, until: datetime, source: str, *, charge_id: str,
                        renewal: bool, period: timedelta) -> Subscription:
        """A Telegram Stars subscription was paid: ``tier`` runs until ``until`` (Telegram's
        ``subscription_expiration_date``) and renews (``renews`` True).

        charge_id: this payment's charge id. The first payment's (``renewal`` False) is kept as the
        subscription's (what cancelling it names); a renewal keeps the one stored.

        - no subscription, or an expired one: ``tier`` until ``until``;
        - an active one of the same or a worse tier: a renewal of the stored Telegram subscription runs
          one ``period`` past its current expiry (at least to ``until``: time bought besides, e.g. a
          one-off plan, is kept); otherwise the time left is added to ``until`` (never worse off for
          subscribing early); a never-expiring one of the same tier stays never-expiring;
        - an active one of a *better* tier: kept, until the later of its expiry and ``until``.

        raises UnknownTier, BadScope.
        """
        self._check(scope, scope_id, tier, None)
        async with self._lock:
            now = _utc(self.clock())
            until = _utc(until)
            cur = (await self._cached()).get((scope, scope_id))
            keep = cur.charge_id if renewal and cur is not None and cur.recurring else None
            expires: datetime | None
            if cur is None or not cur.active(now):
                new_tier, expires = tier, until
            elif self._rank(cur.tier) <= self.cfg.rank(tier):
                new_tier = tier
                if cur.expires_at is None:
                    expires = None if cur.tier == tier else until
                elif keep is not None:
                    expires = max(until, cur.expires_at + period)
                else:
                    expires = until + max(cur.expires_at - now, timedelta(0))
            else:  # a better tier is active: keep it
                new_tier = cur.tier
                expires = None if cur.expires_at is None else max(cur.expires_at, until)
            return await self._put(Subscription(scope, scope_id, new_tier, expires, source, now, True, keep or charge_id))

    async def set_renews(self, scope: str, scope_id: int, renews: bool) -> Subscription | None:
        """Record that the Telegram subscription of ``scope:scope_id`` renews (resumed) or not
        (cancelled); None (nothing changed) when it has no Telegram subscription."""
        _check_scope(scope, scope_id)
        async with self._lock:
            cur = (await self._cached()).get((scope, scope_id))
            if cur is None or not cur.recurring:
                return None
            return await self._put(dataclasses.replace(cur, renews=renews, updated_at=_utc(self.clock())))

    async def revoke(self, scope: str, scope_id: int) -> bool:
        """Remove the subscription of ``scope:scope_id``; True if there was one."""
        _check_scope(scope, scope_id)
        async with self._lock:
            cache = await self._cached()
            await self.store.billing.delete_subscription(scope, scope_id)
            return cache.pop((scope, scope_id), None) is not None

    # ------------------------------------------------------------ plumbing

    def _rank(self, tier: str) -> float:
        return self.cfg.rank(tier) if tier in self.cfg.tiers else float("-inf")

    def _check(self, scope: str, scope_id: int, tier: str, days: float | None) -> None:
        _check_scope(scope, scope_id)
        if tier not in self.cfg.tiers:
            raise UnknownTier(f"unknown tier {tier!r}; tiers: {', '.join(self.cfg.tiers)}")
        if days is not None and not days > 0:
            raise TierError(f"days must be more than 0, not {days!r}")

    async def _cached(self) -> dict[tuple[str, int], Subscription]:
        """The cache, loading it if needed (call with ``_lock`` held)."""
        if self._cache is None:
            self._loaded_at = time.monotonic()
            self._cache = {(r.scope, r.scope_id): Subscription(*dataclasses.astuple(r))
                           for r in await self.store.billing.subscriptions()}
        return self._cache

    async def _put(self, sub: Subscription) -> Subscription:
        """Upsert ``sub`` (call with ``_lock`` held); the database first, then the cache."""
        cache = await self._cached()
        await self.store.billing.put_subscription(sub)
        # Keep exactly what the database holds (microsecond precision).
        stored = Subscription(
            sub.scope, sub.scope_id, sub.tier,
            None if sub.expires_at is None else from_us(to_us(sub.expires_at)),
            sub.source, from_us(to_us(sub.updated_at)), sub.renews, sub.charge_id,
        )
        cache[(sub.scope, sub.scope_id)] = stored
        return stored

