"""A full disk stops intake cleanly: a clear error naming the path and the space to free, a non-zero
exit, no half-written "unsaved" dump, no crash-restart loop; after space is freed the next run
continues where the last stopped (the shipped CLI, in subprocesses, on a small tmpfs).

And it loses nothing that was accepted: what could not be committed is kept in the store's reserve
(``kith.duckdb.reserve``, preallocated) and stored at the next start — every reply that was sent,
with its usage row, and in ``kith chat`` the question with the printed answer; where the disk has no
room for the reserve, new messages are refused before anything is accepted.

Skipped where mounting a tmpfs is not permitted (not root, or no CAP_SYS_ADMIN in a container).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]
SLICES = ROOT.parent / "shared" / "data" / "ubuntu-irc"
SLICE = SLICES / "2011-11-13_02.jsonl"


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def config_dir(tmp_path: Path, *, vectors: Path | None = None) -> Path:
    """The shipped kith.yaml and tiers.yaml with everyone on the unlimited tier (no quota refusal is
    a question without a reply); ``vectors``: vector memory there instead of in the data dir."""
    cfg = tmp_path / "config"
    cfg.mkdir(exist_ok=True)
    text = (ROOT / "config" / "kith.yaml").read_text(encoding="utf-8")
    if vectors is not None:
        assert "  uri: null " in text
        text = text.replace("  uri: null ", f"  uri: {vectors} ", 1)
    (cfg / "kith.yaml").write_text(text, encoding="utf-8")
    tiers = (ROOT / "config" / "tiers.yaml").read_text(encoding="utf-8")
    (cfg / "tiers.yaml").write_text(tiers.replace("default_tier: free", "default_tier: unlimited", 1), encoding="utf-8")
    return cfg / "kith.yaml"


def fill(mnt: Path) -> Path:
    """Fill the file system of ``mnt`` with one file (returned) until it is full."""
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**16)
                f.flush()
        except OSError:
            pass
    return filler


def replies_printed(out: str) -> list[str]:
    """The question lines ``kith replay`` printed a reply under (``  → reply`` follows its question)."""
    answered, question = [], None
    for line in out.splitlines():
        if line.startswith("  → "):
            if question is not None:
                answered.append(question)
            question = None
        elif line and not line.startswith(" "):
            question = line
    return answered


def read_store(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


UNREPLIED = ("SELECT count(*) FROM deliveries d WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = d.chat_id"
             " AND m.role = 'assistant' AND m.reply_to = d.message_id)")


def kith(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def grow(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def test_import_on_a_full_disk_stops_with_a_clear_error_and_the_next_run_continues(small_disk):
    data = small_disk / "data"
    r = kith("import", str(SLICE), "--data-dir", str(data))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no space left on the device of" in r.stderr and str(data) in r.stderr.replace("\n", "")
    assert "free at least" in r.stderr
    assert "Traceback" not in r.stderr and "kept queued" not in r.stdout + r.stderr
    assert not [p for p in data.glob("*.unsaved-*") if p.stat().st_size == 0]  # no empty "backup"

    grow(small_disk, "64m")
    r = kith("import", str(SLICE), "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    con = duckdb.connect(str(data / "kith.duckdb"), read_only=True)
    stored = con.execute("SELECT count(*) FROM messages").fetchone()[0]
    con.close()
    lines = sum(1 for line in SLICE.read_text(encoding="utf-8").splitlines() if line.strip())
    assert stored >= lines * 0.95  # every message line (a few are joins/parts, not messages)
    stats = kith("memory", "stats", "--json", "--data-dir", str(data))
    assert json.loads(stats.stdout)["not_embedded"] == 0  # what the full disk kept out of LanceDB is embedded now


def test_replay_on_a_full_disk_exits_instead_of_restarting_forever(small_disk):
    grow(small_disk, "2m")  # room to open the stores; the disk fills during the replay
    data = small_disk / "data"
    r = kith("replay", str(SLICE), "--quiet", "--data-dir", str(data), timeout=240)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no space left on the device of" in r.stderr
    assert "Traceback" not in r.stderr and "restarting" not in r.stderr

    grow(small_disk, "64m")
    r = kith("replay", str(SLICE), "--json", "--data-dir", str(data), timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["messages"] > 1000 and report["llm_errors"] == 0


def test_a_replay_into_a_full_disk_loses_no_reply_it_sent(small_disk, tmp_path):
    # vector memory elsewhere: the dialogue store is what fills (the case of the "rows not stored" report)
    cfg = config_dir(tmp_path, vectors=tmp_path / "vectors")
    grow(small_disk, "4500k")  # the stores and the 4 MiB reserve fit; the database fills during the replay (4.4–4.6 MB fill it; 4.3 MB is full at start)
    data = small_disk / "data"
    first = kith("replay", str(SLICE), "--data-dir", str(data), "--config", str(cfg), timeout=400)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "no space left on the device of" in first.stderr and "Traceback" not in first.stderr
    assert "kith.duckdb.reserve and stored at the next start" in first.stderr  # kept, not "cannot be written either"
    assert "cannot be written to" not in first.stderr
    sent = replies_printed(first.stdout)
    assert len(sent) >= 10  # the disk filled mid-replay, after replies went out
    stored = read_store(data / "kith.duckdb", "SELECT count(*) FROM messages WHERE role = 'assistant'")[0][0]
    # the disk filled with rows still uncommitted (kept in the reserve, said above): replies, their
    # deliveries (journaled there, not committed before the first byte) or the questions around them
    assert stored <= len(sent)

    grow(small_disk, "64m")
    second = kith("replay", str(SLICE), "--data-dir", str(data), "--config", str(cfg), timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "stored" in second.stderr and "an earlier run could not store" in second.stderr
    sent += replies_printed(second.stdout)
    db = data / "kith.duckdb"
    assert read_store(db, "SELECT count(*) FROM messages WHERE role = 'assistant'")[0][0] == len(sent)  # each sent reply
    assert read_store(db, "SELECT count(DISTINCT reply_to) FROM messages WHERE role = 'assistant'")[0][0] == len(sent)  # once
    assert read_store(db, "SELECT count(*) FROM usage WHERE kind = 'chat'")[0][0] == len(sent)  # each with its usage
    assert read_store(db, UNREPLIED)[0][0] == 0  # every delivery has its reply
    lines = sum(1 for line in SLICE.read_text(encoding="utf-8").splitlines() if line.strip())
    assert read_store(db, "SELECT count(*) FROM messages WHERE role = 'user'")[0][0] >= lines * 0.95
    assert (data / "kith.duckdb.reserve").stat().st_blocks * 512 >= 4 * 2**20  # the reserve is whole again


def test_kith_chat_on_an_already_full_disk_says_so_in_one_line_and_changes_nothing(small_disk):
    grow(small_disk, "10m")
    data = small_disk / "data"
    r = kith("chat", "-m", "hello, my flat is at 12 Baker street", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    fill(small_disk)  # the disk is full; the reserve made by the first run is all that is left

    r = kith("chat", "-m", "where is my flat?", "--data-dir", str(data))
    assert r.returncode == 1 and "Kith:" not in r.stdout  # refused before anything is said or taken in
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        next(line for line in r.stderr.splitlines() if "no space left on the device of" in line)]  # one line
    db = data / "kith.duckdb"
    assert read_store(db, "SELECT count(*) FROM messages WHERE text = 'where is my flat?'") == [(0,)]

    grow(small_disk, "24m")
    r = kith("chat", "-m", "where is my flat?", "--data-dir", str(data))
    assert r.returncode == 0 and "Baker street" in r.stdout, r.stdout + r.stderr
    rows = read_store(db, "SELECT message_id, role, reply_to, text FROM messages ORDER BY message_id")
    question = next(m for m in rows if m[3] == "where is my flat?")
    answer = next(m for m in rows if m[2] == question[0])
    assert answer[1] == "assistant" and "Baker street" in answer[3]
    assert read_store(db, "SELECT count(*) FROM usage WHERE kind = 'chat'") == [(2,)]  # both answers' usage
    assert read_store(db, UNREPLIED) == [(0,)]


def test_new_messages_are_refused_where_the_disk_has_no_room_for_the_reserve(small_disk):
    grow(small_disk, "10m")
    data = small_disk / "data"
    r = kith("chat", "-m", "hello", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    (data / "kith.duckdb.reserve").unlink()  # e.g. a data dir from before the reserve
    filler = fill(small_disk)

    r = kith("chat", "-m", "remember that the spare key is under the mat", "--data-dir", str(data))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no space left on the device of" in r.stderr and "free at least" in r.stderr
    assert "Kith:" not in r.stdout  # refused before anything was accepted (so nothing is lost)

    filler.unlink()
    r = kith("chat", "-m", "what about the key?", "--data-dir", str(data))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (data / "kith.duckdb.reserve").stat().st_blocks * 512 >= 4 * 2**20  # made again once there is room
    texts = [t for (t,) in read_store(data / "kith.duckdb", "SELECT text FROM messages WHERE role = 'user'")]
    assert texts == ["hello", "what about the key?"]  # the refused message was never claimed to be kept
