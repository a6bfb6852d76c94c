"""Renewing subscriptions (issue #26, item 4): a plan with ``subscription_period`` is sold as a Telegram
Stars subscription (an invoice link with subscription_period=2592000), runs until Telegram's
expiration date, is extended once per renewal charge, expires when no renewal comes, and is
cancelled or resumed from /billing (``edit_user_star_subscription``). Real DuckDB, real pyrogram
parsing; the Telegram server is the only fake."""
from __future__ import annotations

import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydantic
import pytest
from pyrogram import raw

from actors.events import ButtonPress, CommandEvent, PaymentEvent, PreCheckout, Sender
from config import ConfigError, load_config
from config.models import Config, ModelSpec, Plan, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from tests.clock import Clock
from tests.tg_harness import pyrogram_errors
from tiers.payments import invoice_for, make_payload
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

USER = Sender(21, "Uma")
GROUP = -100777
T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
PERIOD = timedelta(days=30)


def cfg(model: str = "smart") -> Config:
    models = {model: ModelSpec(model="kith/recall")}
    tiers = TiersConfig(
        default_tier="free",
        tiers={"free": Tier(models=("*",), quotas=Quotas(requests_per_day={"*": 5})), "premium": Tier(models=("*",))},
        plans={"monthly": Plan(tier="premium", price=250, subscription_period=30),
               "week": Plan(tier="premium", days=7, price=70)},
    )
    return Config(settings=Settings(models=models, default_model=model), tiers=tiers)


# ---------------------------------------------------------------------- config


def test_subscription_period_is_thirty_days_in_stars_and_days_follow_it(tmp_path: Path) -> None:
    plan = Plan(tier="premium", price=250, subscription_period=30)
    assert plan.days == 30 and plan.subscription_seconds == 2_592_000
    assert Plan(tier="premium", days=30, price=250).subscription_seconds is None  # default: a one-off purchase
    (tmp_path / "kith.yaml").write_text("")
    (tmp_path / "tiers.yaml").write_text(textwrap.dedent("""\
        tiers: {free: {}, premium: {}}
        plans:
          monthly:
            tier: premium
            price: 250
            subscription_period: 7
        """))
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "kith.yaml", env={})
    assert info.value.key == "plans.monthly.subscription_period" and "30 days" in str(info.value)
    with pytest.raises(pydantic.ValidationError, match=r"plans\.monthly\n.*currency must be XTR"):
        TiersConfig(tiers={"free": Tier()}, plans={"monthly": {"tier": "free", "price": 5, "currency": "USD", "subscription_period": 30}})
    with pytest.raises(pydantic.ValidationError, match=r"plans\.monthly\n.*not 10"):
        TiersConfig(tiers={"free": Tier()}, plans={"monthly": {"tier": "free", "price": 5, "days": 10, "subscription_period": 30}})


def test_a_renewing_plan_is_a_subscription_invoice_for_a_member_and_one_off_for_a_group() -> None:
    tiers = cfg().tiers
    mine = invoice_for("monthly", tiers, scope="user", scope_id=21)
    group = invoice_for("monthly", tiers, scope="chat", scope_id=GROUP)
    assert mine.subscription_period == 2_592_000 and mine.currency == "XTR" and "renewed every 30 days" in mine.description
    assert group.subscription_period is None and "for this chat" in group.description
    assert invoice_for("week", tiers, scope="user", scope_id=21).subscription_period is None


# ---------------------------------------------------------------------- the runtime (LocalOutbox, a controlled clock)


class Bot:
    def __init__(self, rt, outbox: LocalOutbox, clock: Clock) -> None:
        self.rt, self.outbox, self.clock, self.n = rt, outbox, clock, 100
        self.subs = rt.services.admission.subs

    async def tell(self, chat_id: int, ev) -> None:
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)

    async def billing(self, chat_id: int = USER.user_id, chat_type: str = "private"):
        self.n += 1
        await self.tell(chat_id, CommandEvent(chat_id, chat_type, self.n, USER, "billing", "", self.clock()))
        return self.outbox.sent[-1]

    async def press(self, msg, data: str, chat_id: int = USER.user_id) -> None:
        self.n += 1
        await self.tell(chat_id, ButtonPress(chat_id, msg.message_id, USER, data, f"q{self.n}"))

    async def pay(self, charge_id: str, until: datetime | None, *, renewal: bool = False, plan: str = "monthly",
                  scope: str = "user", chat_id: int = USER.user_id) -> None:
        self.n += 1
        payload = make_payload(plan, scope, USER.user_id if scope == "user" else chat_id)
        await self.tell(chat_id, PaymentEvent(chat_id, self.n, USER, charge_id, payload, 250, "XTR", self.clock(),
                                              subscription_until=until, renewal=renewal))

    async def profile(self) -> str:
        self.n += 1
        await self.tell(USER.user_id, CommandEvent(USER.user_id, "private", self.n, USER, "profile", "", self.clock()))
        return self.outbox.sent[-1].text

    async def tier(self) -> str:
        return (await self.rt.services.admission.admit(USER.user_id, "private", USER.user_id, "smart")).tier


def runtime(tmp_path: Path, st_model, clock: Clock, holder: dict):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), clock=clock)
        return holder["outbox"]

    return open_runtime(cfg(), tmp_path, make, model=st_model, clock=clock)


def labels(msg) -> list[str]:
    return [b.text for row in msg.buttons for b in row]


async def test_first_payment_runs_until_telegram_date_and_a_renewal_extends_it_once(tmp_path, st_model):
    clock, holder = Clock(T0), {}
    async with runtime(tmp_path, st_model, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        plans = await bot.billing()
        assert labels(plans) == ["monthly: premium, renewed every 30 days — 250 ⭐", "week: 7 days of premium — 70 ⭐"]
        await bot.press(plans, "buy:monthly:user")
        link = bot.outbox.sent[-1]
        assert link.invoice.subscription_period == 2_592_000 and "[invoice link] Subscribe for 250 ⭐" in link.text
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, USER, "pc1", link.invoice.payload, 250, "XTR"))
        other = Sender(99, "Ola")  # the link was forwarded: only the member it was made for pays it
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, other, "pc2", link.invoice.payload, 250, "XTR"))
        assert [(q, ok) for q, ok, _ in bot.outbox.pre_checkouts] == [("pc1", True), ("pc2", False)]

        first_until = T0 + PERIOD + timedelta(seconds=3)  # Telegram's date, not ours
        await bot.pay("c1", first_until)
        sub = await bot.subs.get("user", USER.user_id)
        assert (sub.tier, sub.expires_at, sub.renews, sub.charge_id) == ("premium", first_until, True, "c1")
        assert "renews it by itself" in bot.outbox.sent[-1].text
        assert await bot.tier() == "premium"

        clock.t = first_until - timedelta(minutes=1)
        renewed_until = first_until + PERIOD
        await bot.pay("c2", renewed_until, renewal=True)
        await bot.pay("c2", renewed_until, renewal=True)  # the same update delivered again
        sub = await bot.subs.get("user", USER.user_id)
        assert (sub.expires_at, sub.renews, sub.charge_id) == (renewed_until, True, "c1")  # the first charge names it
        assert "was renewed" in bot.outbox.sent[-1].text
        assert sorted(p.charge_id for p in await rt.memory.store.billing.payments()) == ["c1", "c2"]
        clock.t = first_until + timedelta(days=1)
        assert await bot.tier() == "premium"

        bot.subs.reload()  # what the database holds, not the cache
        sub = await bot.subs.get("user", USER.user_id)
        assert (sub.expires_at, sub.renews, sub.charge_id) == (renewed_until, True, "c1")


async def test_without_a_renewal_it_expires_at_the_date_and_the_plan_is_sold_again(tmp_path, st_model):
    clock, holder = Clock(T0), {}
    async with runtime(tmp_path, st_model, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        until = T0 + PERIOD
        await bot.pay("c1", until)
        clock.t = until - timedelta(seconds=1)
        assert await bot.tier() == "premium"
        assert "renews on" in (await bot.billing()).text
        clock.t = until  # the renewal never came (cancelled in Telegram's settings, or the Stars ran out)
        assert await bot.tier() == "free"
        plans = await bot.billing()
        assert "renews" not in plans.text and "Cancel renewal" not in labels(plans)
        assert labels(plans)[0].startswith("monthly: premium, renewed every 30 days")
        # a renewal that arrives late still counts, from Telegram's date
        await bot.pay("c2", until + PERIOD, renewal=True)
        assert (await bot.subs.get("user", USER.user_id)).expires_at == until + PERIOD
        assert await bot.tier() == "premium"


async def test_cancel_and_resume_from_billing(tmp_path, st_model):
    clock, holder = Clock(T0), {}
    async with runtime(tmp_path, st_model, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        until = T0 + PERIOD
        await bot.pay("c1", until)
        plans = await bot.billing()
        assert plans.text.startswith("Your **premium** subscription renews on 3/31/26, 12:00\u202fPM UTC.")
        assert labels(plans) == ["week: 7 days of premium — 70 ⭐", "Cancel renewal"]  # not sold twice
        await bot.press(plans, "buy:monthly:user")  # an old /billing's button
        assert bot.outbox.answered[-1][1] == "You already have a subscription: see /billing."

        await bot.press(plans, "sub:cancel")
        assert bot.outbox.star_subscriptions == [(USER.user_id, "c1", True)]
        assert bot.outbox.answered[-1][1] == "Renewal cancelled."
        shown = bot.outbox.sent[-1]
        assert shown.text.startswith("Your **premium** subscription ends on 3/31/26, 12:00\u202fPM UTC and won't renew.")
        assert labels(shown)[-1] == "Resume renewal"
        bot.subs.reload()
        assert (await bot.subs.get("user", USER.user_id)).renews is False  # stored
        assert await bot.tier() == "premium"  # still paid for until the date
        from rich.console import Console

        from operations.tiers_report import list_subs

        con = Console(record=True, width=200)
        await list_subs(rt.memory.store, rt.config.tiers, con, clock=clock, subs=bot.subs)
        assert "active, won't renew" in con.export_text()  # kith sub list says so

        await bot.press(shown, "sub:resume")
        assert bot.outbox.star_subscriptions[-1] == (USER.user_id, "c1", False)
        assert "renews on" in bot.outbox.sent[-1].text and labels(bot.outbox.sent[-1])[-1] == "Cancel renewal"
        assert (await bot.subs.get("user", USER.user_id)).renews is True

        clock.t = until + timedelta(seconds=1)
        await bot.press(shown, "sub:cancel")  # expired: nothing to cancel
        assert bot.outbox.answered[-1][1] == "You have no subscription to change."
        assert len(bot.outbox.star_subscriptions) == 2


async def test_profile_says_whether_the_subscription_renews_as_billing_does(tmp_path, st_model):
    clock, holder = Clock(T0), {}
    async with runtime(tmp_path, st_model, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.pay("w1", None, plan="week")  # a one-off plan: no renewal to speak of
        assert "Your subscription: premium until 3/8/26, 12:00\u202fPM UTC" in await bot.profile()
        until = T0 + PERIOD
        await bot.pay("c1", until)
        renews = "Your **premium** subscription renews on 4/7/26, 12:00\u202fPM UTC."  # the week is kept: 30 + 7 days
        assert renews in (await bot.billing()).text
        text = await bot.profile()
        assert renews in text and "Your subscription:" not in text
        await bot.press(await bot.billing(), "sub:cancel")
        assert "Your **premium** subscription ends on 4/7/26, 12:00\u202fPM UTC and won't renew." in await bot.profile()
        clock.t = until + timedelta(days=8)  # ended
        text = await bot.profile()
        assert "renew" not in text and "Your subscription: premium until 4/7/26, 12:00\u202fPM UTC" in text


async def test_a_group_buys_the_renewing_plan_one_off(tmp_path, st_model):
    clock, holder = Clock(T0), {}
    async with runtime(tmp_path, st_model, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        plans = await bot.billing(GROUP, "supergroup")
        assert labels(plans)[0] == "monthly: 30 days of premium — 250 ⭐"
        await bot.press(plans, "buy:monthly:chat", chat_id=GROUP)
        invoice = bot.outbox.sent[-1].invoice
        assert invoice is not None and invoice.subscription_period is None and bot.outbox.sent[-1].text.startswith("[invoice]")
        await bot.pay("g1", None, scope="chat", chat_id=GROUP)
        sub = await bot.subs.get("chat", GROUP)
        assert (sub.expires_at, sub.renews, sub.charge_id) == (T0 + PERIOD, None, None)


async def test_a_one_off_plan_keeps_the_subscription_renewing(tmp_path, st_model):
    """Time bought besides (a one-off week) is added and kept through the renewals."""
    clock, holder = Clock(T0), {}
    async with runtime(tmp_path, st_model, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.pay("w1", None, plan="week")  # a week bought first: subscribing keeps it
        await bot.pay("c1", T0 + PERIOD)
        sub = await bot.subs.get("user", USER.user_id)
        assert (sub.expires_at, sub.renews, sub.charge_id) == (T0 + PERIOD + timedelta(days=7), True, "c1")
        await bot.pay("w2", None, plan="week")
        sub = await bot.subs.get("user", USER.user_id)
        assert (sub.expires_at, sub.renews, sub.charge_id) == (T0 + PERIOD + timedelta(days=14), True, "c1")
        clock.t = T0 + PERIOD
        await bot.pay("c2", T0 + 2 * PERIOD, renewal=True)
        assert (await bot.subs.get("user", USER.user_id)).expires_at == T0 + 2 * PERIOD + timedelta(days=14)


# ---------------------------------------------------------------------- through real pyrogram updates


def buttons_of(sent) -> list:
    return [b for row in sent.markup.rows for b in row.buttons]


async def test_the_subscription_through_real_pyrogram_updates(tmp_path, st_model, caplog):
    """/billing → a link (ExportInvoice with subscription_period) → pre-checkout → the first payment
    and a renewal delivered twice (MessageActionPaymentSentMe with subscription_until_date) → cancel
    and resume (BotCancelStarsSubscription)."""
    from tests.test_telegram import running_bot

    async with running_bot(tmp_path, st_model, cfg("recall")) as (h, app):
        ann = h.user(42, "Ann")
        subs = app.runtime.services.admission.subs
        asked = await h.private(ann, "/billing")
        await h.settle(app.runtime.supervisor)
        (plans,) = h.replies_to(42, asked)
        buy = buttons_of(plans)[0]
        await h.press(ann, 42, plans.message_id, buy.type.data.decode())
        await h.settle(app.runtime.supervisor)
        (media,) = h.invoice_links
        assert media.invoice.subscription_period == 2_592_000 and media.invoice.currency == "XTR"
        assert [p.amount for p in media.invoice.prices] == [250]
        payload = media.payload.decode()
        assert payload == make_payload("monthly", "user", 42)
        (link,) = buttons_of(h.sent[-1])
        assert isinstance(link.type, raw.types.InlineButtonTypeUrl) and link.type.url == "https://t.me/$kith-invoice-1"
        assert h.count(raw.functions.messages.SendMedia) == 0  # no send_invoice: Telegram sells subscriptions as links

        qid = await h.pre_checkout(ann, payload, 250)
        await h.settle(app.runtime.supervisor)
        assert h.pre_checkout_answers[-1][:2] == (qid, True)
        until = int(time.time()) + 2_592_000
        await h.paid(ann, 42, payload, 250, "tg-first", until=until, first=True)
        await h.settle(app.runtime.supervisor)
        sub = await subs.get("user", 42)
        assert (sub.tier, sub.expires_at, sub.renews, sub.charge_id) == ("premium", datetime.fromtimestamp(until, UTC), True, "tg-first")

        for _ in range(2):  # a renewal, delivered twice
            await h.paid(ann, 42, payload, 250, "tg-renewal-1", until=until + 2_592_000, renewal=True)
        await h.settle(app.runtime.supervisor)
        sub = await subs.get("user", 42)
        assert (sub.expires_at, sub.charge_id) == (datetime.fromtimestamp(until + 2_592_000, UTC), "tg-first")
        assert len(await app.runtime.memory.store.billing.payments(user_id=42)) == 2

        asked = await h.private(ann, "/billing")
        await h.settle(app.runtime.supervisor)
        (plans,) = h.replies_to(42, asked)
        assert "renews on" in plans.text
        cancel = buttons_of(plans)[-1]
        assert cancel.text == "Cancel renewal"
        await h.press(ann, 42, plans.message_id, cancel.type.data.decode())
        await h.settle(app.runtime.supervisor)
        assert h.star_subscriptions == [(42, "tg-first", False)]  # restore=False: cancelled
        assert "won't renew" in h.sent[-1].text
        resume = buttons_of(h.sent[-1])[-1]
        assert resume.text == "Resume renewal"
        await h.press(ann, 42, h.sent[-1].message_id, resume.type.data.decode())
        await h.settle(app.runtime.supervisor)
        assert h.star_subscriptions[-1] == (42, "tg-first", True)
        assert "renews on" in h.sent[-1].text
        assert (await subs.get("user", 42)).renews is True
    assert not pyrogram_errors(caplog)
