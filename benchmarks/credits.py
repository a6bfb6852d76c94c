"""What paying with credits adds to a turn (issue #26): the ledger's debit and the host's cap check.

Turns run through the whole pipeline (supervisor → chat actor → memory → the offline model → outbox)
on the shipped config with a spending cap set (``budget.daily_usd``), in two private chats
interleaved so that the machine's load hits both alike:

- **free**: a member on the ``unlimited`` tier — admitted by the quotas, nothing to pay;
- **paid**: a member on a tier whose every answer is paid with credits (no free requests,
  ``when_spent: credits``, 1 credit an answer) — the payer picked from the balance, the answer
  debited once (one committed ledger row, while recall runs), the tokens priced after it.

Per turn, Kith's own time is ``TurnReport.overhead_ms`` (total − model − query embedding). The
headline is p50(paid) − p50(free). Target: ≤ 1 ms. Checked too: debits = paid answers.
"""
from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, p50_p99, progress

TARGET_ADDED_P50_MS = 1.0
FREE_USER, PAID_USER = 11, 12
WARM_UP = 4
QUESTIONS = ("what did we decide about the backup server?", "who fixed the printer on floor three?",
             "when is the next release planned?", "which package provides Python.h?")


async def _bench(n: int, data_dir: Path, model) -> dict:
    from actors.events import Incoming, Sender
    from config.loader import load_config
    from config.models import BudgetSettings, Prices, Quotas
    from features.app import open_runtime
    from memory.ledger import LedgerEntry
    from transports.local import IdAllocator, LocalOutbox

    shipped = load_config(None)
    tiers = shipped.tiers
    metered = tiers.tiers["unlimited"].model_copy(update={
        "quotas": Quotas(requests_per_day={"*": 0}), "when_spent": "credits"})
    tiers = tiers.model_copy(update={"tiers": {**tiers.tiers, "metered": metered},
                                     "prices": Prices(per_message={"*": 1}, per_1k_tokens=1)})
    settings = shipped.settings.model_copy(update={"budget": BudgetSettings(daily_usd=100.0, monthly_usd=1000.0)})
    cfg = shipped.model_copy(update={"settings": settings, "tiers": tiers})
    reports: list = []
    async with open_runtime(cfg, data_dir, lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id)), model=model,
                            on_turn=reports.append) as rt:
        adm = rt.services.admission
        await adm.subs.grant("user", FREE_USER, "unlimited", None, "bench")
        await adm.subs.grant("user", PAID_USER, "metered", None, "bench")
        await adm.ledger.append(LedgerEntry("grant:bench", "user", PAID_USER, "grant", 10**9))
        free: list[float] = []
        paid: list[float] = []
        for i in range(2 * (n + WARM_UP)):
            uid = PAID_USER if i % 2 else FREE_USER
            text = QUESTIONS[(i // 2) % len(QUESTIONS)]
            await rt.supervisor.tell(uid, Incoming(uid, "private", 1000 + i, Sender(uid, f"user{uid}"), text,
                                                   datetime.now(UTC)))
            await rt.supervisor.wait_all_idle()
            rep = reports[-1]
            if rep.error or not rep.responded:
                raise RuntimeError(f"turn {i} failed: {rep.error}")
            if i < 2 * WARM_UP:  # first loads (language detector, the first recall)
                continue
            (paid if uid == PAID_USER else free).append(rep.overhead_ms)
        debits = [e for e in await adm.ledger.history("user", PAID_USER, 10 * n) if e.kind == "debit"]
    return {"free": free, "paid": paid, "debits": sum(1 for e in debits if not e.key.endswith(":tokens")),
            "answers": n + WARM_UP}


def run(quick: bool = False) -> dict:
    import anyio

    n = 60 if quick else 300
    progress(f"credits: loading the embedding model; {n} free and {n} paid turns, interleaved")
    model, _load_s = common.load_model_timed()
    with tempfile.TemporaryDirectory(prefix="kith-bench-credits-") as tmp:
        r = anyio.run(_bench, n, Path(tmp), model, backend="asyncio")
    p_free, p_paid = p50_p99(r["free"]), p50_p99(r["paid"])
    return {
        "description": "what the credit debit and the spending-cap check add to a turn's own time (offline model)",
        "params": {"turns_each": n, "store": "DuckDB", "budget": "daily_usd 100, monthly_usd 1000"},
        "metrics": [
            metric("added_by_credits_p50", p_paid[0] - p_free[0], "ms", target=("<=", TARGET_ADDED_P50_MS)),
            metric("overhead_free_p50", p_free[0], "ms"),
            metric("overhead_free_p99", p_free[1], "ms"),
            metric("overhead_paid_p50", p_paid[0], "ms"),
            metric("overhead_paid_p99", p_paid[1], "ms"),
            metric("debits / paid answers", f"{r['debits']} / {r['answers']}"),
        ],
        "notes": ["overhead = total − model − query embedding (TurnReport.overhead_ms)",
                  "the paid answer's debit commits while recall runs; its tokens are debited after the answer"],
    }


if __name__ == "__main__":
    raise SystemExit(common.main_single("credits", run))
