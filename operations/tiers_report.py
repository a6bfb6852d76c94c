"""What ``kith tiers``, ``kith sub grant|revoke|list`` and ``kith usage`` print: plain functions that
take an open ``DialogueStore`` (or the ``TiersConfig``) and a rich ``Console``. The operations
(``operations.registry``: ``sub.*``, ``usage``) run them on the stores, or inside a running bot
through its admin API; ``cli.py`` has the commands.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from memory.store import DialogueStore

from rich import box

import i18n
from config.models import UNLIMITED, Tier, TiersConfig
from tiers.budget import PERIODS, Budget
from tiers.quotas import images_per_request
from tiers.subscriptions import Subscription, SubscriptionStore, parse_target
from tiers.usage import usage_summary

__all__ = ["WIDE_TIERS", "grant", "list_subs", "parse_since", "print_credits", "print_tiers", "revoke", "spend_json",
           "spend_line", "tier_rows", "usage_report"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _lim(n: int) -> str:
    return "∞" if n == UNLIMITED else f"{n:,}"


def _minutes(seconds: float) -> str:
    """Audio seconds per day as minutes (``60 min``), ``∞`` or ``0``."""
    if seconds == UNLIMITED:
        return "∞"
    return "0" if seconds == 0 else f"{seconds / 60:,.4g} min"


def _when(ts: datetime | None) -> str:
    return "never" if ts is None else f"{ts:%Y-%m-%d %H:%M} UTC"


# ---------------------------------------------------------------- kith tiers


WIDE_TIERS = 120  # columns from which ``kith tiers`` prints one table (a column per tier); below, one block per tier
_TIER_FIELDS = ("models", "requests/day", "tokens/day", "chat req/day", "chat tokens/day", "images/day", "images/request",
                "audio/day", "pages/day", "tool calls/day", "user msgs / memories / facts", "chat msgs / memories / facts",
                "largest file", "features", "when spent", "member msgs/min")


def tier_rows(cfg: TiersConfig) -> list[tuple[str, dict[str, str]]]:
    """Per tier (worst first): its label and ``_TIER_FIELDS`` → display text."""
    out = []
    for name in sorted(cfg.tiers, key=cfg.rank):
        t = cfg.tiers[name]
        q = t.quotas
        rpd = ", ".join(f"{'any' if a == '*' else a}: {_lim(n)}" for a, n in q.requests_per_day.items()) or "∞"
        feats = ", ".join(k for k, v in t.features.model_dump().items() if v) or "—"
        values = (", ".join("all" if m == "*" else m for m in t.models) or "none", rpd, _lim(q.tokens_per_day),
                  _lim(q.chat_requests_per_day), _lim(q.chat_tokens_per_day), _lim(q.images_per_day), str(images_per_request(q)),
                  _minutes(q.audio_seconds_per_day), _lim(q.pages_per_day), _lim(q.tool_calls_per_day),
                  f"{_lim(t.user.dialogue_limit)} / {_lim(t.user.memory_limit)} / {_lim(t.user.entry_limit)}",
                  f"{_lim(t.chat.dialogue_limit)} / {_lim(t.chat.memory_limit)} / {_lim(t.chat.entry_limit)}",
                  "∞" if t.max_file_mb < 0 else f"{t.max_file_mb:g} MB", feats, _spent(t),
                  _lim(t.member_messages_per_minute))
        out.append((f"{name} (default)" if name == cfg.default_tier else name, dict(zip(_TIER_FIELDS, values))))
    return out


def _spent(t: Tier) -> str:
    """What a tier does once a quota is spent: ``refuse``, ``fallback: fast``, ``credits (overdraft 10)``."""
    mode = t.spent_mode
    if mode == "fallback":
        return f"fallback: {t.fallback_model}"
    if mode == "credits":
        return "credits" + (f" (overdraft {t.overdraft:,})" if t.overdraft else "")
    return "refuse"


def _price(amount: int, currency: str) -> str:
    return f"{amount} ⭐ (XTR)" if currency.upper() == "XTR" else f"{amount} {currency} (smallest unit)"


def print_credits(cfg: TiersConfig, console: Console) -> None:
    """The credit packs (/buy) and the prices in credits, when credits are sold or spent."""
    if cfg.credit_packs:
        packs = Table(title="credit packs (/buy)")
        for col in ("pack", "credits", "price", "expires", "title"):
            packs.add_column(col)
        for name, p in cfg.credit_packs.items():
            packs.add_row(escape(name), f"{p.credits:,}", escape(_price(p.price, p.currency)),
                          f"after {p.expires_days:g} days" if p.expires_days else "never", escape(i18n.pick(p.title) or ""))
        console.print(packs)
    pr = cfg.prices
    if not (cfg.credit_packs or pr.priced):
        return
    per_message = ", ".join(f"{'any' if a == '*' else a}: {n:,}" for a, n in pr.per_message.items()) or "0"
    console.print(f"prices in credits — per answer: {escape(per_message)}; per 1,000 tokens: {pr.per_1k_tokens:,}; "
                  f"per image: {pr.per_image:,}; per audio minute: {pr.per_audio_minute:,}; per page: {pr.per_page:,}; "
                  f"per tool call: {pr.per_tool_call:,}")


def print_tiers(cfg: TiersConfig, console: Console) -> None:
    """Tiers (worst first) with models, quotas, storage, features, fallback and member rate; then plans.
    One wide table on a terminal of ``WIDE_TIERS`` columns or more, else one block per tier (readable
    at 80 columns)."""
    rows = tier_rows(cfg)
    if console.width >= WIDE_TIERS:  # one column per tier, one row per limit
        table = Table(title="tiers (∞ = unlimited; quotas per UTC day)")
        table.add_column("", style="dim", no_wrap=True)
        for label, _values in rows:
            table.add_column(escape(label), overflow="fold")
        for field in _TIER_FIELDS:
            table.add_row(field, *(escape(values[field]) for _label, values in rows))
        console.print(table)
    else:
        console.print("tiers (∞ = unlimited; quotas per UTC day)")
        for label, values in rows:
            block = Table(title=escape(label), title_justify="left", show_header=False, box=None, padding=(0, 2))
            block.add_column(style="dim", no_wrap=True)
            block.add_column(overflow="fold")
            for key, value in values.items():
                block.add_row(key, escape(value))
            console.print(block)
    print_credits(cfg, console)
    if not cfg.plans:
        console.print("[dim]no plans: /billing sells nothing[/]")
        return
    plans = Table(title="plans (/billing)")
    for col in ("plan", "tier", "days", "price", "title"):
        plans.add_column(col)
    for name, p in cfg.plans.items():
        plans.add_row(escape(name), escape(p.tier), str(p.days), escape(_price(p.price, p.currency)), escape(i18n.pick(p.title) or ""))
    console.print(plans)


# ---------------------------------------------------------------- kith sub


def _sub_json(s: Subscription, now: datetime) -> dict[str, Any]:
    return {"scope": s.scope, "scope_id": s.scope_id, "target": s.target, "tier": s.tier,
            "expires_at": s.expires_at.isoformat() if s.expires_at else None, "active": s.active(now),
            "source": s.source, "updated_at": s.updated_at.isoformat(),
            "renews": s.renews if s.recurring else None}


async def grant(store: DialogueStore, cfg: TiersConfig, target: str, tier: str, days: float | None, console: Console,
                *, source: str = "cli", clock: Callable[[], datetime] = _utc_now,
                subs: SubscriptionStore | None = None) -> Subscription:
    """``kith sub grant user:ID|chat:ID TIER [--days N]``: set the tier (no days = never expires).
    subs: a running bot's (its admission sees the grant at once); None: one on ``store``.
    raises TierError (bad target, unknown tier, days ≤ 0)."""
    scope, scope_id = parse_target(target)
    sub = await (subs or SubscriptionStore(store, cfg, clock)).grant(scope, scope_id, tier, days, source)
    console.print(f"{escape(sub.target)}: {escape(sub.tier)} until {_when(sub.expires_at)}")
    return sub


async def revoke(store: DialogueStore, cfg: TiersConfig, target: str, console: Console,
                 *, clock: Callable[[], datetime] = _utc_now, subs: SubscriptionStore | None = None) -> bool:
    """``kith sub revoke user:ID|chat:ID``. True if there was a subscription. subs: as for ``grant``.
    raises TierError (bad target)."""
    scope, scope_id = parse_target(target)
    gone = await (subs or SubscriptionStore(store, cfg, clock)).revoke(scope, scope_id)
    console.print(f"{escape(target)}: {'revoked' if gone else 'had no subscription'}")
    return gone


async def list_subs(store: DialogueStore, cfg: TiersConfig, console: Console, *, expired: bool = False,
                    as_json: bool = False, clock: Callable[[], datetime] = _utc_now,
                    subs: SubscriptionStore | None = None) -> list[Subscription]:
    """``kith sub list [--expired] [--json]``: active subscriptions (with --expired, the expired ones too).
    subs: as for ``grant``."""
    found = await (subs or SubscriptionStore(store, cfg, clock)).list(expired=expired)
    now = clock()
    if as_json:
        console.print_json(json.dumps([_sub_json(s, now) for s in found]))
        return found
    table = Table(title="subscriptions" + (" (including expired)" if expired else ""))
    for col in ("target", "tier", "expires", "status", "source", "updated"):
        table.add_column(col)
    for s in found:
        unknown = s.tier not in cfg.tiers
        status = "expired" if not s.active(now) else ("unknown tier (default applies)" if unknown else "active")
        if s.recurring and s.active(now):  # a Telegram Stars subscription
            status += ", renews" if s.renews else ", won't renew"
        table.add_row(escape(s.target), escape(s.tier), _when(s.expires_at), status, escape(s.source), _when(s.updated_at))
    console.print(table)
    if not found:
        console.print("[dim]no subscriptions[/]")
    return found


# ---------------------------------------------------------------- kith usage


def spend_json(budget: Budget) -> dict[str, Any]:
    """Today's and this month's spend against the caps (``kith usage``, ``--json``: ``budget``)."""
    out: dict[str, Any] = {}
    for period in PERIODS:
        sp = budget.spend(period)
        out[period] = {"spent_usd": round(sp.spent_usd, 6), "cap_usd": sp.cap_usd, "unpriced_requests": sp.unpriced,
                       "reached": sp.reached, "resets_at": sp.resets_at.isoformat()}
    return out


def spend_line(budget: Budget) -> str:
    """``spend: today $0.0123 of $2.00 (1 %) · this month $0.40 (no cap)``, and when a cap is reached."""
    parts = []
    for period, name in (("day", "today"), ("month", "this month")):
        sp = budget.spend(period)
        text = f"{name} ${sp.spent_usd:.4f}"
        if sp.cap_usd is None:
            text += " (no cap)"
        else:
            text += f" of ${sp.cap_usd:.2f}" if sp.cap_usd >= 1 else f" of ${sp.cap_usd:.4f}"
            text += f" ({sp.percent:.0f} %)"
            if sp.reached:
                text += f" — reached: paid models off until {sp.resets_at:%Y-%m-%d %H:%M} UTC"
        if sp.unpriced:
            text += f" + {sp.unpriced} unpriced call(s)"
        parts.append(text)
    return "spend: " + " · ".join(parts)


async def usage_report(store: DialogueStore, console: Console, *, by: str = "model", since: datetime | None = None,
                       as_json: bool = False, budget: Budget | None = None) -> dict[str, Any]:
    """``kith usage [--by user|chat|model|day|kind|plugin] [--since DATE] [--json]``: print ``usage_summary``
    and return it (``--by plugin``: the tool calls per plugin); with ``budget`` (loaded), a line with
    today's and this month's spend against the host's caps (``budget`` in the JSON)."""
    rep = await usage_summary(store, by=by, since=since)
    if budget is not None:
        rep["budget"] = spend_json(budget)
    if as_json:
        console.print_json(json.dumps(rep))
        return rep
    title = f"usage by {by}" + (f" since {since:%Y-%m-%d %H:%M} UTC" if since else "")

    # whole keys (chat ids) and numbers, never wrapped; short headings and light borders so that the
    # media columns fit in 80 columns too (`--json` has every field)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    media = any(g["seconds"] or g["images"] or g["pages"] for g in rep["rows"])
    tools = by == "plugin"  # tool calls: no tokens, no cost
    cols = (by, "requests", "tokens in", "tokens out", *(("audio s", "images", "pages") if media else ()), "cost")
    for col in (by, "tool calls") if tools else cols:
        table.add_column(col, justify="left" if col == by else "right", no_wrap=True)

    def cells(g: dict[str, Any]) -> list[str]:
        if tools:
            return [f"{g['requests']:,}"]
        extra = [f"{g['seconds']:,.0f}", f"{g['images']:,}", f"{g['pages']:,}"] if media else []
        return [f"{g['requests']:,}", f"{g['prompt_tokens']:,}", f"{g['completion_tokens']:,}", *extra, g["cost"]]

    for g in rep["rows"]:
        table.add_row(escape(g["key"]), *cells(g))
    t = rep["total"]
    table.add_section()
    table.add_row("[bold]total[/]", *cells(t))
    console.print(table)
    if t["unpriced_requests"] and not tools:
        console.print(f"[dim]{t['unpriced_requests']} call(s) used a model with no known price: their cost is unknown, not 0.[/]")
    if budget is not None:
        console.print(escape(spend_line(budget)))
    return rep


def parse_since(text: str | None) -> datetime | None:
    """``YYYY-MM-DD`` (UTC midnight) or an ISO date-time (naive = UTC). raises ValueError."""
    if text is None:
        return None
    ts = datetime.fromisoformat(text.strip())
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
