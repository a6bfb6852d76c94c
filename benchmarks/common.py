"""Shared helpers of the benchmarks: percentiles, peak RSS, the result format, the machine line.

A benchmark is a module of this package with a top-level ``run(quick: bool) -> dict``. The runner
(``python -m benchmarks``) calls it in a subprocess of its own. The dict it returns::

    {
      "description": "one line: what was measured",
      "params":  {"messages": 11641, ...},          # sizes and settings, printed as-is
      "metrics": [metric("throughput", 412.3, "msg/s", target=(">=", 300)), ...],
      "notes":   ["vectors are the real embeddings of real texts, reused across chats", ...],
      ...                                           # anything else (e.g. "profile") is kept in the JSON
    }

``metric()`` builds one metric row: ``{"name", "value", "unit", "target", "ok"}``; ``ok`` is None
when there is no target. A module returning another shape still works: the runner turns its numeric
leaves into metrics without targets. The runner adds ``peak_rss_mib`` and ``wall_s`` itself.

Progress goes to stderr (``progress``); results go to stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "KITH_BENCH_DATA"  # directory of transcript slices (*.jsonl); default ../shared/data/ubuntu-irc

_T0 = time.perf_counter()


# ---------------------------------------------------------------------- statistics and resources


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linear interpolation between closest ranks
    (numpy's default). NaN when there are no values."""
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, not {q}")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    return percentile(values, 50), percentile(values, 99)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux) — except that on Linux a child process
    inherits its parent's peak through fork/vfork + exec (the kernel folds the old address space's
    high-water mark into the process's maxrss at exec), so a small benchmark started from a big
    parent would report the parent's peak. Where ``/proc/self/status`` has ``VmHWM`` (the peak of
    this process image alone) that is used instead; it equals ru_maxrss when the parent was smaller.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """Current resident set size of this process, MiB (0.0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------- result rows

OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t, ">": lambda v, t: v > t}
_OP_SIGN = {"<=": "≤", ">=": "≥", "<": "<", ">": ">"}


def metric(name: str, value: float | int | None, unit: str = "", *, target: tuple[str, float] | None = None) -> dict:
    """One metric row. ``target``: ``("<=", 5.0)`` or ``(">=", 300)``; ``ok`` is None without one.
    A NaN/None value is stored as None (and misses any target)."""
    if value is not None and isinstance(value, float) and not math.isfinite(value):
        value = None
    row: dict[str, Any] = {"name": name, "value": value, "unit": unit, "target": None, "ok": None}
    if target is not None:
        op, bound = target
        if op not in OPS:
            raise ValueError(f"unknown target operator {op!r}")
        row["target"] = {"op": op, "value": bound}
        row["ok"] = value is not None and bool(OPS[op](value, bound))
    return row


def fmt_value(value: Any, unit: str = "") -> str:
    """A number with a sensible number of digits and its unit: ``412 msg/s``, ``3.42 ms``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        s = str(value)
    elif isinstance(value, int):
        s = f"{value:,}".replace(",", " ") if abs(value) >= 10000 else str(value)
    elif value == 0:
        s = "0"
    else:
        a = abs(value)
        s = f"{value:.0f}" if a >= 100 else f"{value:.1f}" if a >= 10 else f"{value:.2f}" if a >= 1 else f"{value:.3f}"
    return f"{s} {unit}".strip()


def fmt_target(row: Mapping[str, Any]) -> str:
    t = row.get("target")
    if not t:
        return ""
    bound = float(t["value"]) if isinstance(t["value"], (int, float)) else t["value"]
    return f"{_OP_SIGN.get(t['op'], t['op'])} {fmt_value(bound, row.get('unit', ''))}"


def fmt_ok(row: Mapping[str, Any]) -> str:
    ok = row.get("ok")
    return "" if ok is None else ("✓" if ok else "✗ missed")


def normalize(result: Any) -> dict:
    """Coerce what a ``run()`` returned into the documented shape (see the module docstring)."""
    if not isinstance(result, Mapping):
        return {"metrics": [metric("result", result if isinstance(result, (int, float)) else None)], "raw": repr(result)}
    out = dict(result)
    rows = out.get("metrics")
    if isinstance(rows, list) and all(isinstance(r, Mapping) and "name" in r for r in rows):
        out["metrics"] = [_normalize_row(r) for r in rows]
        return out
    # another shape: every numeric leaf becomes a metric without a target
    flat: list[dict] = []

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, bool):
            flat.append(metric(prefix, int(v)))
        elif isinstance(v, (int, float)):
            flat.append(metric(prefix, v))
        elif isinstance(v, Mapping):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), sub)

    walk("", rows if isinstance(rows, Mapping) else {k: v for k, v in out.items() if k not in ("params", "notes", "description")})
    out["metrics"] = flat
    return out


def _normalize_row(r: Mapping[str, Any]) -> dict:
    """A metric row from a module that built it by hand: target as ``{"op", "value"}`` or
    ``[op, value]``; ``ok`` computed when missing."""
    t = r.get("target")
    target = None
    if isinstance(t, Mapping) and "op" in t and "value" in t:
        target = {"op": str(t["op"]), "value": t["value"]}
    elif isinstance(t, (list, tuple)) and len(t) == 2:
        target = {"op": str(t[0]), "value": t[1]}
    value = r.get("value")
    ok = r.get("ok")
    if ok is None and target is not None and target["op"] in OPS:
        ok = isinstance(value, (int, float)) and bool(OPS[target["op"]](value, target["value"]))
    return {"name": str(r["name"]), "value": value, "unit": r.get("unit", "") or "", "target": target, "ok": ok}


def format_result(name: str, result: Mapping[str, Any]) -> str:
    """Plain-text block of one benchmark's numbers, as printed when it finishes."""
    lines = [f"## {name}" + (f" — {result['description']}" if result.get("description") else "")]
    if result.get("error"):
        lines.append(f"  CRASHED: {result['error']}")
    params = result.get("params") or {}
    if params:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in params.items()))
    rows = list(result.get("metrics") or [])
    width = max((len(r["name"]) for r in rows), default=0)
    for r in rows:
        tail = f"   (target {fmt_target(r)}: {fmt_ok(r)})" if r.get("target") else ""
        lines.append(f"  {r['name']:<{width}}  {fmt_value(r.get('value'), r.get('unit', ''))}{tail}")
    if result.get("peak_rss_mib") is not None:
        lines.append(f"  {'peak RSS':<{width}}  {fmt_value(result['peak_rss_mib'], 'MiB')}")
    if result.get("wall_s") is not None:
        lines.append(f"  {'wall time':<{width}}  {fmt_value(result['wall_s'], 's')}")
    profile = result.get("profile") or []
    if profile:
        lines.append("  profile:")
        lines.extend(f"    {item}" for item in profile)
    for note in result.get("notes") or []:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def markdown_table(results: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """``| benchmark | metric | value | target | ok? |`` over every benchmark (crashes included)."""
    out = ["| benchmark | metric | value | target | ok? |", "|---|---|---|---|---|"]
    for name, res in results:
        if res.get("error"):
            out.append(f"| {name} | crashed | {_md(str(res['error']))} |  | ✗ crashed |")
        for r in res.get("metrics") or []:
            out.append(f"| {name} | {_md(r['name'])} | {fmt_value(r.get('value'), r.get('unit', ''))} | {fmt_target(r)} | {fmt_ok(r)} |")
        if res.get("peak_rss_mib") is not None:
            out.append(f"| {name} | peak RSS | {fmt_value(res['peak_rss_mib'], 'MiB')} |  |  |")
    return "\n".join(out)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")[:200]


# ---------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, Python, torch/lancedb/duckdb versions, date (no heavy imports)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": _ram_gib(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "lancedb": _version("lancedb"),
        "duckdb": _version("duckdb"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
    }


def machine_line(m: Mapping[str, Any]) -> str:
    ram = f"{m['ram_gib']} GiB RAM" if m.get("ram_gib") is not None else "RAM unknown"
    return (
        f"{m['cpu']} · {m['cores']} cores · {ram} · Python {m['python']} · torch {m['torch']} · "
        f"lancedb {m['lancedb']} · duckdb {m['duckdb']} · {m['date']}"
        + (f" · commit {m['commit']}" if m.get("commit") else "")
    )


# ---------------------------------------------------------------------- data and progress


def data_dir() -> Path:
    """The directory of transcript slices: ``$KITH_BENCH_DATA`` or ``<repo>/../shared/data/ubuntu-irc``."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "ubuntu-irc"


def slice_files() -> list[Path]:
    """Every ``*.jsonl`` transcript of ``data_dir()``, sorted by name. raises FileNotFoundError."""
    d = data_dir()
    files = sorted(d.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no transcript slices (*.jsonl) in {d}; set {DATA_ENV} to a directory of them")
    return files


def progress(msg: str) -> None:
    """A progress line on stderr, with the seconds since this process started."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


BACKEND_ENV = "KITH_BENCH_BACKENDS"  # e.g. "openvino,torch:fp32,torch": embedding backends[:precision] to measure


def bench_backends() -> list[tuple[str, str]]:
    """``(backend, precision)`` pairs to measure, from ``$KITH_BENCH_BACKENDS`` (default: OpenVINO,
    torch fp32 — the reference —, torch auto/bf16). The first one is the one the single-backend
    benchmarks use (the bot's default). raises ValueError on an unknown name."""
    from providers.embedder import BACKENDS, PRECISIONS

    spec = os.environ.get(BACKEND_ENV) or "openvino,torch:fp32,torch"
    out = []
    for item in spec.split(","):
        backend, _, precision = item.strip().partition(":")
        precision = precision or "auto"
        if backend not in BACKENDS or precision not in PRECISIONS:
            raise ValueError(f"{BACKEND_ENV}: {item!r} is not backend[:precision] with backend in {BACKENDS}, "
                             f"precision in {PRECISIONS}")
        out.append((backend, precision))
    return out


def load_model_timed(backend: str | None = None, precision: str = "auto"):
    """The real embedding model as a ``providers.embedder.Encoder`` on ``backend`` (default: the
    first of ``bench_backends()``) and its load time in seconds. raises RuntimeError if the backend
    fell back to another one (the numbers would be mislabelled)."""
    from providers.embedder import load_encoder

    if backend is None:
        backend, precision = bench_backends()[0]
    t0 = time.perf_counter()
    enc = load_encoder(backend, precision=precision)
    if enc.backend != backend:
        raise RuntimeError(f"embedding backend {backend} is not usable here (fell back to {enc.backend}); see the log")
    return enc, time.perf_counter() - t0


def time_encoder(enc, keep: bool = False) -> Timed:
    """Wrap ``enc.encode_batch`` (in place) with a ``Timed``: the time spent inside the model
    (keep: also each call's texts and seconds)."""
    timed = Timed(enc.encode_batch, f"{enc.backend} {enc.precision}", keep)
    enc.encode_batch = timed
    return timed


def torch_threads() -> int | None:
    """torch's intra-op threads in this process (None when torch is not loaded)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


LLM_CONFIG_ENV = "KITH_BENCH_CONFIG"  # a kith.yaml whose models the LLM rows call (``kith bench --config``)


def llm_config():
    """The ``Config`` of ``$KITH_BENCH_CONFIG`` (``kith bench --config FILE``), or None when unset.

    Only the rows that need a real LLM use it (recall_locomo: its ``models``, ``memory.query_model`` /
    ``query_timeout_s`` for query planning, ``memory.memory_model`` / ``fact_batch`` for memory
    entries); everything else is measured on the shipped defaults.
    raises ConfigError (file, line, key) for a broken file."""
    from config.loader import load_config

    path = os.environ.get(LLM_CONFIG_ENV)
    return load_config(Path(path)) if path else None


def default_config():
    """The shipped defaults: ``Config(settings=Settings(), tiers=TiersConfig())`` (offline kith/recall)."""
    from config.models import Config, Settings, TiersConfig

    return Config(settings=Settings(), tiers=TiersConfig())


class Timed:
    """Wrap a callable, accumulating its wall time (seconds), calls, and ``items`` (the length of
    the first argument when it has one, e.g. the texts of an encode call). Meant for a callable
    used from one thread at a time."""

    def __init__(self, fn: Callable, label: str = "", keep: bool = False) -> None:
        self.fn = fn
        self.label = label  # what is timed, e.g. "openvino bf16"
        self.kept: list | None = [] if keep else None  # with keep: (first argument, seconds) of every call
        self.seconds = 0.0
        self.calls = 0
        self.items = 0

    def __call__(self, *args, **kwargs):
        if args and hasattr(args[0], "__len__"):
            self.items += len(args[0])
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            took = time.perf_counter() - t0
            self.seconds += took
            self.calls += 1
            if self.kept is not None and args:
                self.kept.append((args[0], took))


# ---------------------------------------------------------------------- standalone entry point


def main_single(name: str, run: Callable[[bool], dict], argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.NAME [--quick] [--json]``: run one benchmark in this process."""
    ap = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=f"Run the {name} benchmark alone.")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    load0 = load_average()
    t0 = time.perf_counter()
    result = normalize(run(quick=args.quick))
    result.update(peak_rss_mib=round(peak_rss_mib(), 1), wall_s=round(time.perf_counter() - t0, 2), quick=args.quick)
    result["load_avg"] = {"start": load0, "end": load_average()}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_result(name, result))
        print()
        print(markdown_table([(name, result)]))
        print()
        print(machine_line(machine_info()) + f" · load {load0} → {load_average()}")
    return 0
