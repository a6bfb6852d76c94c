"""Tiers: Telegram payment logic and the CLI functions (real DuckDB, injected clock)."""
from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from config.models import Plan, Quotas, Tier, TiersConfig
from memory.duckdb_store import DuckDBStore
from memory.types import UsageRecord
from operations.tiers_report import grant, list_subs, parse_since, print_tiers, revoke, tier_rows, usage_report
from tests.clock import Clock as _Clock
from tiers import PaymentError, SubscriptionStore
from tiers.errors import BadScope, TierError, UnknownTier
from tiers.payments import (
    apply_successful_payment,
    invoice_for,
    make_payload,
    parse_payload,
    payments,
    validate_pre_checkout,
)
from tiers.usage import format_cost

T0 = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


class Clock(_Clock):
    def __init__(self, t: datetime = T0) -> None:
        super().__init__(t)


CFG = TiersConfig(
    default_tier="free",
    tiers={"free": Tier(), "premium": Tier(fallback_model=None), "unlimited": Tier()},
    plans={
        "month": Plan(tier="premium", days=30, price=250, title="Premium for a month"),
        "eur": Plan(tier="premium", days=365, price=4999, currency="EUR"),
    },
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock):
    async with DuckDBStore(tmp_path / "kith.duckdb", flush_interval_s=0.01, clock=clock) as s:
        yield s


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=200, soft_wrap=True, color_system=None), buf


# ---------------------------------------------------------------- payments: invoices and pre-checkout


def test_invoice_payload_round_trip() -> None:
    inv = invoice_for("month", CFG, scope="user", scope_id=42)
    assert inv.payload == "kith:plan:month:user:42" and parse_payload(inv.payload) == ("month", "user", 42)
    assert (inv.currency, inv.prices, inv.total, inv.provider_token) == ("XTR", (("Premium for a month", 250),), 250, "")
    assert inv.title == "Premium for a month" and inv.description  # Telegram needs both non-empty
    group = invoice_for("month", CFG, scope="chat", scope_id=-100123)
    assert parse_payload(group.payload) == ("month", "chat", -100123)
    assert make_payload("month", "chat", -5) == "kith:plan:month:chat:-5"
    for bad in ("", "other:plan:month:user:1", "kith:plan:month:group:1", "kith:plan:month:user:x", "kith:plan:month:user"):
        with pytest.raises(PaymentError):
            parse_payload(bad)


def test_invoice_needs_a_provider_token_except_for_stars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEGRAM_PAYMENT_PROVIDER_TOKEN", raising=False)
    with pytest.raises(PaymentError, match="TELEGRAM_PAYMENT_PROVIDER_TOKEN"):
        invoice_for("eur", CFG, scope_id=1)
    assert invoice_for("eur", CFG, scope_id=1, provider_token="tok").provider_token == "tok"
    monkeypatch.setenv("TELEGRAM_PAYMENT_PROVIDER_TOKEN", "env-tok")
    inv = invoice_for("eur", CFG, scope_id=1)
    assert (inv.provider_token, inv.currency, inv.total) == ("env-tok", "EUR", 4999)
    assert inv.title == "Premium for 365 days" and "365 days of the premium tier" in inv.description
    with pytest.raises(PaymentError, match="unknown plan"):
        invoice_for("lifetime", CFG, scope_id=1)


def test_pre_checkout_validation() -> None:
    ok = make_payload("month", "user", 42)
    assert validate_pre_checkout(ok, 250, "XTR", CFG) is None
    assert validate_pre_checkout(ok, 249, "XTR", CFG) is not None  # wrong amount
    assert validate_pre_checkout(ok, 250, "EUR", CFG) is not None  # wrong currency
    assert "no longer offered" in validate_pre_checkout("kith:plan:lifetime:user:42", 250, "XTR", CFG)  # unknown plan
    assert validate_pre_checkout("garbage", 250, "XTR", CFG) is not None


# ---------------------------------------------------------------- payments: applying


@pytest.mark.anyio
async def test_successful_payment_extends_from_the_current_expiry_once_per_charge(store: DuckDBStore, clock: Clock) -> None:
    subs = SubscriptionStore(store, CFG, clock)
    await subs.grant("user", 42, "premium", 10, "cli")
    clock.advance(days=2)
    payload = invoice_for("month", CFG, scope="user", scope_id=42).payload
    s = await apply_successful_payment(subs, store, "ch-1", payload, 250, "XTR", 42, 42)
    assert (s.tier, s.expires_at, s.source) == ("premium", T0 + timedelta(days=40), "payment:ch-1")
    # the same update delivered again: the same result, no second extension, one payments row
    clock.advance(minutes=1)
    again = await apply_successful_payment(subs, store, "ch-1", payload, 250, "XTR", 42, 42)
    assert again == s
    rows = await payments(store)
    assert len(rows) == 1 and rows[0]["charge_id"] == "ch-1"
    assert {k: rows[0][k] for k in ("user_id", "chat_id", "plan", "tier", "days", "amount", "currency", "scope", "scope_id")} == {
        "user_id": 42, "chat_id": 42, "plan": "month", "tier": "premium", "days": 30, "amount": 250, "currency": "XTR",
        "scope": "user", "scope_id": 42}
    assert rows[0]["paid_at"] == T0 + timedelta(days=2)
    # another charge extends again; it survives a fresh SubscriptionStore (restart)
    s2 = await apply_successful_payment(subs, store, "ch-2", payload, 250, "XTR", 42, 42)
    assert s2.expires_at == T0 + timedelta(days=70)
    assert (await SubscriptionStore(store, CFG, clock).get("user", 42)).expires_at == T0 + timedelta(days=70)
    assert len(await payments(store, user_id=42)) == 2 and await payments(store, user_id=7) == []


@pytest.mark.anyio
async def test_payment_for_a_chat_and_for_an_unknown_plan(store: DuckDBStore, clock: Clock) -> None:
    subs = SubscriptionStore(store, CFG, clock)
    payload = make_payload("month", "chat", -100123)
    s = await apply_successful_payment(subs, store, "ch-g", payload, 250, "XTR", 7, -100123)
    assert (s.target, s.tier, s.expires_at) == ("chat:-100123", "premium", T0 + timedelta(days=30))
    assert await subs.get("user", 7) is None  # the payer bought it for the chat, not for themselves
    # a plan removed after the invoice: recorded (for a refund), not applied
    assert await apply_successful_payment(subs, store, "ch-x", "kith:plan:lifetime:user:7", 999, "XTR", 7, 7) is None
    assert await apply_successful_payment(subs, store, "ch-x", "kith:plan:lifetime:user:7", 999, "XTR", 7, 7) is None
    rows = {r["charge_id"]: r for r in await payments(store)}
    assert set(rows) == {"ch-g", "ch-x"} and (rows["ch-x"]["tier"], rows["ch-x"]["days"]) == ("", 0)
    assert await subs.get("user", 7) is None
    with pytest.raises(PaymentError):
        await apply_successful_payment(subs, store, "", payload, 250, "XTR", 7, -100123)


@pytest.mark.anyio
async def test_admission_sees_a_payment_at_once(store: DuckDBStore, clock: Clock) -> None:
    from tiers import Admission

    adm = Admission(store, CFG, clock)
    assert (await adm.admit(-100123, "group", 42, "fast")).tier == "free"
    s = await adm.apply_payment("ch-a", make_payload("month", "chat", -100123), 250, "XTR", 42, -100123)
    assert s.tier == "premium"
    assert (await adm.admit(-100123, "group", 7, "fast")).tier == "premium"  # everyone in the chat
    assert (await adm.admit(7, "private", 7, "fast")).tier == "free"  # but not elsewhere


# ---------------------------------------------------------------- CLI functions


def test_print_tiers_shows_limits_and_plans() -> None:
    from config.loader import SHIPPED_TIERS, load_config

    cfg = load_config(SHIPPED_TIERS.parent / "kith.yaml", env={}).tiers
    con, buf = console()
    print_tiers(cfg, con)
    text = buf.getvalue()
    for word in ("free (default)", "premium", "unlimited", "any: 30", "50,000", "50,000 / 20,000", "5 MB", "∞", "month", "250 ⭐"):
        assert word in text, word
    per_request = {label: values["images/request"] for label, values in tier_rows(cfg)}
    assert per_request == {"free (default)": "1", "premium": "4", "unlimited": "4"}  # the shipped images_per_request
    assert "images/request" in text
    many = TiersConfig(default_tier="any", tiers={"any": Tier(quotas=Quotas(images_per_request=-1)),
                                                  "none": Tier(quotas=Quotas(images_per_request=0))})
    assert {label: values["images/request"] for label, values in tier_rows(many)} == {"any (default)": "10", "none": "1"}


@pytest.mark.anyio
async def test_cli_grant_revoke_list(store: DuckDBStore, clock: Clock) -> None:
    con, buf = console()
    s = await grant(store, CFG, "user:42", "premium", 30, con, clock=clock)
    assert s.expires_at == T0 + timedelta(days=30) and "user:42: premium until 2025-04-13 12:00 UTC" in buf.getvalue()
    await grant(store, CFG, "chat:-100", "unlimited", None, con, clock=clock)
    await grant(store, CFG, "user:7", "premium", 1, con, clock=clock)
    assert "until never" in buf.getvalue()
    with pytest.raises(UnknownTier):
        await grant(store, CFG, "user:1", "gold", None, con, clock=clock)
    with pytest.raises(BadScope):
        await grant(store, CFG, "42", "premium", None, con, clock=clock)

    clock.advance(days=2)
    con, buf = console()
    assert [x.target for x in await list_subs(store, CFG, con, clock=clock)] == ["chat:-100", "user:42"]
    assert "user:7" not in buf.getvalue()
    con, buf = console()
    await list_subs(store, CFG, con, expired=True, as_json=True, clock=clock)
    data = json.loads(buf.getvalue())
    assert [(d["target"], d["active"], d["expires_at"]) for d in data] == [
        ("chat:-100", True, None), ("user:7", False, "2025-03-15T12:00:00+00:00"), ("user:42", True, "2025-04-13T12:00:00+00:00")]

    con, buf = console()
    assert await revoke(store, CFG, "user:42", con, clock=clock) is True
    assert await revoke(store, CFG, "user:42", con, clock=clock) is False
    assert "revoked" in buf.getvalue() and "had no subscription" in buf.getvalue()
    assert [x.target for x in await list_subs(store, CFG, console()[0], clock=clock)] == ["chat:-100"]


@pytest.mark.anyio
async def test_cli_grant_keeps_a_telegram_subscription_renewing(store: DuckDBStore, clock: Clock) -> None:
    """``kith sub grant`` (no bot running: its own SubscriptionStore on the database) on a member with a
    Telegram Stars subscription sets the tier and expiry and keeps the subscription's charge and renewal."""
    await SubscriptionStore(store, CFG, clock).run_until("user", 42, "premium", T0 + timedelta(days=30), "payment:c1",
                                                         charge_id="c1", renewal=False, period=timedelta(days=30))
    con, buf = console()
    s = await grant(store, CFG, "user:42", "premium", 60, con, clock=clock)
    assert (s.expires_at, s.source, s.renews, s.charge_id) == (T0 + timedelta(days=60), "cli", True, "c1")
    stored = await SubscriptionStore(store, CFG, clock).get("user", 42)  # what the database holds
    assert (stored.tier, stored.expires_at, stored.renews, stored.charge_id) == ("premium", T0 + timedelta(days=60), True, "c1")

    subs = SubscriptionStore(store, CFG, clock)  # a running bot's: cancelled in /billing, then granted
    await subs.set_renews("user", 42, False)
    await grant(store, CFG, "user:42", "unlimited", None, con, clock=clock, subs=subs)
    stored = await SubscriptionStore(store, CFG, clock).get("user", 42)
    assert (stored.tier, stored.expires_at, stored.renews, stored.charge_id) == ("unlimited", None, False, "c1")

    await grant(store, CFG, "user:7", "premium", 5, con, clock=clock)  # no Telegram subscription: none made up
    plain = await SubscriptionStore(store, CFG, clock).get("user", 7)
    assert (plain.renews, plain.charge_id, plain.recurring) == (None, None, False)


def _rec(ts: datetime, chat: int, user: int, model: str, p: int, c: int, cost: float | None) -> UsageRecord:
    return UsageRecord(ts, chat, user, "chat", model, p, c, cost, 12.5)


@pytest.mark.anyio
async def test_usage_report_totals_match_the_rows_and_unknown_prices_stay_unknown(store: DuckDBStore) -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    recs = [
        _rec(day1, 1, 1, "fast", 100, 20, 0.001),
        _rec(day1, 1, 1, "fast", 50, 10, 0.0005),
        _rec(day1, -5, 2, "local", 300, 40, None),  # no known price
        _rec(day2, -5, 1, "fast", 10, 5, 0.0002),
        _rec(day2, -5, 3, "local", 7, 3, None),
    ]
    for r in recs:
        store.record_usage(r)
    rows = await store.usage.rows()
    assert len(rows) == len(recs)

    for by in ("user", "chat", "model", "day"):
        con, _ = console()
        rep = await usage_report(store, con, by=by)
        t = rep["total"]
        assert t["requests"] == len(rows) == sum(g["requests"] for g in rep["rows"])
        assert t["prompt_tokens"] == sum(r.prompt_tokens for r in rows)
        assert t["completion_tokens"] == sum(r.completion_tokens for r in rows)
        assert t["cost_usd"] == pytest.approx(sum(r.cost_usd for r in rows if r.cost_usd is not None))
        assert t["unpriced_requests"] == 2 and t["cost"] == "≥ $0.0017 + unknown"

    con, buf = console()
    rep = await usage_report(store, con, by="model")
    by_model = {g["key"]: g for g in rep["rows"]}
    assert by_model["local"]["cost"] == "unknown" and by_model["local"]["cost_usd"] is None  # not $0
    assert by_model["fast"]["cost"] == "$0.0017" and by_model["fast"]["requests"] == 3
    text = buf.getvalue()
    assert "unknown" in text and "≥ $0.0017 + unknown" in text and "$0.0000" not in text

    rep = await usage_report(store, console()[0], by="day")
    assert [(g["key"], g["requests"]) for g in rep["rows"]] == [("2025-03-14", 3), ("2025-03-15", 2)]
    rep = await usage_report(store, console()[0], by="user", since=day2)
    assert [(g["key"], g["requests"]) for g in rep["rows"]] == [("1", 1), ("3", 1)] and rep["total"]["cost"] == "≥ $0.0002 + unknown"
    con, buf = console()
    await usage_report(store, con, by="chat", as_json=True)
    assert json.loads(buf.getvalue())["total"]["requests"] == 5
    with pytest.raises(TierError):
        await usage_report(store, console()[0], by="week")


def test_format_cost_and_parse_since() -> None:
    assert format_cost(0.5, 0, 3) == "$0.5000"
    assert format_cost(0.0, 2, 2) == "unknown"
    assert format_cost(0.5, 1, 3) == "≥ $0.5000 + unknown"
    assert format_cost(0.0, 0, 0) == "$0.0000"
    assert parse_since("2025-03-14") == datetime(2025, 3, 14, tzinfo=UTC)
    assert parse_since("2025-03-14T10:00+02:00") == datetime(2025, 3, 14, 8, tzinfo=UTC)
    assert parse_since(None) is None
    with pytest.raises(ValueError):
        parse_since("yesterday")


def test_typer_wrappers(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    r = runner.invoke(app, ["tiers"])
    assert r.exit_code == 0 and "premium" in r.output, r.output
    r = runner.invoke(app, ["tiers", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["tiers"]["premium"]["quotas"]["images_per_request"] == 4, r.output
    r = runner.invoke(app, ["sub", "grant", "user:42", "premium", "--days", "30", *data])
    assert r.exit_code == 0 and "user:42: premium until" in r.output, r.output
    r = runner.invoke(app, ["sub", "grant", "user:42", "gold", *data])
    assert r.exit_code == 1
    r = runner.invoke(app, ["sub", "list", "--json", *data])
    assert r.exit_code == 0 and json.loads(r.output)[0]["target"] == "user:42", r.output
    r = runner.invoke(app, ["sub", "revoke", "user:42", *data])
    assert r.exit_code == 0 and "revoked" in r.output
    r = runner.invoke(app, ["usage", "--by", "day", "--json", *data])
    assert r.exit_code == 0 and json.loads(r.output)["total"]["requests"] == 0, r.output
    assert runner.invoke(app, ["usage", "--by", "week", *data]).exit_code == 2
    assert runner.invoke(app, ["usage", "--since", "yesterday", *data]).exit_code == 2
