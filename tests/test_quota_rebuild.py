"""Daily quota counters are rebuilt from the stored ``usage`` rows of the day — at start and each time
the day (by the clock in use) turns — never reset to zero, so a replay run twice over a UTC day
boundary on the same data dir refuses the same questions both times (real DuckDB, the real pipeline)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.services import ALREADY_ANSWERED
from config.models import Config, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from transports.local import IdAllocator, LocalOutbox
from transports.replay import ReplayReport, TranscriptClock, replay, respond_policy

pytestmark = pytest.mark.anyio

GROUP = -1002000000042
ANN, BOB = 501, 502
MIDNIGHT = datetime(2025, 3, 15, tzinfo=UTC)
# Ann may ask 2 questions a day; Bob's day is never full. No member rate, so only the quota refuses.
TIERS = TiersConfig(tiers={"free": Tier(quotas=Quotas(requests_per_day={"*": 2}), member_messages_per_minute=-1)})
CFG = Config(settings=Settings(), tiers=TIERS)  # the offline recall model answers


def write_day(path: Path, first_id: int, start: datetime) -> Path:
    """A group's hour of chat from ``start``: Ann asks 5 questions (ids ``first_id`` + 0, 2, 4, 6, 8),
    Bob 1 (+10), then chatter — more lines than the recent window, as in a real log, so a second run
    sees the questions as new deliveries and not as the last messages it already holds."""
    said = [("ann", ANN, f"does the kernel {i} build with gcc {i}?") if j == 0 else
            ("carol", 503, f"the build log {i} says the linker ran out of memory")
            for i in range(5) for j in range(2)]
    said += [("bob", BOB, "which gcc is it?")] + [("carol", 503, f"still linking, step {i} of 40") for i in range(40)]
    lines = [{"chat_id": GROUP, "chat_title": "builds", "message_id": first_id + n, "user": user, "user_id": uid,
              "date": (start + timedelta(seconds=60 * n)).isoformat(), "text": text} for n, (user, uid, text) in enumerate(said)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


async def run(data_dir: Path, days: list[Path]) -> tuple[list[ReplayReport], LocalOutbox]:
    """One ``kith replay`` of the days in order, on transcript time. Each day is fed and finished
    before the next (a day's turns then run on that day's clock, so the run is deterministic)."""
    holder: dict[str, LocalOutbox] = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    clock = TranscriptClock()
    async with open_runtime(CFG, data_dir, make, clock=clock) as rt:
        reports = [await replay(rt, day, policy=respond_policy("questions"), clock=clock) for day in days]
    return reports, holder["box"]


def ids(reports: list[ReplayReport], what) -> set[int]:
    return {t.message_id for r in reports for t in r.turns if what(t)}


def answered(t) -> bool:
    return t.responded and t.error is None


def refused(t) -> bool:
    return not t.responded and (t.error or "").startswith("refused: quota")


async def test_a_replay_twice_over_midnight_refuses_the_same_questions(tmp_path: Path, st_model) -> None:
    days = [write_day(tmp_path / "day1.jsonl", 100, MIDNIGHT - timedelta(hours=1)),
            write_day(tmp_path / "day2.jsonl", 200, MIDNIGHT + timedelta(minutes=5))]
    data = tmp_path / "data"
    first, _ = await run(data, days)
    ann_questions = {100, 102, 104, 106, 108}
    # each day Ann gets 2 answers and 3 refusals; Bob is answered both days
    assert ids(first, answered) == {100, 102, 110, 200, 202, 210}
    assert ids(first, refused) == {104, 106, 108, 204, 206, 208} == {m + d for m in ann_questions for d in (0, 100)} - {
        100, 102, 200, 202}

    second, box = await run(data, days)
    # answered exactly once: the answers and the refusals that were said (the first of each day) are not repeated;
    # the refusals that were silent are decided again from the stored usage of their day: refused again
    told = ids(second, lambda t: t.error == ALREADY_ANSWERED)
    assert told == {100, 102, 110, 104, 200, 202, 210, 204}
    assert ids(second, answered) == set()
    assert ids(second, refused) == ids(first, refused) - told == {106, 108, 206, 208}
    assert [m.reply_to for m in box.sent] == [106, 206] and all("2 of today's requests" in m.text for m in box.sent)

    # and a third run on the same data refuses the same as the second (nothing was counted twice)
    third, _ = await run(data, days)
    assert ids(third, refused) == {108, 208} and ids(third, answered) == set()
