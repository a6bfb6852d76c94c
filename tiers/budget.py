"""The host's spending cap (``budget:`` of kith.yaml, issue #26): US dollars per UTC day and per UTC
calendar month over every paid call — chat turns, photo descriptions, transcriptions, images, tools.

Like the quotas (``tiers.quotas``), the spend is kept in memory: rebuilt from the stored ``usage``
rows at the first ``load()`` and again whenever the UTC day (by the clock in use) has turned — the
month turns only with a day — and added to by ``record`` for each billed call in between, so a
check costs a comparison. A call of a model with no known price (``cost_usd`` None) counts 0 and is
counted in ``unpriced`` (the reports say the spend is a lower bound then).

Reached (spend ≥ cap of either period): ``allows_paid()`` is False until the period resets, and
``Admission`` answers with the tier's fallback model or the offline model instead of a paid one
(``is_paid``: every model but the offline ``kith/*`` ones and the local ``local/*`` transcriber).

The owners are told once per period per threshold (80 %, 100 %): ``record`` (and a rebuild that
finds a threshold crossed and not yet told) queues a ``BudgetNotice``; the runtime's notifier sends
it and calls ``told``, which stores its key in the ``budget_notices`` table (on stores that run plain
SQL), so a restart does not repeat it. A cap of 0 (never pay) sends no notices.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import anyio

import i18n
from config.models import BudgetSettings, ModelSpec, Settings
from i18n import _
from memory.store import DialogueStore
from memory.types import UsageRecord

from .daily import DailyCounters, utc_day

log = logging.getLogger(__name__)

__all__ = ["PERIODS", "THRESHOLDS", "Budget", "BudgetNotice", "Spend", "is_free_model", "notice_text", "paid_features", "period_end"]

PERIODS = ("day", "month")
THRESHOLDS = (80, 100)  # percent of a cap at which the owners are told
FREE_PROVIDERS = ("kith/", "local/")  # the offline chat model, the local transcriber
_DDL = "CREATE TABLE IF NOT EXISTS budget_notices (key VARCHAR PRIMARY KEY, ts_us BIGINT NOT NULL)"


def is_free_model(model: str) -> bool:
    """Whether calls of the litellm model string ``model`` are known to cost nothing."""
    return model.startswith(FREE_PROVIDERS)


def paid_features(settings: Settings) -> frozenset[str]:
    """The media features whose models cost money: ``image_generation`` when an image model is not
    free, ``voice`` when the transcription model is not (``local/*`` is)."""
    out = set()
    if any(not is_free_model(m.model) for m in settings.image_models.values()):
        out.add("image_generation")
    if settings.transcription.model and not is_free_model(settings.transcription.model):
        out.add("voice")
    return frozenset(out)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 or x == 0 else f"${x:.4f}"


def notice_text(n: BudgetNotice) -> str:
    """The owners' message for a crossed threshold (in the current language)."""
    hhmm = n.resets_at.strftime("%H:%M")
    until = _("{time} UTC", time=hhmm) if n.period == "day" else n.resets_at.strftime("%Y-%m-%d")
    if n.threshold >= 100:
        head = (_("💸 The daily spending limit of {cap} is reached ({spent} spent).", cap=_usd(n.cap_usd),
                       spent=_usd(n.spent_usd)) if n.period == "day" else
                _("💸 The monthly spending limit of {cap} is reached ({spent} spent).", cap=_usd(n.cap_usd),
                       spent=_usd(n.spent_usd)))
        return head + " " + _(
            "Paid models are not called until {until}: the tier's fallback or the offline model answers.", until=until)
    pct = i18n.number(n.threshold)
    if n.period == "day":
        return _("💸 {pct} % of today's spending limit is used: {spent} of {cap}.", pct=pct,
                      spent=_usd(n.spent_usd), cap=_usd(n.cap_usd))
    return _("💸 {pct} % of this month's spending limit is used: {spent} of {cap}.", pct=pct,
                  spent=_usd(n.spent_usd), cap=_usd(n.cap_usd))


def period_end(period: str, day: date) -> datetime:
    """When the ``period`` (``day`` | ``month``) containing ``day`` ends: the next 00:00 UTC, or the
    first of the next month at 00:00 UTC."""
    nxt = day + timedelta(days=1) if period == "day" else date(day.year + (day.month == 12), day.month % 12 + 1, 1)
    return datetime.combine(nxt, time(0), tzinfo=UTC)


def _period_key(period: str, day: date) -> str:
    return f"{period}:{day.isoformat() if period == 'day' else day.strftime('%Y-%m')}"


@dataclass(frozen=True, slots=True)
class Spend:
    """One period's spend: ``spent_usd`` over the priced calls, ``cap_usd`` (None = no cap),
    ``unpriced`` calls with an unknown price (counted 0), ``resets_at`` the period's end."""

    period: str
    spent_usd: float
    cap_usd: float | None
    unpriced: int
    resets_at: datetime

    @property
    def reached(self) -> bool:
        return self.cap_usd is not None and self.spent_usd >= self.cap_usd

    @property
    def percent(self) -> float | None:
        if self.cap_usd is None:
            return None
        return 100.0 if self.cap_usd == 0 else 100.0 * self.spent_usd / self.cap_usd


@dataclass(frozen=True, slots=True)
class BudgetNotice:
    """A threshold crossed: tell the owners. keys: the thresholds it stands for (``day:2025-03-15:80``;
    one call may cross both: one message says the highest), stored once told."""

    keys: tuple[str, ...]
    period: str
    threshold: int
    spent_usd: float
    cap_usd: float
    resets_at: datetime


class Budget(DailyCounters[UsageRecord]):
    """The spend of today and of this month against ``budget:``; one per process (``Admission.budget``).

    ``models``: ``settings.models`` (alias → spec), to tell paid aliases from free ones and to find the
    offline alias. ``paid_features``: the media features (``image_generation``, ``voice``) whose models
    cost money; ``Admission.admit_feature`` refuses them over the cap. ``record`` every billed call
    (``Services.record_usage`` does, through Admission). ``remember`` False: neither read nor write
    the ``budget_notices`` table (a report's read-only look).
    """

    def __init__(self, store: DialogueStore, cfg: BudgetSettings, models: Mapping[str, ModelSpec],
                 clock: Callable[[], datetime], *, paid_features: frozenset[str] = frozenset(),
                 remember: bool = True) -> None:
        super().__init__(clock)
        self.store = store
        self.paid_features = paid_features
        self.cfg = cfg
        self.models = dict(models)
        self._spent = {"day": 0.0, "month": 0.0}
        self._unpriced = {"day": 0, "month": 0}
        self._told: set[str] = set()  # notice keys queued or sent (this run) or stored (before)
        self._pending: list[BudgetNotice] = []
        self._wake = anyio.Event()
        self._sql = remember and hasattr(store, "sql_transaction")  # notices told: in budget_notices
        self._table = False

    # ------------------------------------------------------------ loading

    @property
    def enabled(self) -> bool:
        return self.cfg.daily_usd is not None or self.cfg.monthly_usd is not None

    def reconfigure(self, cfg: BudgetSettings, models: Mapping[str, ModelSpec],
                    paid_features: frozenset[str] | None = None) -> None:
        """Use re-read caps and models from now on (hot reload); the spend stays."""
        self.cfg, self.models = cfg, dict(models)
        if paid_features is not None:
            self.paid_features = paid_features
        self._check_thresholds()

    def _loaded_now(self) -> None:
        self._check_thresholds()

    async def _rebuild(self, day: date) -> None:
        """Replace the spend with the stored usage of ``day``'s month up to ``day`` (``DailyCounters._read``:
        no call recorded while the table is read is missed)."""
        month_start = datetime.combine(day.replace(day=1), time(0), tzinfo=UTC)
        rows: list[Any]
        rows, arrived = await self._read(day, lambda: self.store.usage.totals("day", since=month_start))
        today, month = day.isoformat(), day.strftime("%Y-%m")
        self._day = day
        self._spent = {"day": 0.0, "month": 0.0}
        self._unpriced = {"day": 0, "month": 0}
        for r in rows:
            if not (r.key.startswith(month) and r.key <= today):
                continue  # (a replay's later days)
            self._add("month", r.cost_usd, r.unpriced)
            if r.key == today:
                self._add("day", r.cost_usd, r.unpriced)
        for rec in arrived:
            self._count(rec)
        if self._sql and self.enabled:
            await self._load_told(day)

    async def _load_told(self, day: date) -> None:
        try:
            if not self._table:
                await self.store.sql_transaction([(_DDL, ())])  # type: ignore[attr-defined]
                self._table = True
            keys = [f"{_period_key(p, day)}:{t}" for p in PERIODS for t in THRESHOLDS]
            marks = ", ".join("?" for _k in keys)
            out = await self.store.sql_transaction(  # type: ignore[attr-defined]
                [(f"SELECT key FROM budget_notices WHERE key IN ({marks})", keys)])
            self._told |= {r[0] for r in out[0]}
        except Exception as exc:
            log.error("budget: the notices told before could not be read: %s", exc)

    # ------------------------------------------------------------ counting

    def record(self, rec: UsageRecord) -> None:
        """Add one billed call (its ``cost_usd``; None counts 0, as unpriced) when it falls in the
        loaded day/month; queue a notice for a threshold it crosses. Before ``load()``: nothing (load
        reads the table)."""
        if self._before_first_load() or self._held(utc_day(rec.ts), rec):
            return
        if self._count(rec):
            self._check_thresholds()

    def _count(self, rec: UsageRecord) -> bool:
        if self._day is None:
            return False
        day = utc_day(rec.ts)
        if (day.year, day.month) != (self._day.year, self._day.month) or day > self._day:
            return False
        if day == self._day:
            self._add("day", rec.cost_usd, 0 if rec.cost_usd is not None else 1)
        self._add("month", rec.cost_usd, 0 if rec.cost_usd is not None else 1)
        return True

    def _add(self, period: str, cost: float | None, unpriced: int) -> None:
        self._spent[period] += float(cost or 0.0)
        self._unpriced[period] += unpriced

    # ------------------------------------------------------------ the questions

    def cap(self, period: str) -> float | None:
        return self.cfg.daily_usd if period == "day" else self.cfg.monthly_usd

    def spend(self, period: str) -> Spend:
        """The ``period``'s (``day`` | ``month``) spend as last loaded and recorded."""
        day = self._day or utc_day(self.clock())
        return Spend(period, self._spent[period], self.cap(period), self._unpriced[period], period_end(period, day))

    def reached(self) -> Spend | None:
        """The period whose cap is reached (the day's first, then the month's), or None."""
        if not self.enabled:
            return None
        for period in PERIODS:
            cap = self.cap(period)
            if cap is not None and self._spent[period] >= cap:
                return self.spend(period)
        return None

    def allows_paid(self) -> bool:
        """Whether paid models may be called now (no cap is reached)."""
        return self.reached() is None

    def is_paid(self, alias: str) -> bool:
        """Whether a call to the chat model ``alias`` may cost money (an unknown alias does)."""
        spec = self.models.get(alias)
        return spec is None or not is_free_model(spec.model)

    def holds_back(self, alias: str) -> bool:
        """Whether a call to ``alias`` must not be made now: a cap is reached and it may cost money."""
        return not self.allows_paid() and self.is_paid(alias)

    def free_alias(self, preferred: str | None = None) -> str | None:
        """``preferred`` when it is a free configured alias, else the first free alias (the offline
        model), else None."""
        if preferred and preferred in self.models and not self.is_paid(preferred):
            return preferred
        return next((a for a, s in self.models.items() if is_free_model(s.model)), None)

    # ------------------------------------------------------------ notices

    def _check_thresholds(self) -> None:
        if self._day is None or not self.enabled:
            return
        for period in PERIODS:
            cap = self.cap(period)
            if not cap:  # no cap, or 0 (never pay): nothing to warn about
                continue
            spent = self._spent[period]
            crossed = [t for t in THRESHOLDS if spent >= cap * t / 100]
            if not crossed:
                continue
            base = _period_key(period, self._day)
            new = [t for t in crossed if f"{base}:{t}" not in self._told]
            if not new:
                continue
            keys = tuple(f"{base}:{t}" for t in new)
            self._told |= set(keys)  # one message: the highest threshold crossed
            self._pending.append(BudgetNotice(keys, period, max(new), spent, cap, period_end(period, self._day)))
        if self._pending:
            self._wake.set()

    async def notices(self) -> list[BudgetNotice]:
        """Wait for thresholds crossed and not told yet; the notices to send (then ``told`` each)."""
        await self._wake.wait()
        self._wake = anyio.Event()
        out, self._pending = self._pending, []
        return out

    async def told(self, notice: BudgetNotice) -> None:
        """Store that ``notice`` was sent (so a restart does not repeat it)."""
        if not self._sql:
            return
        try:
            if not self._table:
                await self.store.sql_transaction([(_DDL, ())])  # type: ignore[attr-defined]
                self._table = True
            ts = int(self.clock().timestamp() * 1_000_000)
            await self.store.sql_transaction(  # type: ignore[attr-defined]
                [("INSERT INTO budget_notices (key, ts_us) VALUES (?, ?) ON CONFLICT DO NOTHING", [key, ts])
                 for key in notice.keys])
        except Exception as exc:
            log.error("budget: notice %s not stored: %s", notice.keys, exc)
