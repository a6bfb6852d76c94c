"""CLI start-up: wall time of ``kith`` commands as a user runs them, beside importing torch.

A data dir gets one real #ubuntu slice (first 300 messages) through ``kith import`` first (the
OpenVINO conversion of the embedding model is cached, as on every start after the first). Then, in
fresh interpreters, median of 5 (quick: 3) each: ``python -c "import torch, sentence_transformers"``
(what every command paid before the OpenVINO backend), ``kith --help``, ``kith memory stats``,
``kith memory search CHAT "sound card"``; then the same two while ``kith run`` serves the data dir
(Telegram unreachable here; the commands go through its admin API, so no store or model is opened
by the CLI). Targets (issue #10): ``memory stats`` ≤ 1 s, ``memory search`` ≤ 3 s.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import metric, progress

TARGET_STATS_S = 1.0
TARGET_SEARCH_S = 3.0


def _wall(cmd: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall seconds of ``cmd`` over ``runs`` runs. raises RuntimeError when it fails."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=common.REPO_ROOT, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:5])}… exited {proc.returncode}: {proc.stderr[-400:]}")
    return statistics.median(times)


class _running_bot:
    """``kith run`` on ``data`` (control server on any free port, fake Telegram credentials) until the
    block ends; entered once its control server has written ``control.json``."""

    def __init__(self, kith: list[str], data: Path, tmp: Path, env: dict[str, str]) -> None:
        from config.loader import SHIPPED_SETTINGS

        cfg = tmp / "kith.yaml"
        cfg.write_text(SHIPPED_SETTINGS.read_text(encoding="utf-8").replace("  port: 8787", "  port: 0", 1), encoding="utf-8")
        self.cmd = [*kith, "run", "--data-dir", str(data), "--config", str(cfg)]
        self.env = {**env, "TELEGRAM_API_ID": "1", "TELEGRAM_API_HASH": "0" * 32, "TELEGRAM_BOT_TOKEN": "1:" + "A" * 35}
        self.control, self.log = data / "control.json", tmp / "bot.log"

    def __enter__(self) -> None:
        self.fh = self.log.open("w")
        self.proc = subprocess.Popen(self.cmd, cwd=common.REPO_ROOT, env=self.env, stdout=self.fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self.control.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kith run did not start: {self.log.read_text()[-600:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.fh.close()


def run(quick: bool) -> dict:
    from providers.openvino_encoder import CACHE_ENV, cache_root

    runs = 3 if quick else 5
    src = common.slice_files()[0]
    lines = src.read_text(encoding="utf-8").splitlines()[:300]
    chat_id = str(json.loads(lines[0])["chat_id"])
    kith = [sys.executable, "-m", "cli"]
    env = {**os.environ, CACHE_ENV: str(cache_root())}
    with tempfile.TemporaryDirectory(prefix="kith-bench-cli-") as tmp:
        data, slice_ = Path(tmp) / "data", Path(tmp) / "slice.jsonl"
        slice_.write_text("\n".join(lines) + "\n", encoding="utf-8")
        progress(f"cli_startup: importing {len(lines)} messages of {src.name}")
        subprocess.run([*kith, "import", "--data-dir", str(data), str(slice_)], cwd=common.REPO_ROOT, env=env,
                       capture_output=True, check=True)
        cases = {
            "python -c 'import torch, sentence_transformers'": [sys.executable, "-c", "import torch, sentence_transformers"],
            "kith --help": [*kith, "--help"],
            "kith memory stats": [*kith, "memory", "stats", "--data-dir", str(data)],
            "kith memory search": [*kith, "memory", "search", "--data-dir", str(data), chat_id, "sound card"],
        }
        walls = {}
        for name, cmd in cases.items():
            progress(f"cli_startup: {name} ×{runs}")
            walls[name] = _wall(cmd, env, runs)
        with _running_bot(kith, data, Path(tmp), env):
            for name in ("kith memory stats", "kith memory search"):
                progress(f"cli_startup: {name} through the running bot ×{runs}")
                walls[f"{name}, bot running"] = _wall(cases[name], env, runs)
    metrics = [
        metric(f"{name} (median of {runs})", s, "s",
               target=("<=", TARGET_STATS_S) if name.startswith("kith memory stats")
               else ("<=", TARGET_SEARCH_S) if name.startswith("kith memory search") else None)
        for name, s in walls.items()
    ]
    return {
        "description": "wall time of kith commands in fresh interpreters (embedding on the configured backend)",
        "params": {"runs": runs, "messages": len(lines), "embedding": "config default"},
        "metrics": metrics,
        "notes": ["memory stats opens the dialogue store and reads vector counts through pylance (no lancedb import); "
                  "memory search opens lancedb and loads the embedding model "
                  "(OpenVINO by default: no torch); with the bot running both are answered by the bot "
                  "(the CLI imports no store, no model)"],
    }


if __name__ == "__main__":
    sys.exit(common.main_single("cli_startup", run))
