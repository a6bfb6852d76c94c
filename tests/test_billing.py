"""Tiers in the chat pipeline: admission (quotas, fallback, 🔒 models), /billing and payments."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.events import ButtonPress, CommandEvent, Incoming, PaymentEvent, PreCheckout, Sender
from config.models import Config, Features, ModelSpec, Plan, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from tests.clock import Clock
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

USER = Sender(21, "Uma")


def cfg(*, fallback: str | None = None) -> Config:
    models = {"cheap": ModelSpec(model="kith/recall", label="Cheap"), "smart": ModelSpec(model="kith/recall", label="Smart")}
    tiers = TiersConfig(
        default_tier="free",
        tiers={
            "free": Tier(models=("cheap", "smart"), quotas=Quotas(requests_per_day={"smart": 2, "cheap": 5}), fallback_model=fallback),
            "basic": Tier(models=("cheap",)),
            "premium": Tier(models=("*",)),
        },
        plans={"month": Plan(tier="premium", days=30, price=250, currency="XTR")},
    )
    return Config(settings=Settings(models=models, default_model="smart"), tiers=tiers)


class Bot:
    def __init__(self, rt, outbox, clock):
        self.rt, self.outbox, self.clock, self.turns, self.n = rt, outbox, clock, [], 0
        rt.services.on_turn = self.turns.append

    async def tell(self, chat_id, ev):
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)

    async def say(self, text, chat_id=USER.user_id):
        self.n += 1
        await self.tell(chat_id, Incoming(chat_id, "private", self.n, USER, text, self.clock()))
        return self.turns[-1]

    async def cmd(self, command, args=""):
        self.n += 1
        await self.tell(USER.user_id, CommandEvent(USER.user_id, "private", self.n, USER, command, args, self.clock()))
        return self.outbox.sent[-1]


def runtime(tmp_path, st_model, config, clock, holder):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), clock=clock)
        return holder["outbox"]

    return open_runtime(config, tmp_path, make, model=st_model, clock=clock)


async def test_quota_refuses_once_with_reset_time_then_serves_after_the_utc_day_turns(tmp_path, st_model):
    clock, holder = Clock(datetime(2026, 3, 1, 21, 30, tzinfo=UTC)), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        assert (await bot.say("one?")).responded and (await bot.say("two?")).responded
        sent_before = len(bot.outbox.sent)
        refused = await bot.say("three?")
        assert not refused.responded and refused.error == "refused: quota"
        refusal = bot.outbox.sent[-1].text
        assert "00:00 UTC" in refusal and "/billing" in refusal
        assert len(bot.outbox.sent) == sent_before + 1
        await bot.say("four?")  # refused again, silently: the member was told once
        assert len(bot.outbox.sent) == sent_before + 1
        rows = await rt.memory.store.usage.rows()
        assert len(rows) == 2  # refusals cost nothing
        clock.t = datetime(2026, 3, 2, 0, 1, tzinfo=UTC)
        assert (await bot.say("five?")).responded


async def test_the_tier_fallback_model_serves_when_the_quota_is_spent(tmp_path, st_model):
    clock, holder = Clock(datetime(2026, 3, 1, 12, tzinfo=UTC)), {}
    async with runtime(tmp_path, st_model, cfg(fallback="cheap"), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        models = [(await bot.say(f"q{i}?")).model for i in range(4)]
    assert models == ["smart", "smart", "cheap", "cheap"]


async def test_model_menu_locks_what_the_tier_lacks_and_refuses_switching_to_it(tmp_path, st_model):
    clock, holder = Clock(datetime(2026, 3, 1, 12, tzinfo=UTC)), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        await rt.services.admission.subs.grant("user", USER.user_id, "basic", None, "test")
        bot = Bot(rt, holder["outbox"], clock)
        menu = await bot.cmd("model")
        assert [b.text for row in menu.buttons for b in row] == ["✓ Cheap", "🔒 Smart"]
        await bot.tell(USER.user_id, ButtonPress(USER.user_id, menu.message_id, USER, "model:smart", "q1"))
        assert "not part of the basic tier" in bot.outbox.sent[-1].text


async def test_billing_invoice_checkout_and_payment_extend_once(tmp_path, st_model):
    clock, holder = Clock(datetime(2026, 3, 1, 12, tzinfo=UTC)), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        plans = await bot.cmd("billing")
        (button,) = [b for row in plans.buttons for b in row]
        assert "250 ⭐" in button.text
        await bot.tell(USER.user_id, ButtonPress(USER.user_id, plans.message_id, USER, button.data, "q2"))
        invoice = bot.outbox.sent[-1].invoice
        assert invoice is not None and invoice.currency == "XTR" and invoice.total == 250
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, USER, "pc1", invoice.payload, 250, "XTR"))
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, USER, "pc2", invoice.payload, 1, "XTR"))
        assert [(q, ok) for q, ok, _ in bot.outbox.pre_checkouts] == [("pc1", True), ("pc2", False)]
        pay = PaymentEvent(USER.user_id, 99, USER, "charge-1", invoice.payload, 250, "XTR", clock())
        await bot.tell(USER.user_id, pay)
        await bot.tell(USER.user_id, pay)  # Telegram re-delivers the same update
        sub = await rt.services.admission.subs.get("user", USER.user_id)
        assert sub.tier == "premium" and sub.expires_at == clock() + timedelta(days=30)
        assert "premium" in bot.outbox.sent[-1].text
        assert [p.charge_id for p in await rt.memory.store.billing.payments()] == ["charge-1"]
        assert (await rt.services.admission.admit(USER.user_id, "private", USER.user_id, "smart")).tier == "premium"
        profile = await bot.cmd("profile")
        assert "Tier here: **premium**" in profile.text


async def test_profile_and_usage_show_images_per_request_with_the_images_quota(tmp_path, st_model):
    models = {"smart": ModelSpec(model="kith/recall")}
    tiers = TiersConfig(default_tier="free", tiers={
        "free": Tier(quotas=Quotas(images_per_day=5, images_per_request=1)),  # no image_generation: no images line
        "plus": Tier(features=Features(image_generation=True), quotas=Quotas(images_per_day=20, images_per_request=4)),
        "max": Tier(features=Features(image_generation=True), quotas=Quotas(images_per_request=-1)),
    })
    clock, holder = Clock(datetime(2026, 3, 1, 12, tzinfo=UTC)), {}
    async with runtime(tmp_path, st_model, Config(settings=Settings(models=models, default_model="smart"), tiers=tiers),
                       clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        assert "images" not in (await bot.cmd("profile")).text
        await rt.services.admission.subs.grant("user", USER.user_id, "plus", None, "test")
        assert "• images: 0 / 20 (up to 4 per request)" in (await bot.cmd("profile")).text.splitlines()
        assert "• images: 0 / 20 (up to 4 per request)" in (await bot.cmd("usage")).text.splitlines()
        await rt.services.admission.subs.grant("user", USER.user_id, "max", None, "test")
        assert "• images: 0 / unlimited (up to 10 per request)" in (await bot.cmd("profile")).text.splitlines()
