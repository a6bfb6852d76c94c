"""Counters of the current UTC day, kept in memory and rebuilt from the stored usage.

``QuotaTracker`` (today's quotas) and ``Budget`` (the host's spend of the day and the month) both
count every billed call in memory and read the ``usage`` table again when the UTC day turns, so a
day's counters always start from what the table holds — never from zero. ``DailyCounters`` is that
shared part: ``load()`` (the first call, then again only when the day turned; without I/O
otherwise) and the read of the table that misses no call recorded while it runs (``_read``).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Generic, TypeVar

import anyio

__all__ = ["REBUILD_READS", "DailyCounters", "utc_day"]

REBUILD_READS = 3  # reads of the usage table before calls recorded during them are added as they are

Row = TypeVar("Row")
Call = TypeVar("Call")


def utc_day(now: datetime) -> date:
    """The UTC date of ``now`` (a naive ``now`` is taken as UTC)."""
    return (now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)).date()


class DailyCounters(Generic[Call]):
    """The loading of in-memory counters of a UTC day (a subclass counts; see the module docstring).

    A subclass implements ``_rebuild(day)`` (replace the counters with what the table holds for
    ``day``, reading it through ``_read``) and routes each recorded call of the day being read to
    ``_arrived`` (``_held``); ``_loaded_now()`` runs after each load that read the table."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self._loaded = False
        self._lock = anyio.Lock()
        self._day: date | None = None
        self._rebuilding: date | None = None  # the day being read from the table, while it is
        self._arrived: list[Call] = []  # calls of that day recorded during the read

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def load(self) -> None:
        """Make the counters today's (UTC, by ``clock``): at the first call, and whenever the day
        has turned since the last one, read the table (``_rebuild``); otherwise return at once,
        without I/O."""
        if self._loaded and utc_day(self.clock()) == self._day:
            return
        async with self._lock:
            day = utc_day(self.clock())
            if self._loaded and day == self._day:
                return
            await self._rebuild(day)
            self._loaded = True
        self._loaded_now()

    async def _rebuild(self, day: date) -> None:
        raise NotImplementedError

    def _loaded_now(self) -> None:
        """After a load that read the table (e.g. thresholds to check again)."""

    async def _read(self, day: date, read: Callable[[], Awaitable[list[Row]]]) -> tuple[list[Row], list[Call]]:
        """``(rows, arrived)``: what ``read()`` returned for ``day``, and the calls of ``day``
        recorded while it ran, to count on top. A call recorded during a read may or may not be in
        what it returns, so the read is repeated until one completes with none recorded meanwhile
        (at most ``REBUILD_READS`` times; after that the calls of the last read are returned, which
        can count one twice but never misses one)."""
        rows: list[Row] = []
        self._rebuilding = day
        try:
            for _attempt in range(REBUILD_READS):
                self._arrived = []
                rows = await read()
                if not self._arrived:
                    break
            arrived, self._arrived = self._arrived, []
        finally:
            self._rebuilding = None
        return rows, arrived

    def _held(self, day: date, call: Call) -> bool:
        """True when ``call`` (made on ``day``) is kept to be counted after the read in progress."""
        if day == self._rebuilding:
            self._arrived.append(call)
            return True
        return False

    def _before_first_load(self) -> bool:
        """True before the first ``load()`` began: a call recorded then is counted by that read."""
        return not self._loaded and self._rebuilding is None
