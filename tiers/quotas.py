"""Daily quotas (per UTC day, per user and per chat) and the per-member message rate in groups.

Counting rules (``Quotas`` of tiers.yaml; -1 = unlimited):

- ``requests_per_day``: an alias with its own entry is limited by that entry alone; every alias
  without one shares the ``"*"`` entry (all of them together); no entry and no ``"*"`` = unlimited.
  So ``{"*": 30}`` is 30 requests a day to any models, and ``{smart: 10, "*": 100}`` is 10 to smart
  plus 100 to the others.
- ``tokens_per_day``: prompt + completion tokens of the user, every model.
- ``chat_requests_per_day`` / ``chat_tokens_per_day``: all members of a chat together, every model.
- ``images_per_day``: images generated for the user; ``audio_seconds_per_day``: seconds of the
  user's voice notes, audio files and video notes transcribed.
- ``tool_calls_per_day``: the tool calls the model made for the user (``usage.kind = 'tool'``, one
  row per call, every plugin together).

Requests count the chat turns (``usage.kind = 'chat'``); tokens count every call that has tokens
(chat turns and photo descriptions); images and audio seconds count their own kinds. A quota is spent
when ``used >= limit``; the call that crosses a token limit is still served (tokens are known only
afterwards), the next one is refused; an audio quota is checked with the recording's duration first.

The counters of a day start from that day's stored ``usage`` rows, read at start and again each time
the day (by the clock in use: the wall clock, or a replay's transcript time) turns — never from zero,
so usage stored by an earlier run over the same days counts the same the second time.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from config.models import UNLIMITED, Quotas, TiersConfig
from memory.store import DialogueStore
from memory.types import UsageCount

from .daily import DailyCounters, utc_day
from .errors import TierError, UnknownTier

__all__ = ["ANY_MODEL", "MAX_IMAGES", "QuotaDecision", "QuotaTracker", "RateLimiter", "TodayUsage", "images_per_request",
           "next_midnight", "request_usage"]

log = logging.getLogger(__name__)

ANY_MODEL = "*"
MAX_IMAGES = 10  # the most images one request asks for (OpenAI's ``n`` limit), whatever the tier says


def next_midnight(now: datetime) -> datetime:
    """The next 00:00 UTC after ``now`` (when the daily quotas reset)."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    return datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class QuotaDecision:
    """The answer of ``QuotaTracker.check``.

    allowed: the call may go ahead. When not: ``quota`` names the spent quota (``"requests_per_day"``,
    ``"tokens_per_day"``, ``"chat_requests_per_day"``, ``"chat_tokens_per_day"``; ``check_media``:
    ``"images_per_day"``, ``"audio_seconds_per_day"``; ``check_tools``: ``"tool_calls_per_day"``),
    ``model`` the alias whose request quota it is (``"*"`` = the shared one; None for the others),
    ``limit`` and ``used`` today's numbers (``check_tools`` gives them when allowed too), ``resets_at``
    the next 00:00 UTC.
    """

    allowed: bool
    quota: str | None = None
    model: str | None = None
    limit: int = UNLIMITED
    used: int = 0
    resets_at: datetime | None = None

    @property
    def per_chat(self) -> bool:
        """The spent quota is the whole chat's, not the user's."""
        return bool(self.quota and self.quota.startswith("chat_"))


@dataclass(frozen=True, slots=True)
class TodayUsage:
    """What a user and their chat used today (UTC), for /usage. requests: per alias."""

    requests: dict[str, int]
    tokens: int
    chat_requests: int
    chat_tokens: int
    resets_at: datetime
    images: int = 0
    audio_seconds: float = 0.0
    tool_calls: int = 0
    pages: int = 0


@dataclass
class _User:
    requests: Counter[str] = field(default_factory=Counter)  # alias -> requests today
    tokens: int = 0
    images: int = 0
    seconds: float = 0.0
    tool_calls: int = 0
    pages: int = 0


@dataclass(frozen=True, slots=True)
class _Call:
    """One billed call, as ``QuotaTracker.record`` is told it."""

    chat_id: int
    user_id: int
    alias: str
    tokens: int
    kind: str
    images: int
    seconds: float
    pages: int = 0


def request_usage(q: Quotas, requests: dict[str, int], alias: str) -> tuple[int, int]:
    """``(used, limit)`` of the request quota that limits ``alias`` today: its own entry, or the
    ``"*"`` entry shared by every alias without one (then ``used`` counts all of those together);
    ``limit`` -1 = unlimited. ``requests``: today's requests per alias (``TodayUsage.requests``)."""
    if alias in q.requests_per_day:
        return requests.get(alias, 0), q.requests_per_day[alias]
    if ANY_MODEL in q.requests_per_day:
        return sum(n for a, n in requests.items() if a not in q.requests_per_day), q.requests_per_day[ANY_MODEL]
    return requests.get(alias, 0), UNLIMITED


def images_per_request(q: Quotas) -> int:
    """The most images one /image (draw, edit, variations) makes on a tier with quotas ``q``:
    ``images_per_request`` (-1: ``MAX_IMAGES``), at least 1 and at most ``MAX_IMAGES``."""
    n = q.images_per_request
    return MAX_IMAGES if n < 0 else min(MAX_IMAGES, max(1, n))


class QuotaTracker(DailyCounters[_Call]):
    """Today's counters, rebuilt from the ``usage`` table and kept in memory in between.

    ``load()`` reads the rows of the current UTC day (by ``clock``) at the first call, and again
    whenever the day has turned since the last read (it costs nothing otherwise; ``Admission`` awaits
    it before every decision). So the counters of a day always start from what the table holds for
    that day — usage written by an earlier run, another process or a replay of the same days counts
    — and never from zero. ``record`` adds each billed call (call it whenever a ``UsageRecord`` is
    written) so the counters stay equal to the table in between. ``check``, ``check_media`` and
    ``today`` read the counters of the day last loaded.
    """

    def __init__(self, store: DialogueStore, cfg: TiersConfig, clock: Callable[[], datetime]) -> None:
        super().__init__(clock)
        self.store = store
        self.cfg = cfg
        self._users: dict[int, _User] = {}
        self._chat_requests: Counter[int] = Counter()  # chat -> requests today
        self._chat_tokens: Counter[int] = Counter()  # chat -> tokens today

    @property
    def day(self) -> date | None:
        """The UTC day the counters are of (None before ``load()``)."""
        return self._day

    async def _rebuild(self, day: date) -> None:
        """Replace the counters with ``day``'s rows of the ``usage`` table (queued rows are committed
        first, so nothing recorded before is missed; ``DailyCounters._read``: nor during the read)."""
        start = datetime.combine(day, time(0), tzinfo=UTC)
        rows: list[UsageCount]
        rows, arrived = await self._read(day, lambda: self.store.usage.counts(start, start + timedelta(days=1)))
        self._reset(day)
        for r in rows:
            self._add(r.chat_id, r.user_id, r.model, r.calls, r.tokens, kind=r.kind, images=r.images, seconds=r.seconds,
                      pages=r.pages)
        if arrived:
            log.warning("quota counters of %s: %d calls recorded while the usage table was read; counted again", day,
                        len(arrived))
        for call in arrived:
            self._count(call)

    def record(self, chat_id: int, user_id: int, alias: str, tokens: int, *, kind: str = "chat", images: int = 0,
               seconds: float = 0.0, pages: int = 0, ts: datetime | None = None) -> None:
        """Count one billed call of ``user_id`` in ``chat_id`` to model ``alias`` using ``tokens``
        (prompt + completion), of ``kind`` (only ``"chat"`` counts as a request), with ``images``
        generated and ``seconds`` of audio transcribed, made at ``ts`` (its ``UsageRecord.ts``;
        default now by the clock). Counted only when ``ts`` falls on the day the counters are of:
        another day's call is counted by the ``load()`` that reads that day from the table. Before
        the first ``load()`` it does nothing: load reads the table itself."""
        if self._before_first_load():
            log.debug("quota record before load ignored (the usage table is read at load)")
            return
        day = utc_day(ts if ts is not None else self.clock())
        call = _Call(chat_id, user_id, alias, max(0, int(tokens)), kind, max(0, images), max(0.0, seconds), max(0, pages))
        if self._held(day, call):
            return  # counted after the read in progress
        if day == self._day:
            self._count(call)
        else:
            log.debug("quota record of %s not counted in memory (the counters are of %s)", day, self._day)

    def check_media(self, tier: str, user_id: int, *, images: int = 0, seconds: float = 0.0, pages: int = 0) -> QuotaDecision:
        """May ``user_id`` at ``tier`` have ``images`` more images generated / ``seconds`` more audio
        transcribed / ``pages`` more document pages read today? The spent quota is
        ``"images_per_day"``, ``"audio_seconds_per_day"`` or ``"pages_per_day"``.
        raises UnknownTier; TierError before ``load()``."""
        self._require_loaded()
        t = self.cfg.tiers.get(tier)
        if t is None:
            raise UnknownTier(f"unknown tier {tier!r}")
        q, user = t.quotas, self._users.get(user_id) or _User()
        resets = next_midnight(self.clock())
        if images and q.images_per_day != UNLIMITED and user.images + images > q.images_per_day:
            return QuotaDecision(False, "images_per_day", None, q.images_per_day, user.images, resets)
        if seconds and q.audio_seconds_per_day != UNLIMITED and user.seconds + seconds > q.audio_seconds_per_day:
            return QuotaDecision(False, "audio_seconds_per_day", None, q.audio_seconds_per_day, round(user.seconds), resets)
        if pages and q.pages_per_day != UNLIMITED and user.pages + pages > q.pages_per_day:
            return QuotaDecision(False, "pages_per_day", None, q.pages_per_day, user.pages, resets)
        return QuotaDecision(True, resets_at=resets)

    def check_tools(self, tier: str, user_id: int) -> QuotaDecision:
        """May the model make one more tool call for ``user_id`` at ``tier`` today? The spent quota is
        ``"tool_calls_per_day"``. raises UnknownTier; TierError before ``load()``."""
        self._require_loaded()
        t = self.cfg.tiers.get(tier)
        if t is None:
            raise UnknownTier(f"unknown tier {tier!r}")
        limit = t.quotas.tool_calls_per_day
        used = (self._users.get(user_id) or _User()).tool_calls
        resets = next_midnight(self.clock())
        if limit != UNLIMITED and used >= limit:
            return QuotaDecision(False, "tool_calls_per_day", None, limit, used, resets)
        return QuotaDecision(True, limit=limit, used=used, resets_at=resets)

    def check(self, tier: str, chat_id: int, user_id: int, alias: str) -> QuotaDecision:
        """May ``user_id`` in ``chat_id``, at ``tier``, make one more call to ``alias`` today?

        Checks the user's request quota for ``alias``, their tokens, then the chat's requests and
        tokens; the first spent one is returned. raises UnknownTier; TierError before ``load()``.
        """
        self._require_loaded()
        t = self.cfg.tiers.get(tier)
        if t is None:
            raise UnknownTier(f"unknown tier {tier!r}")
        q: Quotas = t.quotas
        now = self.clock()
        user = self._users.get(user_id) or _User()
        resets = next_midnight(now)

        def spent(quota: str, limit: int, used: int, model: str | None = None) -> QuotaDecision:
            return QuotaDecision(False, quota, model, limit, used, resets)

        key, limit = self._request_limit(q, alias)
        if limit != UNLIMITED:
            used = user.requests[alias] if key == alias else sum(
                n for a, n in user.requests.items() if a not in q.requests_per_day)
            if used >= limit:
                return spent("requests_per_day", limit, used, key)
        if q.tokens_per_day != UNLIMITED and user.tokens >= q.tokens_per_day:
            return spent("tokens_per_day", q.tokens_per_day, user.tokens)
        if q.chat_requests_per_day != UNLIMITED and self._chat_requests[chat_id] >= q.chat_requests_per_day:
            return spent("chat_requests_per_day", q.chat_requests_per_day, self._chat_requests[chat_id])
        if q.chat_tokens_per_day != UNLIMITED and self._chat_tokens[chat_id] >= q.chat_tokens_per_day:
            return spent("chat_tokens_per_day", q.chat_tokens_per_day, self._chat_tokens[chat_id])
        return QuotaDecision(True, resets_at=resets)

    def today(self, chat_id: int, user_id: int) -> TodayUsage:
        """Today's counts for ``user_id`` and for ``chat_id`` (for /usage). TierError before ``load()``."""
        self._require_loaded()
        user = self._users.get(user_id) or _User()
        return TodayUsage(dict(user.requests), user.tokens, self._chat_requests[chat_id], self._chat_tokens[chat_id],
                          next_midnight(self.clock()), user.images, round(user.seconds, 1), user.tool_calls, user.pages)

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _request_limit(q: Quotas, alias: str) -> tuple[str | None, int]:
        """(which entry limits ``alias``: the alias, ``"*"`` or None, its limit)."""
        if alias in q.requests_per_day:
            return alias, q.requests_per_day[alias]
        if ANY_MODEL in q.requests_per_day:
            return ANY_MODEL, q.requests_per_day[ANY_MODEL]
        return None, UNLIMITED

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise TierError("QuotaTracker: await load() first")

    def _reset(self, day: date) -> None:
        self._day = day
        self._users = {}
        self._chat_requests = Counter()
        self._chat_tokens = Counter()

    def _count(self, c: _Call) -> None:
        self._add(c.chat_id, c.user_id, c.alias, 1, c.tokens, kind=c.kind, images=c.images, seconds=c.seconds, pages=c.pages)

    def _add(self, chat_id: int, user_id: int, alias: str, n: int, tokens: int, *, kind: str = "chat", images: int = 0,
             seconds: float = 0.0, pages: int = 0) -> None:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User()
        if kind == "chat":
            user.requests[alias] += n
            self._chat_requests[chat_id] += n
        elif kind == "tool":
            user.tool_calls += n
        user.tokens += tokens
        user.images += images
        user.seconds += seconds
        user.pages += pages
        self._chat_tokens[chat_id] += tokens


class RateLimiter:
    """A sliding-window message rate per (chat, member): at most ``per_minute`` accepted messages in
    any 60 s. A refused message is not counted, so a flooder is slowed to the rate, not locked out,
    and other members of the chat are not affected."""

    def __init__(self, clock: Callable[[], datetime], window_s: float = 60.0) -> None:
        self.clock = clock
        self.window_s = window_s
        self._hits: dict[tuple[int, int], deque[float]] = {}
        self._calls = 0

    def hit(self, chat_id: int, user_id: int, per_minute: int) -> float | None:
        """Count one message of ``user_id`` in ``chat_id`` if the rate allows it and return None;
        else return the seconds until it would be allowed (the message is not counted).
        ``per_minute`` -1 = unlimited (always None, nothing kept)."""
        if per_minute == UNLIMITED:
            return None
        now = self.clock().timestamp()
        self._calls += 1
        if self._calls % 1024 == 0:
            self._sweep(now)
        q = self._hits.setdefault((chat_id, user_id), deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= per_minute:
            return max(0.0, q[0] + self.window_s - now) if q else self.window_s
        q.append(now)
        return None

    def _sweep(self, now: float) -> None:
        """Forget members with no message inside the window (keeps memory bounded)."""
        stale = [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window_s]
        for k in stale:
            del self._hits[k]
