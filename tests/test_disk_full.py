"""A full disk stops intake cleanly: a clear error naming the path and the space to free, a non-zero
exit, no half-written "unsaved" dump, no crash-restart loop; after space is freed the next run
continues where the last stopped (the shipped CLI, in subprocesses, on a small tmpfs).

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
