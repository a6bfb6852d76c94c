"""The host's spending cap (issue #26): spend rebuilt from the stored usage at start and when the UTC
day / month turns (real DuckDB); over the cap a paid model is not called — a burst of turns through
litellm over real HTTP stops calling the server within one turn and the offline model answers with
the note; the owners are told once at 80 % and once at 100 %, not again after a restart; /metrics
and ``kith usage`` show the spend and the caps."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from actors.events import Incoming, Sender
from actors.stores import dialogue_store
from config.models import BudgetSettings, Config, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from memory.types import UsageRecord
from operations.metrics import Metrics
from operations.tiers_report import usage_report
from tests.clock import Clock
from tests.llm_server import llm_server
from tiers.budget import Budget
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

MODELS = {"recall": ModelSpec(model="kith/recall"), "paid": ModelSpec(model="openai/gpt-4o-mini")}
OWNER = 77


def usage(ts: datetime, cost: float | None, *, kind: str = "chat", model: str = "paid") -> UsageRecord:
    return UsageRecord(ts=ts, chat_id=1, user_id=2, kind=kind, model=model, prompt_tokens=10, completion_tokens=5,
                       cost_usd=cost, latency_ms=1.0)


async def test_spend_is_rebuilt_from_stored_usage_at_start_and_when_the_day_and_month_turn(tmp_path: Path) -> None:
    cfg = Config(settings=Settings(), tiers=TiersConfig())
    clock = Clock(datetime(2025, 3, 30, 12, tzinfo=UTC))
    caps = BudgetSettings(daily_usd=1.0, monthly_usd=10.0)
    async with dialogue_store(cfg, tmp_path) as store:
        for ts, cost in ((datetime(2025, 2, 28, 9, tzinfo=UTC), 5.0),  # last month: not this month's
                         (datetime(2025, 3, 1, 9, tzinfo=UTC), 2.0),
                         (datetime(2025, 3, 30, 8, tzinfo=UTC), 0.25),
                         (datetime(2025, 3, 30, 9, tzinfo=UTC), None),  # unpriced: counts 0, said
                         (datetime(2025, 3, 31, 1, tzinfo=UTC), 0.5),  # a replay's later day: not yet
                         (datetime(2025, 4, 1, 1, tzinfo=UTC), 0.125)):
            store.record_usage(usage(ts, cost))
        budget = Budget(store, caps, MODELS, clock)
        await budget.load()  # at start: from the table
        day, month = budget.spend("day"), budget.spend("month")
        assert (day.spent_usd, day.unpriced, month.spent_usd, month.unpriced) == (0.25, 1, 2.25, 1)
        assert day.resets_at == datetime(2025, 3, 31, tzinfo=UTC) and month.resets_at == datetime(2025, 4, 1, tzinfo=UTC)
        assert budget.allows_paid()

        budget.record(usage(clock(), 0.5))  # a call now: counted in memory (and stored, as record_usage does)
        store.record_usage(usage(clock(), 0.5))
        assert (budget.spend("day").spent_usd, budget.spend("month").spent_usd) == (0.75, 2.75)
        budget.record(usage(clock(), 0.25))
        store.record_usage(usage(clock(), 0.25))
        assert budget.reached() is not None and budget.reached().period == "day" and not budget.allows_paid()  # type: ignore[union-attr]

        clock.advance(hours=13)  # 2025-03-31 01:00: a new day, the same month
        await budget.load()
        assert (budget.spend("day").spent_usd, budget.spend("month").spent_usd) == (0.5, 3.5)
        assert budget.allows_paid()

        clock.advance(days=1)  # 2025-04-01 01:00: a new month
        await budget.load()
        assert (budget.spend("day").spent_usd, budget.spend("month").spent_usd) == (0.125, 0.125)
        budget.record(usage(datetime(2025, 3, 31, 23, tzinfo=UTC), 9.0))  # last month's late record: not this month's
        assert budget.spend("month").spent_usd == 0.125

        # a second start over the same data (another process) counts the same
        again = Budget(store, caps, MODELS, clock)
        await again.load()
        assert (again.spend("day").spent_usd, again.spend("month").spent_usd) == (0.125, 0.125)

        # the monthly cap stops paid calls too; a free model is never refused
        monthly = Budget(store, BudgetSettings(monthly_usd=0.1), MODELS, clock)
        await monthly.load()
        reached = monthly.reached()
        assert reached is not None and reached.period == "month" and reached.resets_at == datetime(2025, 5, 1, tzinfo=UTC)
        assert monthly.is_paid("paid") and not monthly.is_paid("recall") and monthly.free_alias() == "recall"


async def test_notices_are_queued_once_per_threshold_and_remembered_across_a_restart(tmp_path: Path) -> None:
    cfg = Config(settings=Settings(), tiers=TiersConfig())
    clock = Clock(datetime(2025, 3, 30, 12, tzinfo=UTC))
    caps = BudgetSettings(daily_usd=1.0)
    async with dialogue_store(cfg, tmp_path) as store:
        budget = Budget(store, caps, MODELS, clock)
        await budget.load()
        for cost in (0.5, 0.35, 0.05, 0.2, 0.1):  # 50 %, 85 % (80 crossed), 90 %, 110 % (100 crossed), 120 %
            budget.record(usage(clock(), cost))
            store.record_usage(usage(clock(), cost))
        told = await budget.notices()
        assert [(n.period, n.threshold) for n in told] == [("day", 80), ("day", 100)]
        await budget.told(told[0])  # the 100 % one was not sent (a crash): said at the next start

        restarted = Budget(store, caps, MODELS, clock)
        await restarted.load()
        (again,) = await restarted.notices()
        assert (again.threshold, again.keys) == (100, ("day:2025-03-30:100",))
        await restarted.told(again)
        third = Budget(store, caps, MODELS, clock)
        await third.load()
        assert third._pending == []  # nothing to say any more today


async def test_the_cap_reached_in_a_burst_stops_paid_calls_within_one_turn(tmp_path: Path, st_model, llm_server,
                                                                            monkeypatch) -> None:
    monkeypatch.setenv("KITH_TEST_KEY", "sk-test")
    paid = ModelSpec(model="openai/gpt-4o-mini", api_base=llm_server.base_url, api_key_env="KITH_TEST_KEY",
                     context_tokens=4096)
    models = {"recall": ModelSpec(model="kith/recall"), "paid": paid}

    def cfg(budget: BudgetSettings) -> Config:
        return Config(settings=Settings(models=models, default_model="paid", budget=budget), tiers=TiersConfig())

    holder: dict[str, LocalOutbox] = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    chat, user = 5, 5
    question = "what does the linker say about the missing symbol today?"

    def ask(i: int) -> Incoming:
        return Incoming(chat, "private", 100 + i, Sender(user, "eve"), f"{question} ({i})", datetime.now(UTC))

    # one turn without a cap: what a turn costs (the price map's gpt-4o-mini, the server's token counts)
    first: list = []
    async with open_runtime(cfg(BudgetSettings()), tmp_path, make, model=st_model, on_turn=first.append,
                            owners=[OWNER]) as rt:
        await rt.supervisor.tell(chat, ask(0))
        await rt.supervisor.wait_all_idle()
    (t0,) = first
    assert t0.model == "paid" and t0.cost_usd and t0.cost_usd > 0
    cap = t0.cost_usd * 6  # spent at start (rebuilt from the table): 1/6 of the cap

    turns: list = []
    calls_before = len(llm_server.requests)
    served: list[int] = []  # the server's request count after each turn
    async with open_runtime(cfg(BudgetSettings(daily_usd=cap)), tmp_path, make, model=st_model,
                            on_turn=lambda r: (turns.append(r), served.append(len(llm_server.requests))),
                            owners=[OWNER]) as rt:
        budget = rt.services.admission.budget
        assert budget.spend("day").spent_usd == pytest.approx(t0.cost_usd)
        for i in range(1, 13):  # a burst: all queued at once in the chat's inbox
            await rt.supervisor.tell(chat, ask(i))
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
        for _ in range(50):  # the owners' notices leave from the notifier task
            if len([m for m in holder["box"].sent if m.chat_id == OWNER]) >= 2:
                break
            await anyio.sleep(0.02)
        metrics = Metrics()
        metrics.attach(rt)
        exposition = metrics.exposition().decode()
        console = Console(record=True, width=200)
        rep = await usage_report(rt.memory.store, console, budget=budget)

    assert len(turns) == 12 and all(t.responded and t.error is None for t in turns)
    # a turn calls the server exactly when the spend before it is under the cap
    spent, paid_turns = t0.cost_usd, 0
    before = calls_before
    for t, after in zip(turns, served, strict=True):
        called = after - before
        before = after
        if spent < cap:
            assert t.model == "paid" and called == 1, (spent, cap)
            spent += t.cost_usd
            paid_turns += 1
        else:
            assert t.model == "recall" and called == 0 and t.cost_usd == 0.0
            assert t.reply_text is not None
    assert 2 <= paid_turns <= 10  # the cap was reached mid-burst
    free = [t for t in turns if t.model == "recall"]
    assert free, "no turn after the cap"
    answers = {m.reply_to: m.text for m in holder["box"].sent if m.chat_id == chat}
    for t in free:
        assert answers[t.message_id].startswith("_The host's daily spending limit is reached. Answering with recall until 00:00 UTC._")

    notices = [m.text for m in holder["box"].sent if m.chat_id == OWNER]
    assert len(notices) == 2
    assert notices[0].startswith("💸 80 % of today's spending limit is used")
    assert notices[1].startswith("💸 The daily spending limit of") and "Paid models are not called until 00:00 UTC" in notices[1]

    assert 'kith_spend_usd{period="day"}' in exposition and 'kith_spend_usd{period="month"}' in exposition
    assert f'kith_budget_usd{{period="day"}} {cap}' in exposition and 'kith_budget_usd{period="month"}' not in exposition
    assert rep["budget"]["day"]["reached"] and rep["budget"]["day"]["cap_usd"] == cap
    printed = console.export_text()
    assert "spend: today $" in printed and "reached: paid models off until" in printed and "this month $" in printed

    # a restart on the same day: the spend is rebuilt over the cap, the owners are not told again
    again: list = []
    before = len(llm_server.requests)
    holder.clear()
    async with open_runtime(cfg(BudgetSettings(daily_usd=cap)), tmp_path, make, model=st_model, on_turn=again.append,
                            owners=[OWNER]) as rt:
        await rt.supervisor.tell(chat, ask(50))
        await rt.supervisor.wait_all_idle()
        await anyio.sleep(0.05)
    assert [t.model for t in again] == ["recall"] and len(llm_server.requests) == before
    assert [m for m in holder["box"].sent if m.chat_id == OWNER] == []


async def test_owners_are_told_in_their_own_language_else_the_bots(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from actors.runtime import _tell_owners
    from config.models import BotSettings

    cfg = Config(settings=Settings(bot=BotSettings(language="ru")), tiers=TiersConfig())
    clock = Clock(datetime(2025, 3, 30, 12, tzinfo=UTC))
    async with dialogue_store(cfg, tmp_path) as store:
        await store.settings.set_user(OWNER, {"language": "en"})
        budget = Budget(store, BudgetSettings(daily_usd=1.0), MODELS, clock)
        await budget.load()
        budget.record(usage(clock(), 0.9))
        (notice,) = await budget.notices()
        box = LocalOutbox(IdAllocator(store.messages.max_id))
        services = SimpleNamespace(owners=frozenset({OWNER, 78}), memory=SimpleNamespace(store=store), config=cfg)
        await _tell_owners(notice, box, services)  # type: ignore[arg-type]
    said = {m.chat_id: m.text for m in box.sent}
    assert said[OWNER].startswith("💸 80 % of today's spending limit is used")  # chose English
    assert not said[78].startswith("💸 80 % of today's") and "80" in said[78]  # the bot's language: Russian
