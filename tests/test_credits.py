"""Credits beside subscriptions (issue #26): /buy → invoice → pre-checkout → payment credited once;
answers paid from a balance once the quota is spent, debited exactly once per answered message;
refused with the /buy button when the balance is short; the member pays first, then the group;
/balance, /profile, /model; ``kith credits``; the Stars flow through real pyrogram updates."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.events import ButtonPress, CommandEvent, Incoming, PaymentEvent, PreCheckout, Sender
from actors.services import ALREADY_ANSWERED
from config.models import Config, CreditPack, ModelSpec, Plan, Prices, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from memory.ledger import LedgerEntry, debit_key
from tests.clock import Clock
from tiers.credits import make_pack_payload
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

USER = Sender(21, "Uma")
OWNER = Sender(5, "Otto")
GROUP = -100777


def cfg(*, free_requests: int = 0, per_1k: int = 0) -> Config:
    models = {"cheap": ModelSpec(model="kith/recall", label="Cheap"), "smart": ModelSpec(model="kith/recall", label="Smart")}
    tiers = TiersConfig(
        default_tier="free",
        tiers={"free": Tier(models=("*",), quotas=Quotas(requests_per_day={"*": free_requests}), when_spent="credits"),
               "premium": Tier(models=("*",))},
        plans={"month": Plan(tier="premium", days=30, price=250)},
        credit_packs={"small": CreditPack(credits=100, price=50, title={"en": "100 credits", "ru": "100 кредитов"})},
        prices=Prices(per_message={"*": 3, "cheap": 1}, per_1k_tokens=per_1k),
    )
    return Config(settings=Settings(models=models, default_model="smart"), tiers=tiers)


class Bot:
    def __init__(self, rt, outbox, clock):
        self.rt, self.outbox, self.clock, self.turns, self.n = rt, outbox, clock, [], 0
        rt.services.on_turn = self.turns.append
        self.ledger = rt.services.admission.ledger

    async def tell(self, chat_id, ev):
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)

    async def say(self, text, chat_id=USER.user_id, message_id=None):
        if message_id is None:
            self.n += 1
            message_id = self.n
        await self.tell(chat_id, Incoming(chat_id, "private", message_id, USER, text, self.clock()))
        return self.turns[-1]

    async def cmd(self, command, args="", chat_id=USER.user_id, chat_type="private"):
        self.n += 1
        await self.tell(chat_id, CommandEvent(chat_id, chat_type, self.n, USER, command, args, self.clock()))
        return self.outbox.sent[-1]

    async def grant(self, n, scope="user", sid=USER.user_id, key="grant:test"):
        return await self.ledger.append(LedgerEntry(key, scope, sid, "grant", n))


def runtime(tmp_path, st_model, config, clock, holder):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), clock=clock)
        return holder["outbox"]

    return open_runtime(config, tmp_path, make, model=st_model, clock=clock)


def now() -> Clock:
    return Clock(datetime(2026, 3, 1, 12, tzinfo=UTC))


async def test_a_pack_is_bought_through_buy_and_credited_once_per_charge(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        packs = await bot.cmd("buy")
        (button,) = [b for row in packs.buttons for b in row]
        assert "100 credits" in button.text and "50 ⭐" in button.text
        await bot.tell(USER.user_id, ButtonPress(USER.user_id, packs.message_id, USER, button.data, "q1"))
        invoice = bot.outbox.sent[-1].invoice
        assert invoice is not None and invoice.payload == "kith:credits:small:user:21" and invoice.total == 50
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, USER, "pc1", invoice.payload, 50, "XTR"))
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, USER, "pc2", invoice.payload, 49, "XTR"))
        await bot.tell(USER.user_id, PreCheckout(USER.user_id, USER, "pc3", "kith:credits:gone:user:21", 50, "XTR"))
        assert [(q, ok) for q, ok, _ in bot.outbox.pre_checkouts] == [("pc1", True), ("pc2", False), ("pc3", False)]
        pay = PaymentEvent(USER.user_id, 99, USER, "charge-1", invoice.payload, 50, "XTR", clock())
        await bot.tell(USER.user_id, pay)
        await bot.tell(USER.user_id, pay)  # Telegram re-delivers the same update
        assert await bot.ledger.balance("user", USER.user_id) == 100
        assert "balance is 100 credits" in bot.outbox.sent[-1].text
        assert [(p.charge_id, p.plan) for p in await rt.memory.store.billing.payments()] == [("charge-1", "credits:small")]
        # plans still go through /billing's own flow
        plan_pay = PaymentEvent(USER.user_id, 100, USER, "charge-2", "kith:plan:month:user:21", 250, "XTR", clock())
        await bot.tell(USER.user_id, plan_pay)
        assert (await rt.services.admission.subs.get("user", USER.user_id)).tier == "premium"
        assert await bot.ledger.balance("user", USER.user_id) == 100


async def test_a_paid_answer_is_debited_exactly_once_even_when_handled_again(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(free_requests=1), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.grant(10)
        assert (await bot.say("one?")).responded  # the free quota
        assert await bot.ledger.balance("user", USER.user_id) == 10
        paid = await bot.say("two?")
        assert paid.responded and await bot.ledger.balance("user", USER.user_id) == 7
        again = await bot.say("two?", message_id=paid.message_id)  # Telegram re-delivers it
        assert again.error == ALREADY_ANSWERED
        assert await bot.ledger.balance("user", USER.user_id) == 7
        (row,) = [e for e in await bot.ledger.history("user", USER.user_id) if e.kind == "debit"]
        assert (row.key, row.amount, row.message_id, row.note) == (debit_key(USER.user_id, paid.message_id), -3,
                                                                  paid.message_id, "smart")
        answered = paid.message_id
    async with runtime(tmp_path, st_model, cfg(free_requests=1), clock, holder) as rt:  # a restart, then the same update
        bot = Bot(rt, holder["outbox"], clock)
        assert (await bot.say("two?", message_id=answered)).error == ALREADY_ANSWERED
        assert await bot.ledger.balance("user", USER.user_id) == 7
        # the turn's debit itself is idempotent: charging the same answer again takes nothing
        adm = await rt.services.admission.admit(USER.user_id, "private", USER.user_id, "smart")
        assert adm.paid_by == ("user", USER.user_id) and adm.price == 3
        posting = await rt.services.admission.charge(adm, USER.user_id, answered, USER.user_id)
        assert posting.status == "duplicate" and posting.balance == 7


async def test_tokens_are_charged_after_the_answer_and_never_below_zero(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(per_1k=1000), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.grant(4)
        turn = await bot.say("hello there, what do you remember?")
        assert turn.responded
        rows = {e.key: e.amount for e in await bot.ledger.history("user", USER.user_id) if e.kind == "debit"}
        key = debit_key(USER.user_id, turn.message_id)
        assert rows[key] == -3 and rows[key + ":tokens"] == -1  # cut to what was left: the floor holds
        assert await bot.ledger.balance("user", USER.user_id) == 0


async def test_a_short_balance_refuses_with_the_buy_button(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.grant(2)
        refused = await bot.say("anything?")
        assert not refused.responded and refused.error == "refused: credits"
        msg = bot.outbox.sent[-1]
        assert "/buy" in msg.text and "3 credits" in msg.text and "balance is 2" in msg.text
        data = [b.data for row in msg.buttons for b in row]
        assert "credits:show" in data and "billing:show" in data
        await bot.tell(USER.user_id, ButtonPress(USER.user_id, msg.message_id, USER, "credits:show", "q9"))
        assert [b.data for row in bot.outbox.sent[-1].buttons for b in row] == ["credits:buy:small:user"]
        assert await bot.ledger.balance("user", USER.user_id) == 2  # a refusal costs nothing
        # the cheaper model fits the balance
        assert (await rt.services.admission.admit(USER.user_id, "private", USER.user_id, "cheap")).paid_by is not None


async def test_the_member_pays_first_then_the_group_and_only_admins_buy_for_it(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        admission = rt.services.admission
        assert (await admission.admit(GROUP, "supergroup", USER.user_id, "smart")).reason == "credits"
        await bot.grant(5, "chat", GROUP, "grant:g")
        adm = await admission.admit(GROUP, "supergroup", USER.user_id, "smart")
        assert adm.allowed and adm.paid_by == ("chat", GROUP)
        assert (await admission.admit(USER.user_id, "private", USER.user_id, "smart")).reason == "credits"  # only in the group
        await bot.grant(3)
        assert (await admission.admit(GROUP, "supergroup", USER.user_id, "smart")).paid_by == ("user", USER.user_id)
        bot.outbox.admins = {(GROUP, 1)}
        packs = await bot.cmd("buy", chat_id=GROUP, chat_type="supergroup")
        assert "this group's balance" in packs.text
        (button,) = [b for row in packs.buttons for b in row]
        await bot.tell(GROUP, ButtonPress(GROUP, packs.message_id, USER, button.data, "q3"))
        assert bot.outbox.answered[-1][1] == "Only this group's admins can buy credits for it."
        bot.outbox.admins = None
        await bot.tell(GROUP, ButtonPress(GROUP, packs.message_id, USER, button.data, "q4"))
        assert bot.outbox.sent[-1].invoice.payload == f"kith:credits:small:chat:{GROUP}"


async def test_balance_profile_and_model_show_credits_and_prices(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(free_requests=0), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.grant(10)
        await bot.say("paid?")
        text = (await bot.cmd("balance")).text
        assert "Your balance: **7 credits**" in text and "An answer with smart costs 3 credits" in text
        assert "answer: −3 (smart)" in text and "grant: +10" in text
        assert "cheap 1, smart 3" in (await bot.cmd("profile")).text
        assert "cheap 1, smart 3" in (await bot.cmd("model")).text
        await bot.cmd("language", "ru")
        ru = (await bot.cmd("balance")).text
        assert "7" in ru


def test_kith_credits_grant_revoke_list_history(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data")]
    r = runner.invoke(app, ["credits", "grant", "user:42", "100", "--note", "welcome", "--id", "t1", *data])
    assert r.exit_code == 0 and "user:42 has 100 credits" in r.output, r.output
    r = runner.invoke(app, ["credits", "grant", "user:42", "100", "--id", "t1", *data])  # the same grant again
    assert r.exit_code == 0 and "nothing changed" in r.output, r.output
    r = runner.invoke(app, ["credits", "revoke", "user:42", "500", *data])
    assert r.exit_code == 1 and "cannot revoke" in r.output, r.output
    assert runner.invoke(app, ["credits", "revoke", "user:42", "30", *data]).exit_code == 0
    assert runner.invoke(app, ["credits", "grant", "chat:-100123", "5", *data]).exit_code == 0
    assert runner.invoke(app, ["credits", "grant", "guild:1", "5", *data]).exit_code == 1
    r = runner.invoke(app, ["credits", "list", "--json", *data])
    assert r.exit_code == 0 and json.loads(r.output) == [{"target": "chat:-100123", "balance": 5},
                                                        {"target": "user:42", "balance": 70}], r.output
    r = runner.invoke(app, ["credits", "history", "user:42", "--json", *data])
    out = json.loads(r.output)
    assert out["balance"] == 70 and sorted(e["amount"] for e in out["history"]) == [-30, 100]
    assert [e["note"] for e in out["history"] if e["kind"] == "grant"] == ["welcome"]
    r = runner.invoke(app, ["credits", "history", "user:42", *data])
    assert r.exit_code == 0 and "user:42 has 70 credits" in r.output


async def test_the_stars_flow_through_real_pyrogram_updates(tmp_path, st_model):
    """invoice → pre-checkout → successful payment → credits → a debit per answer, on the Telegram
    transport (pyrogram parses and dispatches the raw updates)."""
    from tests.test_telegram import running_bot

    config = cfg()
    config = Config(settings=config.settings.model_copy(update={"models": {"recall": ModelSpec(model="kith/recall")},
                                                                 "default_model": "recall"}), tiers=config.tiers)
    async with running_bot(tmp_path, st_model, config) as (h, app):
        ann = h.user(42, "Ann")
        ledger = app.runtime.services.admission.ledger
        first = await h.private(ann, "hello?")
        await h.settle(app.runtime.supervisor)
        assert "/buy" in h.replies_to(42, first)[0].text  # no credits yet
        payload = make_pack_payload("small", "user", 42)
        qid = await h.pre_checkout(ann, payload, 50)
        await h.settle(app.runtime.supervisor)
        assert h.pre_checkout_answers[-1][:2] == (qid, True)
        await h.paid(ann, 42, payload, 50, "tg-charge-1")
        await h.paid(ann, 42, payload, 50, "tg-charge-1")  # delivered twice
        await h.settle(app.runtime.supervisor)
        assert await ledger.balance("user", 42) == 100
        asked = await h.private(ann, "and now?")
        await h.settle(app.runtime.supervisor)
        assert h.replies_to(42, asked)
        assert await ledger.balance("user", 42) == 97
        assert (await ledger.get(debit_key(42, asked))).amount == -3  # type: ignore[union-attr]


async def test_kith_credits_goes_through_the_running_bot(tmp_path: Path, ov_encoder) -> None:
    """While the bot owns the data dir, ``kith credits`` runs in it (its admin API), on its own ledger."""
    from tests.test_admin_api import kith
    from tests.test_admin_api import running_bot as bot_with_control

    data = tmp_path / "data"
    async with bot_with_control(data, ov_encoder) as (rt, _server):
        r = await kith("credits", "grant", "user:42", "10", "--id", "once", "--data-dir", str(data))
        assert r.exit_code == 0 and "user:42 has 10 credits" in r.stdout, (r.stdout, r.stderr)
        assert await rt.services.admission.ledger.balance("user", 42) == 10  # the bot's ledger, at once
        r = await kith("credits", "grant", "user:42", "10", "--id", "once", "--data-dir", str(data))
        assert "nothing changed" in r.stdout
        r = await kith("credits", "list", "--json", "--data-dir", str(data))
        assert json.loads(r.stdout) == [{"target": "user:42", "balance": 10}]


async def test_a_failed_answer_gets_its_price_back_once(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.grant(10)
        admission = rt.services.admission
        adm = await admission.admit(USER.user_id, "private", USER.user_id, "smart")
        assert (await admission.uncharge(adm, USER.user_id, 500)) is None  # nothing taken: nothing to give back
        assert (await admission.charge(adm, USER.user_id, 500, USER.user_id)).balance == 7
        assert (await admission.uncharge(adm, USER.user_id, 500)).balance == 10
        assert (await admission.uncharge(adm, USER.user_id, 500)).status == "duplicate"
        assert await bot.ledger.balance("user", USER.user_id) == 10


def expiring_cfg() -> Config:
    config = cfg()
    tiers = config.tiers.model_copy(update={"credit_packs": {
        "small": CreditPack(credits=100, price=50, expires_days=30)}})
    return Config(settings=config.settings, tiers=tiers)


async def test_a_packs_unspent_credits_expire_and_balance_says_when(tmp_path, st_model):
    clock, holder = now(), {}
    async with runtime(tmp_path, st_model, expiring_cfg(), clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)
        await bot.grant(10)  # never expires
        clock.advance(seconds=1)
        await bot.tell(USER.user_id, PaymentEvent(USER.user_id, 99, USER, "charge-1", make_pack_payload("small", "user", 21),
                                                  50, "XTR", clock()))
        clock.advance(seconds=1)
        assert (await bot.say("one?")).responded and (await bot.say("two?")).responded  # 3 each, from the pack
        text = (await bot.cmd("balance")).text
        assert "Your balance: **104 credits**" in text and "94 credits expire on Mar 31, 2026" in text, text
        clock.advance(days=31)
        text = (await bot.cmd("balance")).text
        assert "Your balance: **10 credits**" in text and "expire on" not in text, text
        assert "expired: −94" in text
        assert (await bot.say("three?")).responded and await bot.ledger.balance("user", USER.user_id) == 7


async def test_admin_refund_gives_stars_back_and_takes_what_is_left(tmp_path, st_model):
    clock, holder = now(), {}
    config = cfg()
    config = Config(settings=config.settings.model_copy(update={"telegram": config.settings.telegram.model_copy(
        update={"owners": (OWNER.user_id,)})}), tiers=config.tiers)
    async with runtime(tmp_path, st_model, config, clock, holder) as rt:
        bot = Bot(rt, holder["outbox"], clock)

        async def admin(args: str, who: Sender = OWNER) -> str:
            bot.n += 1
            await bot.tell(who.user_id, CommandEvent(who.user_id, "private", bot.n, who, "admin", args, clock()))
            return bot.outbox.sent[-1].text

        await bot.tell(USER.user_id, PaymentEvent(USER.user_id, 99, USER, "charge-1", make_pack_payload("small", "user", 21),
                                                  50, "XTR", clock()))
        clock.advance(seconds=1)
        await bot.say("spend?")
        assert await bot.ledger.balance("user", USER.user_id) == 97
        text = await admin("refund charge-1")
        assert bot.outbox.refunds == [(USER.user_id, "charge-1")]
        assert "50 Stars refunded to user 21; 97 credits unspent taken off user:21 (balance 0 credits)" in text, text
        again = await admin("refund charge-1")
        assert "was refunded on" in again and len(bot.outbox.refunds) == 1
        assert "No payment has the charge id nope" in await admin("refund nope")
        # a plan: its days come off the subscription
        await bot.tell(USER.user_id, PaymentEvent(USER.user_id, 100, USER, "charge-2", "kith:plan:month:user:21", 250, "XTR",
                                                  clock()))
        await bot.tell(USER.user_id, PaymentEvent(USER.user_id, 101, USER, "charge-3", "kith:plan:month:user:21", 250, "XTR",
                                                  clock()))
        subs = rt.services.admission.subs
        until = (await subs.get("user", USER.user_id)).expires_at
        text = await admin("refund charge-3")
        assert (await subs.get("user", USER.user_id)).expires_at == until - timedelta(days=30)
        assert "premium until" in text, text
        # Telegram refunded it before, but the bot stopped before recording: recorded now, once
        bot.outbox.refunds.append((USER.user_id, "charge-2"))
        text = await admin("refund charge-2")
        assert "has no subscription now" in text and await subs.get("user", USER.user_id) is None
        assert (await bot.ledger.get("refund:charge-2")).note == "plan:month"
        assert "Unknown command /admin" in await admin("refund charge-1", USER)  # not an owner
