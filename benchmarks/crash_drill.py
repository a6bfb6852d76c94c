"""Crash drill: N kill -9 (and SIGTERM) at random moments during `kith import` and `kith replay`.

What a self-hoster's machine does to the bot — power cuts, OOM kills, `systemctl stop` — done on
purpose, with the shipped CLI on real #ubuntu slices, in subprocesses:

1. a reference run of each command on a data dir of its own, uninterrupted: the expected stored
   messages, memories and replies (and how long a run takes);
2. on a second data dir, N runs of the same command, each interrupted at a random moment between
   0.5 s and the reference duration (every 4th by SIGTERM, which must drain and exit 143; the rest
   by SIGKILL), then one final uninterrupted run;
3. the stores are read directly and compared with the reference: stored messages vs distinct
   inputs, rows in LanceDB vs distinct ids (duplicates), memories vs the reference's; and for
   replay, the replies *sent* (printed, unbuffered, by every run, killed ones included) per
   question vs the reference run's.

The replay's answers are paid with credits (``_config``), so the stores also show the ledger against
the answers: every stored answer debited, exactly once, and no debit without its delivery record.

Targets (N = 20): 0 lost, 0 duplicated, replies sent = questions, memories = messages, debits =
answers. A question
whose delivery was committed just before a kill -9 and whose reply never left is the at-most-once
window; it is counted ("unanswered") and is part of the "replies = questions" target.

Then a full-disk round: the replay on a tmpfs of a few MB (both stores and the 4 MiB reserve on it)
until the disk is full and the run stops (exit 1), the tmpfs remounted larger, and a final run.
Targets: 0 lost, every reply sent stored with its usage row, replies sent = questions, none twice.
Skipped, with the reason, where mounting a tmpfs is not permitted (not root, no CAP_SYS_ADMIN).
"""
from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, progress

SEED = 13
IMPORT_SLICES = ("2009-03-03_10.jsonl", "2011-11-13_02.jsonl")
REPLAY_SLICE = "2009-03-03_10.jsonl"
SIGTERM_EVERY = 4  # every 4th interruption is a SIGTERM, the others SIGKILL
RUN_TIMEOUT_S = 900
FULL_DISK_MB = 6  # the tmpfs of the full-disk round: the stores, the reserve and a first part of the replay
FULL_DISK_GROWN_MB = 256


def run(quick: bool) -> dict:
    n = 3 if quick else 20
    rng = random.Random(SEED)
    data = common.data_dir()
    with tempfile.TemporaryDirectory(prefix="kith-drill-") as tmp:
        tmp = Path(tmp)
        cfg = _config(tmp)
        import_args = ["import", *[str(data / s) for s in IMPORT_SLICES]]
        replay_args = ["replay", str(data / REPLAY_SLICE)]
        results = {}
        refs = {}
        for name, args in (("import", import_args), ("replay", replay_args)):
            progress(f"crash_drill: {name} reference run")
            ref_dir = tmp / f"{name}-ref"
            ref = _run(args, ref_dir, cfg, tmp / f"{name}-ref.out")
            if ref.returncode != 0:
                raise RuntimeError(f"reference {name} failed ({ref.returncode}): {ref.stderr_tail}")
            refs[name] = (ref_dir, ref)
            drill_dir = tmp / f"{name}-drill"
            outs, terms = [], []
            for i in range(n):
                delay = rng.uniform(0.5, max(1.0, ref.seconds))
                sig = signal.SIGTERM if (i + 1) % SIGTERM_EVERY == 0 else signal.SIGKILL
                progress(f"crash_drill: {name} run {i + 1}/{n}: {sig.name} after {delay:.1f} s")
                r = _run(args, drill_dir, cfg, tmp / f"{name}-{i}.out", kill_after=delay, sig=sig)
                outs.append(r.out)
                if sig == signal.SIGTERM and r.killed:
                    terms.append((r.returncode, r.drain_s))
            progress(f"crash_drill: {name} final run")
            final = _run(args, drill_dir, cfg, tmp / f"{name}-final.out")
            if final.returncode != 0:
                raise RuntimeError(f"final {name} failed ({final.returncode}): {final.stderr_tail}")
            outs.append(final.out)
            results[name] = _compare(ref_dir, drill_dir, ref, outs, terms)
        full = _full_disk_round(tmp, replay_args, cfg, *refs["replay"])
    imp, rep = results["import"], results["replay"]
    metrics = []
    for name, r in (("import", imp), ("replay", rep)):
        metrics += [
            metric(f"{name}: stored messages, drill / reference", f"{r['messages']} / {r['ref_messages']}"),
            metric(f"{name}: messages lost", r["ref_messages"] - r["messages"], target=("<=", 0)),
            metric(f"{name}: memories, drill / reference", f"{r['memories']} / {r['ref_memories']}"),
            metric(f"{name}: memories missing", r["memories_missing"], target=("<=", 0)),
            metric(f"{name}: duplicated rows (DuckDB + LanceDB)", r["duplicates"], target=("<=", 0)),
            metric(f"{name}: SIGTERM exits 143 / SIGTERMs that landed", f"{r['term_ok']} / {r['terms']}"),
            metric(f"{name}: SIGTERM drain p50", r["drain_p50_s"], "s"),
        ]
    metrics += [
        metric("replay: replies sent over all runs / questions", f"{rep['sent']} / {rep['questions']}"),
        metric("replay: questions answered twice", rep["answered_twice"], target=("<=", 0)),
        metric("replay: questions never answered", rep["unanswered"], target=("<=", 0)),
        metric("replay: credit debits, drill / reference", f"{rep['debits']} / {rep['ref_debits']}"),
        metric("replay: stored answers without a debit", rep["replies_unpaid"], target=("<=", 0)),
        metric("replay: debits without a delivery record", rep["debits_undelivered"], target=("<=", 0)),
        metric("replay: answers debited twice", rep["debited_twice"], target=("<=", 0)),
    ]
    notes = ["replies are counted from what every run printed (PYTHONUNBUFFERED), killed runs included",
             "tiers: the shipped tiers.yaml with default_tier: unlimited, so no quota refusal interferes; its answers "
             "are paid with credits (0 free requests, 1 credit each, an overdraft no run reaches) to drill the ledger"]
    if "skipped" in full:
        metrics.append(metric("full disk: skipped", None))
        notes.append(f"full-disk round skipped: {full['skipped']}")
    else:
        metrics += [
            metric(f"full disk: first run on {FULL_DISK_MB} MB, exit code (1 = stopped by the full disk)", full["first_rc"]),
            metric("full disk: replies sent before the disk was full", full["first_sent"]),
            metric("full disk: stored messages / reference", f"{full['messages']} / {full['ref_messages']}"),
            metric("full disk: messages lost", full["ref_messages"] - full["messages"], target=("<=", 0)),
            metric("full disk: replies sent / questions", f"{full['sent']} / {full['questions']}"),
            metric("full disk: sent replies not stored", full["sent"] - full["replies"], target=("<=", 0)),
            metric("full disk: stored replies without a usage row", max(0, full["replies"] - full["usage"]), target=("<=", 0)),
            metric("full disk: deliveries without a stored reply", full["unreplied"], target=("<=", 0)),
            metric("full disk: questions answered twice", full["answered_twice"], target=("<=", 0)),
            metric("full disk: questions never answered", full["unanswered"], target=("<=", 0)),
            metric("full disk: duplicated rows (DuckDB + LanceDB)", full["duplicates"], target=("<=", 0)),
        ]
        notes.append(f"full disk: the replay on a {FULL_DISK_MB} MB tmpfs until it is full, then remounted at "
                     f"{FULL_DISK_GROWN_MB} MB and run again; the embedding model's cache is kept off that disk")
    return {
        "description": f"{n} interruptions (1 in {SIGTERM_EVERY} SIGTERM, else kill -9) at random moments, then a final run; "
                       "import of 2 #ubuntu slices, replay of 1 (offline kith/recall model)",
        "params": {"interruptions": n, "seed": SEED, "import": list(IMPORT_SLICES), "replay": REPLAY_SLICE,
                   "import_ref_s": round(imp["ref_s"], 1), "replay_ref_s": round(rep["ref_s"], 1),
                   "full_disk_mb": FULL_DISK_MB},
        "metrics": metrics,
        "notes": notes,
    }


def _full_disk_round(tmp: Path, args: list[str], cfg: Path, ref_dir: Path, ref: _Result) -> dict:
    """The replay on a small tmpfs until the disk is full, the tmpfs remounted larger, a final run:
    ``_compare``'s figures plus ``first_rc``, ``first_sent``; ``{"skipped": why}`` where a tmpfs
    cannot be mounted."""
    mnt = tmp / "full-disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root"}
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_MB}m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs here: {r.stderr.strip()}"}
    try:
        data = mnt / "data"
        env = {"KITH_CACHE_DIR": str(tmp / "cache")}  # the embedding model's conversion is not what fills the disk
        progress(f"crash_drill: full disk: replay on a {FULL_DISK_MB} MB tmpfs")
        first = _run(args, data, cfg, tmp / "full-disk.out", env=env)
        subprocess.run(["mount", "-o", f"remount,size={FULL_DISK_GROWN_MB}m", str(mnt)], check=True)
        progress(f"crash_drill: full disk: remounted at {FULL_DISK_GROWN_MB} MB, final run")
        final = _run(args, data, cfg, tmp / "full-disk-final.out", env=env)
        if final.returncode != 0:
            raise RuntimeError(f"full disk: the run after remounting failed ({final.returncode}): {final.stderr_tail}")
        out = _compare(ref_dir, data, ref, [first.out, final.out], [])
        out.update(first_rc=first.returncode, first_sent=sum(_replies(first.out).values()))
        return out
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class _Result:
    def __init__(self, returncode: int, seconds: float, out: str, stderr_tail: str, killed: bool, drain_s: float | None):
        self.returncode, self.seconds, self.out, self.stderr_tail = returncode, seconds, out, stderr_tail
        self.killed, self.drain_s = killed, drain_s


def _config(tmp: Path) -> Path:
    """The shipped kith.yaml and tiers.yaml, with everyone on the unlimited tier — whose every answer
    is paid with credits (no free requests, 1 credit an answer, an overdraft no run reaches), so the
    ledger is drilled too: each answered question debited once."""
    import yaml

    cfg = tmp / "config"
    cfg.mkdir()
    shutil.copy(common.REPO_ROOT / "config" / "kith.yaml", cfg / "kith.yaml")
    tiers = yaml.safe_load((common.REPO_ROOT / "config" / "tiers.yaml").read_text(encoding="utf-8"))
    tiers["default_tier"] = "unlimited"
    unlimited = tiers["tiers"]["unlimited"]
    unlimited["quotas"]["requests_per_day"] = {"*": 0}
    unlimited.update(when_spent="credits", overdraft=10**9)
    tiers["prices"] = {"per_message": {"*": 1}}
    (cfg / "tiers.yaml").write_text(yaml.safe_dump(tiers, allow_unicode=True), encoding="utf-8")
    return cfg / "kith.yaml"


def _run(args: list[str], data_dir: Path, cfg: Path, out_path: Path, *, kill_after: float | None = None,
         sig: signal.Signals = signal.SIGKILL, env: dict[str, str] | None = None) -> _Result:
    cmd = [sys.executable, "-c", "import cli; cli.main()", *args, "--data-dir", str(data_dir), "--config", str(cfg)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    t0 = time.perf_counter()
    killed, drain_s = False, None
    with open(out_path, "w", encoding="utf-8") as out, open(f"{out_path}.err", "w", encoding="utf-8") as errf:
        p = subprocess.Popen(cmd, cwd=common.REPO_ROOT, env=env, stdout=out, stderr=errf)
        try:
            if kill_after is not None:
                try:
                    p.wait(timeout=kill_after)
                except subprocess.TimeoutExpired:
                    killed = True
                    t_sig = time.perf_counter()
                    p.send_signal(sig)
                    p.wait(timeout=RUN_TIMEOUT_S)
                    drain_s = time.perf_counter() - t_sig
            else:
                p.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.perf_counter() - t0
    text = out_path.read_text(encoding="utf-8", errors="replace")
    tail = Path(f"{out_path}.err").read_text(encoding="utf-8", errors="replace")[-2000:]
    return _Result(p.returncode, seconds, text, tail, killed, drain_s)


def _replies(out: str) -> collections.Counter:
    """Replies printed by ``kith replay``: each ``  → reply`` line follows its question's line."""
    counts: collections.Counter = collections.Counter()
    question = None
    for line in out.splitlines():
        if line.startswith("  → "):
            if question is not None:
                counts[question] += 1
            question = None
        elif line and not line.startswith(" "):
            question = line
    return counts


def _stores(data_dir: Path) -> dict:
    import duckdb
    import lancedb

    from memory.vector_rows import current_table

    con = duckdb.connect(str(data_dir / "kith.duckdb"), read_only=True)
    try:
        messages = con.execute("SELECT count(*) FROM messages WHERE role = 'user'").fetchone()[0]
        distinct = con.execute("SELECT count(DISTINCT (chat_id, message_id)) FROM messages").fetchone()[0]
        total = con.execute("SELECT count(*) FROM messages").fetchone()[0]
        replies = con.execute("SELECT count(*) FROM messages WHERE role = 'assistant'").fetchone()[0]
        usage = con.execute("SELECT count(*) FROM usage WHERE kind = 'chat'").fetchone()[0]
        unreplied = con.execute(
            "SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = d.chat_id"
            " AND m.role = 'assistant' AND m.reply_to = d.message_id)").fetchone()[0]
        ledger = _ledger(con)
    finally:
        con.close()
    db = lancedb.connect(str(data_dir / "memory"))
    tbl = db.open_table(current_table(data_dir / "memory")).to_arrow().select(["id"])
    ids = tbl.column("id").to_pylist()
    return {"messages": messages, "replies": replies, "usage": usage, "unreplied": unreplied, "memories": len(set(ids)),
            "memory_ids": set(ids), "duplicates": (total - distinct) + (len(ids) - len(set(ids))), **ledger}


def _ledger(con) -> dict:
    """The credit ledger against the answers: debits, answers stored without a debit, debits with no
    delivery record (an answer never begun), and answers debited more than once."""
    if not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'credit_ledger'").fetchone()[0]:
        return {"debits": 0, "replies_unpaid": 0, "debits_undelivered": 0, "debited_twice": 0}
    debits, twice = con.execute(
        "SELECT count(*), count(*) - count(DISTINCT (chat_id, message_id)) FROM credit_ledger WHERE kind = 'debit'"
        " AND key NOT LIKE '%:tokens'").fetchone()
    unpaid = con.execute(
        "SELECT count(DISTINCT (m.chat_id, m.reply_to)) FROM messages m WHERE m.role = 'assistant' AND m.reply_to IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM credit_ledger l WHERE l.kind = 'debit' AND l.chat_id = m.chat_id"
        " AND l.message_id = m.reply_to)").fetchone()[0]
    undelivered = con.execute(
        "SELECT count(*) FROM credit_ledger l WHERE l.kind = 'debit' AND NOT EXISTS (SELECT 1 FROM deliveries d"
        " WHERE d.chat_id = l.chat_id AND d.message_id = l.message_id)").fetchone()[0]
    return {"debits": debits, "replies_unpaid": unpaid, "debits_undelivered": undelivered, "debited_twice": twice}


def _compare(ref_dir: Path, drill_dir: Path, ref: _Result, outs: list[str], terms: list[tuple[int, float]]) -> dict:
    a, b = _stores(ref_dir), _stores(drill_dir)
    want = _replies(ref.out)
    got: collections.Counter = collections.Counter()
    for o in outs:
        got.update(_replies(o))
    drains = sorted(d for _, d in terms)
    return {
        "ref_s": ref.seconds,
        "messages": b["messages"], "ref_messages": a["messages"],
        "memories": b["memories"], "ref_memories": a["memories"],
        "memories_missing": len(a["memory_ids"] - b["memory_ids"]),
        "duplicates": b["duplicates"],
        "replies": b["replies"], "usage": b["usage"], "unreplied": b["unreplied"],
        "debits": b["debits"], "ref_debits": a["debits"], "replies_unpaid": b["replies_unpaid"],
        "debits_undelivered": b["debits_undelivered"], "debited_twice": b["debited_twice"],
        "questions": sum(want.values()), "sent": sum(got.values()),
        "answered_twice": sum(max(0, got[q] - want[q]) for q in got),
        "unanswered": sum(max(0, want[q] - got[q]) for q in want),
        "terms": len(terms), "term_ok": sum(1 for rc, _ in terms if rc == 143),
        "drain_p50_s": round(drains[len(drains) // 2], 2) if drains else None,
    }


if __name__ == "__main__":
    raise SystemExit(common.main_single("crash_drill", run))
