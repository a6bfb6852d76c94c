"""Tiers: resolution, subscriptions, quotas, the member rate and admission (real DuckDB, injected clock)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.models import Features, Plan, Quotas, StorageLimits, Tier, TiersConfig
from memory.duckdb_store import DuckDBStore
from memory.types import UsageRecord
from tests.clock import Clock as _Clock
from tiers import Admission, Subscription, SubscriptionStore, TierError, effective_tier
from tiers.errors import BadScope, UnknownTier
from tiers.quotas import QuotaTracker, RateLimiter, next_midnight
from tiers.subscriptions import parse_target

T0 = datetime(2025, 3, 14, 21, 30, tzinfo=UTC)
GROUP, ALICE, BOB = -100500, 11, 22


class Clock(_Clock):
    def __init__(self, t: datetime = T0) -> None:
        super().__init__(t)


CFG = TiersConfig(
    default_tier="free",
    tiers={
        "free": Tier(
            models=("fast", "recall"),
            quotas=Quotas(requests_per_day={"fast": 3, "recall": -1}, tokens_per_day=10_000, chat_requests_per_day=6),
            user=StorageLimits(dialogue_limit=100, memory_limit=10),
            member_messages_per_minute=2,
        ),
        "premium": Tier(
            models=("*",),
            quotas=Quotas(requests_per_day={"smart": 2, "*": 4}, tokens_per_day=-1),
            features=Features(vision=True),
            fallback_model="fast",
            member_messages_per_minute=-1,
        ),
        "unlimited": Tier(),
    },
    plans={"month": Plan(tier="premium", days=30, price=250)},
)


def sub(scope: str, tier: str, expires: datetime | None, scope_id: int = 1) -> Subscription:
    return Subscription(scope, scope_id, tier, expires, "test", T0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock):
    async with DuckDBStore(tmp_path / "kith.duckdb", flush_interval_s=0.01, clock=clock) as s:
        yield s


def usage(clock: Clock, chat_id: int, user_id: int, model: str, tokens: int = 100, cost: float | None = 0.001) -> UsageRecord:
    return UsageRecord(clock(), chat_id, user_id, "chat", model, tokens // 2, tokens - tokens // 2, cost, 5.0)


async def turn(adm: Admission, store: DuckDBStore, clock: Clock, chat_id: int, chat_type: str, user_id: int,
               alias: str, tokens: int = 100):
    """What the chat actor does: admit, and when allowed 'call the LLM' and record the usage."""
    a = await adm.admit(chat_id, chat_type, user_id, alias)
    if a.allowed:
        rec = usage(clock, chat_id, user_id, a.alias, tokens)
        store.record_usage(rec)
        adm.record(rec)
    return a


# ---------------------------------------------------------------- resolution

LATER, EARLIER = T0 + timedelta(days=3), T0 - timedelta(seconds=1)
USERS = {"none": None, "free": sub("user", "free", LATER), "premium": sub("user", "premium", LATER),
         "premium-expired": sub("user", "premium", EARLIER), "unlimited-forever": sub("user", "unlimited", None)}
CHATS = {"none": None, "free": sub("chat", "free", None), "premium": sub("chat", "premium", LATER),
         "premium-expired": sub("chat", "premium", EARLIER)}
EXPECTED = {  # (user, chat) -> effective tier
    ("none", "none"): "free", ("none", "free"): "free", ("none", "premium"): "premium", ("none", "premium-expired"): "free",
    ("free", "none"): "free", ("free", "free"): "free", ("free", "premium"): "premium", ("free", "premium-expired"): "free",
    ("premium", "none"): "premium", ("premium", "free"): "premium", ("premium", "premium"): "premium",
    ("premium", "premium-expired"): "premium",
    ("premium-expired", "none"): "free", ("premium-expired", "free"): "free", ("premium-expired", "premium"): "premium",
    ("premium-expired", "premium-expired"): "free",
    ("unlimited-forever", "none"): "unlimited", ("unlimited-forever", "premium"): "unlimited",
    ("unlimited-forever", "free"): "unlimited", ("unlimited-forever", "premium-expired"): "unlimited",
}


@pytest.mark.parametrize(("user", "chat"), list(EXPECTED))
def test_resolution_matrix(user: str, chat: str) -> None:
    assert effective_tier(CFG, USERS[user], CHATS[chat], T0) == EXPECTED[(user, chat)]


def test_resolution_edge_cases() -> None:
    # expiry is exclusive: at the instant of expiry the subscription no longer applies
    assert effective_tier(CFG, sub("user", "premium", T0), None, T0) == "free"
    assert effective_tier(CFG, sub("user", "premium", T0), None, T0 - timedelta(microseconds=1)) == "premium"
    # a tier removed from tiers.yaml falls back to the default
    assert effective_tier(CFG, sub("user", "gold", None), None, T0) == "free"
    # explicit ranks beat file order
    ranked = TiersConfig(default_tier="basic", tiers={"vip": Tier(rank=10), "basic": Tier(rank=0), "plus": Tier(rank=5)})
    assert effective_tier(ranked, sub("user", "plus", None), sub("chat", "vip", None), T0) == "vip"
    assert effective_tier(ranked, sub("user", "plus", None), None, T0) == "plus"


# ---------------------------------------------------------------- subscriptions


def test_parse_target() -> None:
    assert parse_target("user:42") == ("user", 42)
    assert parse_target(" chat:-100123 ") == ("chat", -100123)
    for bad in ("42", "group:1", "user:", "user:abc"):
        with pytest.raises(BadScope):
            parse_target(bad)


@pytest.mark.anyio
async def test_grant_revoke_list_and_they_persist(tmp_path: Path, store: DuckDBStore, clock: Clock) -> None:
    subs = SubscriptionStore(store, CFG, clock)
    a = await subs.grant("user", ALICE, "premium", 30, "cli")
    assert (a.tier, a.expires_at, a.source, a.updated_at) == ("premium", T0 + timedelta(days=30), "cli", T0)
    forever = await subs.grant("chat", GROUP, "unlimited", None, "cli")
    assert forever.expires_at is None and forever.active(T0 + timedelta(days=10_000))
    await subs.grant("user", BOB, "premium", 1, "cli")
    with pytest.raises(UnknownTier):
        await subs.grant("user", 3, "gold", 1, "cli")
    with pytest.raises(TierError):
        await subs.grant("user", 3, "premium", 0, "cli")
    with pytest.raises(BadScope):
        await subs.grant("group", 3, "premium", 1, "cli")

    assert [s.target for s in await subs.list()] == [f"chat:{GROUP}", f"user:{ALICE}", f"user:{BOB}"]
    clock.advance(days=2)  # Bob's day is over
    assert [s.target for s in await subs.list()] == [f"chat:{GROUP}", f"user:{ALICE}"]
    assert [s.target for s in await subs.list(expired=True)] == [f"chat:{GROUP}", f"user:{ALICE}", f"user:{BOB}"]

    assert await subs.revoke("user", ALICE) is True
    assert await subs.revoke("user", ALICE) is False
    assert await subs.get("user", ALICE) is None

    # a fresh SubscriptionStore (a restart) reads the same from the database
    again = SubscriptionStore(store, CFG, clock)
    assert await again.list(expired=True) == await subs.list(expired=True)
    assert await again.get("chat", GROUP) == forever


@pytest.mark.anyio
async def test_extend_rules(store: DuckDBStore, clock: Clock) -> None:
    subs = SubscriptionStore(store, CFG, clock)
    # none → from now
    s = await subs.extend("user", ALICE, "premium", 30, "p1")
    assert s.expires_at == T0 + timedelta(days=30)
    # active, same tier → from the current expiry
    clock.advance(days=10)
    s = await subs.extend("user", ALICE, "premium", 30, "p2")
    assert s.expires_at == T0 + timedelta(days=60) and s.source == "p2"
    # expired → from now
    clock.advance(days=100)
    s = await subs.extend("user", ALICE, "premium", 30, "p3")
    assert s.expires_at == clock() + timedelta(days=30)
    # active, upgrade → the better tier from the current expiry
    s = await subs.extend("user", ALICE, "unlimited", 5, "p4")
    assert (s.tier, s.expires_at) == ("unlimited", clock() + timedelta(days=35))
    # active better tier, paying for a worse one: the better one is kept, never shortened
    s = await subs.extend("user", ALICE, "premium", 1, "p5")
    assert (s.tier, s.expires_at) == ("unlimited", clock() + timedelta(days=35))
    s = await subs.extend("user", ALICE, "premium", 100, "p6")
    assert (s.tier, s.expires_at) == ("unlimited", clock() + timedelta(days=100))
    # never-expiring same tier stays never-expiring; a never-expiring worse tier is upgraded from now
    await subs.grant("user", BOB, "premium", None, "cli")
    assert (await subs.extend("user", BOB, "premium", 30, "p")).expires_at is None
    await subs.grant("chat", GROUP, "free", None, "cli")
    s = await subs.extend("chat", GROUP, "premium", 30, "p")
    assert (s.tier, s.expires_at) == ("premium", clock() + timedelta(days=30))


# ---------------------------------------------------------------- quotas and admission


@pytest.mark.anyio
async def test_quota_exhaustion_refuses_then_the_utc_day_turns(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    for _ in range(3):
        a = await turn(adm, store, clock, ALICE, "private", ALICE, "fast")
        assert a.allowed and a.alias == "fast" and a.tier == "free" and not a.downgraded
    n_usage = (await store.stats())["usage"]
    refused = await turn(adm, store, clock, ALICE, "private", ALICE, "fast")
    assert not refused.allowed and refused.reason == "quota"
    assert refused.quota.quota == "requests_per_day" and refused.quota.model == "fast"
    assert (refused.quota.limit, refused.quota.used) == (3, 3)
    assert refused.quota.resets_at == datetime(2025, 3, 15, tzinfo=UTC)
    assert "3" in refused.refusal and "fast" in refused.refusal
    assert "00:00 UTC" in refused.refusal and "in 2 h 30 min" in refused.refusal and "/billing" in refused.refusal
    assert (await store.stats())["usage"] == n_usage  # a refusal costs nothing
    # recall has its own (unlimited) entry: still served
    assert (await turn(adm, store, clock, ALICE, "private", ALICE, "recall")).allowed
    clock.advance(hours=2, minutes=29)
    assert not (await adm.admit(ALICE, "private", ALICE, "fast")).allowed
    clock.advance(minutes=1)  # 00:00 UTC
    assert (await turn(adm, store, clock, ALICE, "private", ALICE, "fast")).allowed
    assert adm.quotas.today(ALICE, ALICE).requests == {"fast": 1}


@pytest.mark.anyio
async def test_the_day_turn_rebuilds_the_counters_from_the_stored_usage(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    for _ in range(2):
        assert (await turn(adm, store, clock, ALICE, "private", ALICE, "fast")).allowed
    # the next day's usage is already stored (an earlier run over the same days, another process) ...
    tomorrow = Clock(datetime(2025, 3, 15, 0, 10, tzinfo=UTC))
    for _ in range(2):
        store.record_usage(usage(tomorrow, ALICE, ALICE, "fast"))
    # ... and a call of Bob's that ended after midnight is recorded before the day has turned here
    late = usage(tomorrow, GROUP, BOB, "fast")
    store.record_usage(late)
    adm.record(late)
    assert adm.quotas.today(ALICE, ALICE).requests == {"fast": 2}  # today's counters: today's calls only
    assert adm.quotas.today(GROUP, BOB).requests == {}
    clock.t = datetime(2025, 3, 15, 0, 20, tzinfo=UTC)
    a = await adm.admit(ALICE, "private", ALICE, "fast")  # the new day starts from its stored usage, not zero
    assert a.allowed and adm.quotas.today(ALICE, ALICE).requests == {"fast": 2}
    assert adm.quotas.today(GROUP, BOB).requests == {"fast": 1} and adm.quotas.day == clock().date()
    assert (await turn(adm, store, clock, ALICE, "private", ALICE, "fast")).allowed
    a = await adm.admit(ALICE, "private", ALICE, "fast")
    assert not a.allowed and (a.quota.used, a.quota.limit) == (3, 3)


@pytest.mark.anyio
async def test_a_call_recorded_while_the_days_usage_is_read_counts_once(store: DuckDBStore, clock: Clock,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    adm = Admission(store, CFG, clock)
    await adm.open()
    read = store.usage.counts
    raced: list[UsageRecord] = []

    async def racing_read(start: datetime, end: datetime):
        rows = await read(start, end)
        if not raced:  # another chat's turn ends between the read and its use: its row is not in it
            raced.append(usage(clock, GROUP, BOB, "fast"))
            store.record_usage(raced[0])
            adm.record(raced[0])
        return rows

    monkeypatch.setattr(store.usage, "counts", racing_read)
    clock.advance(days=1)
    await adm.open()
    assert raced and adm.quotas.today(GROUP, BOB).requests == {"fast": 1}
    assert adm.quotas.today(GROUP, BOB).chat_requests == 1


@pytest.mark.anyio
async def test_token_and_chat_quotas(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    # tokens: the call that crosses the limit is served, the next is refused
    assert (await turn(adm, store, clock, ALICE, "private", ALICE, "recall", tokens=9_000)).allowed
    assert (await turn(adm, store, clock, ALICE, "private", ALICE, "recall", tokens=2_000)).allowed
    a = await adm.admit(ALICE, "private", ALICE, "recall")
    assert not a.allowed and a.quota.quota == "tokens_per_day" and a.quota.used == 11_000
    assert "10,000 tokens" in a.refusal
    # the chat's quota: 6 requests for all members together (no member rate in the way: a minute apart)
    users = [101, 102, 103, 104, 105, 106]
    for u in users:
        assert (await turn(adm, store, clock, GROUP, "supergroup", u, "fast", tokens=10)).allowed
        clock.advance(minutes=1)
    a = await adm.admit(GROUP, "supergroup", 107, "fast")
    assert not a.allowed and a.quota.quota == "chat_requests_per_day" and a.quota.per_chat
    assert a.refusal.startswith("This chat has used all 6")
    # a premium member is premium here too, with premium's (unlimited) chat quota
    await adm.subs.grant("user", 108, "premium", 30, "cli")
    a = await adm.admit(GROUP, "supergroup", 108, "fast")
    assert a.allowed and a.tier == "premium"


@pytest.mark.anyio
async def test_model_choice_and_fallback(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    # free may not use smart: its first allowed model instead
    a = await adm.admit(ALICE, "private", ALICE, "smart")
    assert a.allowed and a.alias == "fast" and a.downgraded and "can't use smart" in a.note
    await adm.subs.grant("user", ALICE, "premium", 30, "cli")
    assert adm.features((await adm.admit(ALICE, "private", ALICE, "smart")).tier).vision
    for _ in range(2):
        a = await turn(adm, store, clock, ALICE, "private", ALICE, "smart")
        assert a.allowed and a.alias == "smart" and not a.downgraded
    # smart's quota is spent: the tier's fallback_model (fast, within the shared "*" quota)
    a = await turn(adm, store, clock, ALICE, "private", ALICE, "smart")
    assert a.allowed and a.alias == "fast" and a.downgraded and a.quota.model == "smart"
    assert "Answering with fast until 00:00 UTC" in a.note
    for _ in range(3):
        assert (await turn(adm, store, clock, ALICE, "private", ALICE, "smart")).alias == "fast"
    # "*" (4 a day for every model but smart) is spent too: refused
    a = await adm.admit(ALICE, "private", ALICE, "smart")
    assert not a.allowed and a.reason == "quota" and a.quota.model == "smart"
    assert "/billing" not in a.refusal  # no plan sells anything better than premium
    assert adm.quotas.today(ALICE, ALICE).requests == {"smart": 2, "fast": 4}


@pytest.mark.anyio
async def test_counters_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "kith.duckdb"
    async with DuckDBStore(db, flush_interval_s=10, clock=clock) as store:  # rows still queued at close
        adm = Admission(store, CFG, clock)
        for _ in range(2):
            assert (await turn(adm, store, clock, GROUP, "group", ALICE, "fast", tokens=50)).allowed
            clock.advance(seconds=30)
        # yesterday's usage must not count today
        store.record_usage(usage(Clock(T0 - timedelta(days=1)), GROUP, ALICE, "fast"))
    async with DuckDBStore(db, clock=clock) as store:
        adm = Admission(store, CFG, clock)
        await adm.open()
        today = adm.quotas.today(GROUP, ALICE)
        assert (today.requests, today.tokens, today.chat_requests, today.chat_tokens) == ({"fast": 2}, 100, 2, 100)
        assert (await turn(adm, store, clock, GROUP, "group", ALICE, "fast")).allowed
        a = await adm.admit(GROUP, "group", ALICE, "fast")
        assert not a.allowed and a.quota.used == 3


@pytest.mark.anyio
async def test_member_rate_slows_a_flooder_without_blocking_others(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)  # free: 2 answers per member per minute in groups
    assert (await adm.admit(GROUP, "group", ALICE, "recall")).allowed
    clock.advance(seconds=10)
    assert (await adm.admit(GROUP, "group", ALICE, "recall")).allowed
    clock.advance(seconds=5)
    a = await adm.admit(GROUP, "group", ALICE, "recall")
    assert not a.allowed and a.reason == "rate" and a.retry_after == pytest.approx(45.0)
    assert "45 s" in a.refusal and "2 answers a minute" in a.refusal
    assert adm.refusals == {"rate": 1}  # counted by reason (the bot's kith_refusals_total metric)
    assert (await adm.admit(GROUP, "group", BOB, "recall")).allowed  # Bob is not blocked by Alice
    assert (await adm.admit(GROUP - 1, "group", ALICE, "recall")).allowed  # nor Alice in another group
    for _ in range(5):  # private chats have no member rate
        assert (await adm.admit(ALICE, "private", ALICE, "recall")).allowed
    clock.advance(seconds=45)  # the first answer left the window
    assert (await adm.admit(GROUP, "group", ALICE, "recall")).allowed
    assert not (await adm.admit(GROUP, "group", ALICE, "recall")).allowed
    clock.advance(seconds=10)
    assert (await adm.admit(GROUP, "group", ALICE, "recall")).allowed


def test_rate_limiter_unit() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    assert rl.hit(1, 1, -1) is None
    assert rl.hit(1, 1, 0) == 60.0  # 0 = none at all
    assert [rl.hit(1, 1, 3) for _ in range(3)] == [None, None, None]
    assert rl.hit(1, 1, 3) == 60.0
    clock.advance(seconds=60)
    assert rl.hit(1, 1, 3) is None


@pytest.mark.anyio
async def test_quota_tracker_needs_load_and_ignores_records_before_it(store: DuckDBStore, clock: Clock) -> None:
    q = QuotaTracker(store, CFG, clock)
    with pytest.raises(TierError):
        q.check("free", 1, 1, "fast")
    q.record(1, 1, "fast", 10)  # the usage table is the truth: this row was not written, so it is not counted
    await q.load()
    assert q.check("free", 1, 1, "fast").allowed and q.today(1, 1).requests == {}
    with pytest.raises(UnknownTier):
        q.check("gold", 1, 1, "fast")
    assert next_midnight(datetime(2025, 1, 1, tzinfo=UTC)) == datetime(2025, 1, 2, tzinfo=UTC)


@pytest.mark.anyio
async def test_profile_features_storage(store: DuckDBStore, clock: Clock) -> None:
    adm = Admission(store, CFG, clock)
    await adm.subs.grant("chat", GROUP, "premium", 7, "cli")
    await turn(adm, store, clock, GROUP, "group", ALICE, "smart")
    p = await adm.profile(GROUP, ALICE)
    assert p.tier == "premium" and p.user_sub is None and p.chat_sub.tier == "premium"
    assert p.today.requests == {"smart": 1} and p.quotas.requests_per_day == {"smart": 2, "*": 4}
    assert p.features.vision
    assert adm.storage_limits("free") == (StorageLimits(dialogue_limit=100, memory_limit=10), StorageLimits())
    assert adm.allowed_models("free", ["recall", "fast", "smart"]) == ["recall", "fast"]
    assert adm.allowed_models("premium", ["recall", "smart"]) == ["recall", "smart"]
    with pytest.raises(UnknownTier):
        adm.features("gold")
