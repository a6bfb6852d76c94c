"""Tiers, billing and the transport's notices speak the current language (``i18n.use``): Russian
inside ``with i18n.use("ru")``, English outside. Real Admission on DuckDB, the real /billing code on a
LocalOutbox (the actor's own choice of language is tested with the chat actor)."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

import i18n
from config.models import Features, Plan, Quotas, Tier, TiersConfig
from features.billing import send_plans, usage_lines
from memory.duckdb_store import DuckDBStore
from memory.types import UsageRecord
from tests.clock import Clock
from tiers import Admission
from tiers.payments import invoice_for, validate_pre_checkout
from transports.local import IdAllocator, LocalOutbox
from transports.telegram.updates import BUSY_NOTICE, GATE_NOTICE, language_of

T0 = datetime(2025, 3, 14, 21, 30, tzinfo=UTC)
GROUP, ALICE = -100500, 11
NBSP = "\xa0"

CFG = TiersConfig(
    default_tier="free",
    tiers={
        "free": Tier(
            models=("fast", "recall"),
            quotas=Quotas(requests_per_day={"fast": 3, "recall": -1}, tokens_per_day=10_000, chat_requests_per_day=6),
            features=Features(documents=True),
            member_messages_per_minute=2,
        ),
        "premium": Tier(models=("*",), features=Features(vision=True), member_messages_per_minute=-1),
    },
    plans={"month": Plan(tier="premium", days=30, price=250), "trial": Plan(tier="premium", days=1, price=1)},
)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock):
    async with DuckDBStore(tmp_path / "kith.duckdb", flush_interval_s=0.01, clock=clock) as s:
        yield s


async def spend(adm: Admission, store: DuckDBStore, clock: Clock, alias: str, n: int, tokens: int = 100) -> None:
    for _i in range(n):
        a = await adm.admit(ALICE, "private", ALICE, alias)
        assert a.allowed
        rec = UsageRecord(clock(), ALICE, ALICE, "chat", a.alias, tokens // 2, tokens - tokens // 2, 0.001, 5.0)
        store.record_usage(rec)
        adm.record(rec)


@pytest.mark.anyio
async def test_a_quota_refusal_is_in_the_current_language(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    await spend(adm, store, clock, "fast", 3)
    with i18n.use("ru"):
        ru = await adm.admit(ALICE, "private", ALICE, "fast")
    en = await adm.admit(ALICE, "private", ALICE, "fast")
    assert not ru.allowed and ru.reason == "quota"
    assert ru.refusal == ("Вы израсходовали сегодняшний лимит для fast в тарифе free: 3 запроса. "
                          "Лимит обновится в 00:00 UTC (через 2 ч 30 мин). Чтобы получить больше, смените тариф в /billing.")
    assert en.refusal == ("You've used all 3 of today's requests to fast on the free tier. "
                          "It resets at 00:00 UTC (in 2 h 30 min). For more, upgrade with /billing.")
    # tokens: a number in the language's format, the plural by the limit
    await spend(adm, store, clock, "recall", 1, tokens=10_000)
    with i18n.use("ru"):
        ru = await adm.admit(ALICE, "private", ALICE, "recall")
    assert ru.refusal.startswith(f"Вы израсходовали сегодняшний лимит в тарифе free: 10{NBSP}000 токенов.")
    assert "10,000 tokens" in (await adm.admit(ALICE, "private", ALICE, "recall")).refusal


@pytest.mark.anyio
async def test_rate_feature_and_size_refusals_in_russian(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    for _i in range(2):
        assert (await adm.admit(GROUP, "group", ALICE, "recall")).allowed
    with i18n.use("ru"):
        rate = await adm.admit(GROUP, "group", ALICE, "recall")
        feature = await adm.admit_feature(ALICE, ALICE, "vision")
        size = await adm.admit_feature(ALICE, ALICE, "documents", size_bytes=25 * 1024 * 1024)
        downgraded = await adm.admit(ALICE, "private", ALICE, "smart")
    assert rate.reason == "rate" and "не больше 2 ответов в минуту" in rate.refusal and "через 60 с" in rate.refusal
    assert feature.refusal == ("Просмотр изображений не входит в тариф free. Это есть в тарифе premium. "
                               "Чтобы получить больше, смените тариф в /billing.")
    assert size.reason == "size" and size.refusal.startswith("Этот файл весит 25,0 МБ, а в тарифе free я принимаю файлы до 20 МБ.")
    assert downgraded.note == "В тарифе free нет модели smart, поэтому отвечаю моделью fast."
    assert (await adm.admit_feature(ALICE, ALICE, "vision")).refusal.startswith("Seeing images isn't part of the free tier.")


def actor_for(adm: Admission | None, outbox: LocalOutbox, chat_id: int = ALICE) -> SimpleNamespace:
    """What /billing reads of a chat actor."""
    config = SimpleNamespace(tiers=CFG, settings=SimpleNamespace(models={"fast": None, "recall": None}))
    return SimpleNamespace(chat_id=chat_id, outbox=outbox, svc=SimpleNamespace(config=config, admission=adm))


async def _no_ids(chat_id: int) -> None:
    return None


@pytest.mark.anyio
async def test_billing_plans_and_usage_in_russian(store: DuckDBStore, clock: Clock) -> None:
    outbox = LocalOutbox(IdAllocator(_no_ids), clock=clock)
    adm = Admission(store, CFG, clock)
    actor = actor_for(adm, outbox)
    await spend(adm, store, clock, "fast", 2)
    with i18n.use("ru"):
        await send_plans(actor, "user", None, None)  # type: ignore[arg-type]
        await send_plans(actor, "chat", None, None)  # type: ignore[arg-type]
        usage = await usage_lines(actor, ALICE)  # type: ignore[arg-type]
    await send_plans(actor, "user", None, None)  # type: ignore[arg-type]
    ru_user, ru_chat, en_user = outbox.sent[-3:]
    assert ru_user.text == "Тарифы — покупка здесь действует для вас (во всех чатах):"
    assert ru_chat.text == "Тарифы — покупка здесь действует для всех в этой группе:"
    assert [b.text for row in ru_user.buttons for b in row] == ["month: premium на 30 дней — 250 ⭐", "trial: premium на 1 день — 1 ⭐"]
    assert [b.data for row in ru_user.buttons for b in row] == ["buy:month:user", "buy:trial:user"]  # callback data untouched
    assert en_user.text == "Plans — a purchase here covers you (in every chat):"
    assert [b.text for row in en_user.buttons for b in row] == ["month: 30 days of premium — 250 ⭐", "trial: 1 day of premium — 1 ⭐"]
    assert usage == ["• fast: запросы — 2 / 3", "• recall: запросы — 0 / без лимита", f"• токены: 200 / 10{NBSP}000",
                     "• этот чат: запросы — 2 / 6, токены — 200 / без лимита", "Лимиты обновятся в 00:00 UTC."]


def test_invoice_and_pre_checkout_in_russian() -> None:
    with i18n.use("ru"):
        month = invoice_for("month", CFG, scope="user", scope_id=ALICE)
        trial = invoice_for("trial", CFG, scope="chat", scope_id=GROUP)
        refused = validate_pre_checkout("garbage", 250, "XTR", CFG)
    assert (month.title, month.description) == ("Premium на 30 дней", "Тариф premium для вас на 30 дней.")
    assert month.prices == (("Premium на 30 дней", 250),)
    assert (trial.title, trial.description) == ("Premium на 1 день", "Тариф premium для этого чата на 1 день.")
    assert refused == "Этот счёт недействителен. Пожалуйста, откройте /billing ещё раз."
    en = invoice_for("month", CFG, scope="user", scope_id=ALICE)
    assert (en.title, en.description) == ("Premium for 30 days", "30 days of the premium tier for you.")
    assert en.payload == month.payload  # the payload is never translated


def test_transport_notices_follow_the_users_telegram_language() -> None:
    assert language_of(SimpleNamespace(language_code="ru-RU")) == "ru"
    assert language_of(SimpleNamespace(language_code="xx")) is None and language_of(None) is None
    assert i18n.in_language("ru", GATE_NOTICE, link="https://t.me/kith").startswith("Чтобы поговорить со мной, сначала вступите в https://t.me/kith")
    assert i18n.in_language(None, GATE_NOTICE, link="https://t.me/kith") == GATE_NOTICE.format(link="https://t.me/kith")
    assert i18n.in_language("ru", BUSY_NOTICE).startswith("Я ещё занят")
    assert i18n.current() == "en"  # a notice does not change the language of the code around it
