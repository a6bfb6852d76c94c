"""Sending budgets and FloodWait (docs/design.md §8): ~1 message/s per chat, ~20/min per group, ~30/s overall.

Token buckets with reservations: a caller takes a token now, or reserves the next one and sleeps
until it is due, so waiters are served in order without polling. A ``FloodWait`` from Telegram
blocks the chat (or everything, for calls without a chat) for the seconds it names; the caller then
retries the same call once the wait is over — a FloodWait means Telegram did not execute the call,
so a retry neither loses nor duplicates the message.

``clock`` and ``sleep`` are injectable so tests run on a fake clock.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from pyrogram.errors import FloodWait

from config.models import TelegramSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

CHAT_BURST = 2.0  # a reply split in two goes out at once; the third part waits
PRUNE_EVERY = 4096  # look for idle per-chat buckets after this many new ones


class Bucket:
    """Token bucket: ``rate`` tokens/s, at most ``capacity``; tokens may go negative (reservations)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def delay(self, now: float) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def reserve(self, now: float) -> float:
        """Take a token, possibly one not yet refilled; return how long to wait before using it."""
        self._refill(now)
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0.0 else -self.tokens / self.rate

    def idle(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.capacity


@dataclass
class LimiterStats:
    acquired: int = 0
    waited_s: float = 0.0
    flood_waits: int = 0
    flood_wait_s: float = 0.0
    skipped: int = 0  # best-effort acquisitions refused (progress edits not shown)


class SendLimiter:
    """Per-chat, per-group and global sending budgets plus FloodWait blocks.

    ``await acquire(chat_id)`` waits for a slot; ``try_acquire(chat_id)`` takes one only if free now
    (for best-effort progress edits); ``await call(chat_id, fn)`` acquires, runs ``fn`` and honours
    ``FloodWait`` by waiting and retrying. ``chat_id`` None means a call outside any chat (global only).
    Group chats have negative ids (Telegram's convention for groups and channels).
    """

    def __init__(self, settings: TelegramSettings, *, clock: Clock = time.monotonic, sleep: Sleep = anyio.sleep) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self._global = Bucket(settings.global_per_s, settings.global_per_s, now)
        self._chats: dict[int, Bucket] = {}
        self._groups: dict[int, Bucket] = {}
        self._blocked: dict[int | None, float] = {}  # chat (None = all) → monotonic time the FloodWait ends
        self._new = 0
        self.stats = LimiterStats()

    # ------------------------------------------------------------------ buckets

    def _buckets(self, chat_id: int | None, now: float) -> list[Bucket]:
        out = [self._global]
        if chat_id is None:
            return out
        b = self._chats.get(chat_id)
        if b is None:
            b = self._chats[chat_id] = Bucket(self.settings.per_chat_per_s, CHAT_BURST, now)
            self._new += 1
        out.append(b)
        if chat_id < 0:
            g = self._groups.get(chat_id)
            if g is None:
                per_s = self.settings.per_group_per_min / 60.0
                g = self._groups[chat_id] = Bucket(per_s, max(1.0, self.settings.per_group_per_min / 4), now)
            out.append(g)
        if self._new >= PRUNE_EVERY:
            self._prune(now)
        return out

    def _prune(self, now: float) -> None:
        self._new = 0
        for table in (self._chats, self._groups):
            for key in [k for k, b in table.items() if b.idle(now)]:
                del table[key]
        for blocked in [k for k, until in self._blocked.items() if until <= now]:
            del self._blocked[blocked]

    def blocked_for(self, chat_id: int | None, now: float | None = None) -> float:
        """Seconds left of a FloodWait affecting ``chat_id`` (0 when none)."""
        now = self.clock() if now is None else now
        until = max(self._blocked.get(None, 0.0), self._blocked.get(chat_id, 0.0) if chat_id is not None else 0.0)
        return max(0.0, until - now)

    # ------------------------------------------------------------------ API

    async def acquire(self, chat_id: int | None) -> None:
        """Wait until ``chat_id`` may send (FloodWait over, a token in each of its buckets)."""
        while True:
            now = self.clock()
            blocked = self.blocked_for(chat_id, now)
            if blocked > 0:
                self.stats.waited_s += blocked
                await self.sleep(blocked)
                continue
            buckets = self._buckets(chat_id, now)
            # wait for the chat's own budget first without reserving the shared ones
            own = max((b.delay(now) for b in buckets[1:]), default=0.0)
            if own > 0:
                self.stats.waited_s += own
                await self.sleep(own)
                continue
            wait = max(b.reserve(now) for b in buckets)
            self.stats.acquired += 1
            if wait > 0:
                self.stats.waited_s += wait
                await self.sleep(wait)
            return

    def try_acquire(self, chat_id: int | None) -> bool:
        """Take a slot for ``chat_id`` only if every budget has one now; never waits."""
        now = self.clock()
        if self.blocked_for(chat_id, now) > 0:
            self.stats.skipped += 1
            return False
        buckets = self._buckets(chat_id, now)
        if any(b.delay(now) > 0 for b in buckets):
            self.stats.skipped += 1
            return False
        for b in buckets:
            b.reserve(now)
        self.stats.acquired += 1
        return True

    def flood(self, chat_id: int | None, seconds: float) -> None:
        """Record a FloodWait: nothing goes to ``chat_id`` (everything, for None) for ``seconds``."""
        until = self.clock() + max(0.0, seconds)
        if until > self._blocked.get(chat_id, 0.0):
            self._blocked[chat_id] = until
        self.stats.flood_waits += 1
        self.stats.flood_wait_s += seconds

    async def wait_unblocked(self, chat_id: int | None) -> None:
        """Wait out any FloodWait affecting ``chat_id`` (no budget taken)."""
        while (blocked := self.blocked_for(chat_id)) > 0:
            self.stats.waited_s += blocked
            await self.sleep(blocked)

    async def call(self, chat_id: int | None, fn: Callable[[], Awaitable[T]], *, what: str = "call", budget: bool = True) -> T:
        """Run ``fn`` within the budget; on ``FloodWait`` wait the seconds it names and run it again.

        budget=False: for calls that are not messages (answers to button presses, lookups): only
        FloodWait blocks apply.
        """
        while True:
            if budget:
                await self.acquire(chat_id)
            else:
                await self.wait_unblocked(chat_id)
            try:
                return await fn()
            except FloodWait as e:
                seconds = flood_seconds(e)
                log.warning("FloodWait: %s in chat %s must wait %.0f s; retrying after the wait", what, chat_id, seconds)
                self.flood(chat_id, seconds)


def flood_seconds(e: FloodWait) -> float:
    """The wait a FloodWait names, in seconds (at least 1 when it names none)."""
    value = e.value
    return float(value) if isinstance(value, (int, float)) and value >= 0 else 1.0


__all__ = ["Bucket", "LimiterStats", "SendLimiter", "flood_seconds"]
