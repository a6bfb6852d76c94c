"""CLI start-up: wall time of ``kith`` commands as a user runs them, beside importing torch.

A data dir gets one real #ubuntu slice (first 300 messages) through ``kith import`` first (the
OpenVINO conversion of the embedding model is cached, as on every start after the first). Then, in
fresh interpreters, median of 5 (quick: 3) each: ``python -c "import torch, sentence_transformers"``
(what every command paid before the OpenVINO backend), ``kith --help``, ``kith memory stats``,
``kith memory search CHAT "sound card"``. Targets (issue #10): ``memory stats`` ≤ 1 s,
``memory search`` ≤ 3 s.
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
    metrics = [
        metric(f"{name} (median of {runs})", s, "s",
               target=("<=", TARGET_STATS_S) if name == "kith memory stats"
               else ("<=", TARGET_SEARCH_S) if name == "kith memory search" else None)
        for name, s in walls.items()
    ]
    return {
        "description": "wall time of kith commands in fresh interpreters (embedding on the configured backend)",
        "params": {"runs": runs, "messages": len(lines), "embedding": "config default"},
        "metrics": metrics,
        "notes": ["memory stats opens only the two stores; memory search also loads the embedding model "
                  "(OpenVINO by default: no torch)"],
    }


if __name__ == "__main__":
    sys.exit(common.main_single("cli_startup", run))
