"""An injected clock for tests: tz-aware UTC time that moves only when told (no sleeping)."""
from __future__ import annotations

from datetime import datetime, timedelta


class Clock:
    """Callable returning the current (fake) time; ``advance(hours=1)`` moves it."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw) -> None:
        self.t += timedelta(**kw)
