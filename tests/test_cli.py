"""The ``kith`` command line, in-process through typer's runner, on real files in tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ubuntu-irc"
SLICE = DATA / "2009-03-03_10.jsonl"
CHAT = "-1002009030310"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A data dir with one real #ubuntu slice imported through `kith import`."""
    data = tmp_path_factory.mktemp("data")
    res = CliRunner().invoke(app, ["import", str(SLICE), "--data-dir", str(data)])
    assert res.exit_code == 0, res.output
    assert "1226 messages in 1 chat(s)" in res.output
    return data


def kith(*args: str):
    return CliRunner().invoke(app, list(args))


def test_memory_search_json_lines(imported):
    res = kith("memory", "search", "--data-dir", str(imported), "--json", "-k", "5", "--", CHAT, "which package has Python.h")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 5
    assert all({"message_id", "chat_id", "score", "text", "rank"} <= r.keys() for r in rows)
    assert all(r["chat_id"] == int(CHAT) for r in rows)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert any("Python.h" in r["text"] for r in rows)


def test_memory_search_explain_shows_score_parts(imported):
    res = kith("memory", "search", "--data-dir", str(imported), "--explain", "-k", "3", "--", CHAT, "smtp server")
    assert res.exit_code == 0, res.output
    assert "why" in res.stdout and "vector=" in res.stdout.replace("\n", "")


def test_memory_search_many_queries_in_one_process(imported, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "query": "smtp server"}\n{"id": 7, "query": "jaunty"}\nnot json\n', encoding="utf-8")
    res = kith("memory", "search", "--data-dir", str(imported), "--json", "-k", "3", "--queries", str(q), "--", CHAT)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [(r["query_id"], r["rank"]) for r in rows] == [("a", 1), ("a", 2), ("a", 3), (7, 1), (7, 2), (7, 3)]
    assert "q.jsonl:3" in res.stderr


def test_stats_chat_and_forget(imported):
    res = kith("memory", "stats", "--data-dir", str(imported), "--json")
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    (chat,) = stats["chats"]
    assert chat["chat_id"] == int(CHAT) and chat["messages"] == 1226 and chat["memories"] == 1226

    res = kith("chat", "--data-dir", str(imported), "--chat-id", CHAT, "-m", "what is the outgoing smtp server for skynet?")
    assert res.exit_code == 0, res.output
    assert "From this chat's memory" in res.stdout and "ActionParsnip" in res.stdout

    res = kith("memory", "forget", "--data-dir", str(imported), "--chat", CHAT, "--user", "1", "--yes")
    assert res.exit_code == 0, res.output
    assert "erased 1 messages" in res.stdout  # the question asked through `kith chat` above


def test_import_reports_bad_lines_with_their_number(tmp_path):
    src = tmp_path / "t.jsonl"
    lines = SLICE.read_text(encoding="utf-8").splitlines()[:5]
    lines.insert(2, "{broken")
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = kith("import", str(src), "--data-dir", str(tmp_path / "d"))
    assert res.exit_code == 0, res.output
    assert "t.jsonl:3" in res.stderr
    assert "5 messages in 1 chat(s)" in res.stdout and "1 bad line(s) skipped" in res.stdout


def test_a_broken_config_names_file_and_line(tmp_path):
    bad = tmp_path / "kith.yaml"
    bad.write_text("memory:\n  recall_k: lots\n", encoding="utf-8")
    res = kith("memory", "stats", "--data-dir", str(tmp_path / "d"), "--config", str(bad))
    assert res.exit_code == 1
    assert f"{bad}:2" in res.stderr.replace("\n", "") and "memory.recall_k" in res.stderr


def test_help_explains_every_command():
    res = kith("--help")
    assert res.exit_code == 0
    for name in ("chat", "replay", "import", "memory", "doctor", "demo", "bench"):
        assert name in res.stdout
