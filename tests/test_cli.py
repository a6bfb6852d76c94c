"""The ``kith`` command line, in-process through typer's runner, on real files in tmp_path."""
from __future__ import annotations

import json
import os
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


def test_memory_search_json_says_what_matched_and_why(imported):
    res = kith("memory", "search", "--data-dir", str(imported), "--json", "-k", "10", "--", CHAT, "which package has Python.h")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    for r in rows:
        why = r["why"]
        assert set(why) == {"legs", "stages", "kind"} and set(why["legs"]) == {"bm25", "vector"}
        assert why["kind"] == "message" and isinstance(why["stages"], list)
        assert all(v is None or (isinstance(v, int) and v >= 1) for v in why["legs"].values())
        assert why["legs"]["bm25"] or why["legs"]["vector"] or why["stages"]  # every row is there for a reason
    assert any(r["why"]["legs"]["bm25"] == 1 for r in rows)
    assert any(s.startswith("neighbour of ") for r in rows for s in r["why"]["stages"])
    fts = kith("memory", "search", "--data-dir", str(imported), "--json", "--mode", "fts", "-k", "3", "--", CHAT, "Python.h")
    assert [json.loads(line)["why"]["legs"] for line in fts.stdout.splitlines()] == [
        {"bm25": 1, "vector": None}, {"bm25": 2, "vector": None}, {"bm25": 3, "vector": None}]


def test_a_negative_chat_id_is_an_argument_without_the_double_dash(imported):
    res = kith("memory", "search", "--data-dir", str(imported), CHAT, "which package has Python.h", "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["chat_id"] for line in res.stdout.splitlines()] == [int(CHAT)] * 2
    typo = kith("memory", "search", "--data-dir", str(imported), CHAT, "q", "--jsno")
    assert typo.exit_code == 2 and "--jsno" in typo.output  # a mistyped option still fails, naming it


@pytest.mark.parametrize("command", [("memory", "stats"), ("sub", "list"), ("usage",), ("doctor",), ("tiers",), ("--help",)])
def test_commands_that_need_no_model_import_neither_torch_litellm_nor_lancedb(imported, ov_encoder, command):
    import subprocess
    import sys

    # ov_encoder: the OpenVINO conversion is cached, as on any start after the first
    data = () if command in (("tiers",), ("--help",)) else ("--data-dir", str(imported))
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli", *command, *data],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr[-2000:]  # doctor: 1 without Telegram keys
    imported_modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in imported_modules  # the measurement sees the imports
    assert not imported_modules & {"torch", "sentence_transformers", "transformers", "litellm", "openvino", "lancedb"}


def test_kith_tiers_is_readable_at_80_columns():
    from config.loader import load_config

    res = CliRunner().invoke(app, ["tiers"], env={"COLUMNS": "80"}, terminal_width=80)
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and max(len(line) for line in res.output.splitlines()) <= 80
    cfg = load_config(None, env={}).tiers
    for name, tier in cfg.tiers.items():
        assert name in res.output
        for feature, on in tier.features.model_dump().items():
            assert (feature in res.output) or not on
    assert "50,000 / 20,000" in res.output and "any: 500" in res.output  # whole values, not "1,0…"
    assert "largest file" in res.output and "5 MB" in res.output and "images/day" in res.output and "60 min" in res.output
    assert kith("tiers", "--data-dir", "anything").exit_code == 0  # accepted like every command's
    as_json = json.loads(kith("tiers", "--json").stdout)
    assert set(as_json["tiers"]) == set(cfg.tiers) and as_json["default_tier"] == cfg.default_tier


def test_memory_search_explain_shows_score_parts(imported):
    res = kith("memory", "search", "--data-dir", str(imported), "--explain", "-k", "3", "--", CHAT, "smtp server")
    assert res.exit_code == 0, res.output
    assert "why" in res.stdout and "vector=" in res.stdout.replace("\n", "")


def test_memory_search_many_queries_in_one_process(imported, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "query": "smtp server"}\n{"id": 7, "query": "jaunty"}\nnot json\n', encoding="utf-8")
    res = kith("memory", "search", "--data-dir", str(imported), "--json", "-k", "3", "--queries", str(q), "--", CHAT)
    assert res.exit_code == 1, res.output  # a bad line: the others answered, then exit 1
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
    assert res.exit_code == 1, res.output  # a skipped line is a failure the exit code tells a script about
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


def test_chat_with_bytes_that_are_not_utf8_is_answered_and_stored_with_replacement(tmp_path):
    import duckdb

    res = kith("chat", "--data-dir", str(tmp_path), "-m", "sound \udcff card")  # argv byte 0xff, as Python decodes it
    assert res.exit_code == 0, res.output
    assert "Kith:" in res.output
    con = duckdb.connect(str(tmp_path / "kith.duckdb"), read_only=True)
    try:
        texts = [r[0] for r in con.execute("SELECT text FROM messages WHERE role = 'user'").fetchall()]
    finally:
        con.close()
    assert texts == ["sound \ufffd card"]


def test_import_documents_into_a_chat_and_search_them_with_their_page(tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for p in range(1, 4):
        pdf.add_page()
        pdf.multi_cell(0, 8, "The on-call phone rota is kept in the red binder." if p == 3 else f"Page {p}: nothing here.")
    path = tmp_path / "handbook.pdf"
    pdf.output(str(path))
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7 not really")
    data = str(tmp_path / "data")
    res = kith("import", "--data-dir", data, "--chat-id", "-100123", "--user", "Anna", str(path), str(broken))
    assert res.exit_code == 1  # one document could not be read; the other was
    assert "handbook.pdf: read into chat -100123's memory (3 pages" in res.output and "broken.pdf" in res.output
    again = kith("import", "--data-dir", data, "--chat-id", "-100123", str(path))
    assert again.exit_code == 0 and "already in" in again.output
    found = kith("memory", "search", "--data-dir", data, "--json", "-k", "1", "--", "-100123", "where is the phone rota?")
    row = json.loads(found.stdout.splitlines()[0])
    assert (row["file"], row["page"], row["kind"]) == ("handbook.pdf", 3, "document")
    refused = kith("import", "--data-dir", data, str(path))
    assert refused.exit_code == 1 and "--chat-id" in refused.output


def test_a_multi_file_import_goes_on_after_a_bad_file_and_exits_non_zero(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": "not an export"}', encoding="utf-8")
    good = tmp_path / "chat.jsonl"
    good.write_text('{"chat_id": -100777, "message_id": 1, "date": "2024-01-01T10:00:00Z", "user": "ann", "text": "hi"}\n'
                    "{broken line\n", encoding="utf-8")
    res = kith("import", "--data-dir", str(tmp_path / "data"), str(bad), str(good))
    assert res.exit_code == 1
    assert "notes.json: not imported" in res.output
    assert "chat.jsonl: 1 messages in 1 chat(s)" in res.output and "1 bad line(s) skipped" in res.output


def test_sigterm_during_import_drains_what_was_read_and_exits_143(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import duckdb
    import lancedb

    data = tmp_path / "data"
    files = [str(DATA / "2009-03-03_10.jsonl"), str(DATA / "2011-05-29_19.jsonl"), str(DATA / "2016-12-19_20.jsonl")]
    proc = subprocess.Popen([sys.executable, "-m", "cli", "import", "--data-dir", str(data), *files],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait until the import is under way: memories are being written
        try:
            if lancedb.connect(str(data / "memory")).open_table("memories").count_rows() > 0:
                break
        except Exception:
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr.decode()
    assert b"SIGTERM: stopping" in stderr and b"stopped: everything read so far is stored" in stderr
    con = duckdb.connect(str(data / "kith.duckdb"), read_only=True)
    try:
        embeddable = con.execute("SELECT count(*) FROM messages WHERE role = 'user' AND trim(text) <> ''").fetchone()[0]
    finally:
        con.close()
    memories = lancedb.connect(str(data / "memory")).open_table("memories").count_rows()
    assert 0 < embeddable == memories  # every message stored before the stop is in memory too


def test_nothing_phones_home_or_writes_outside_the_data_dir(tmp_path, ov_encoder):
    """openvino-telemetry (an openvino dependency) would report to Google Analytics and write ~/intel/."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    lines = SLICE.read_text(encoding="utf-8").splitlines()[:20]
    transcript = tmp_path / "t.jsonl"
    transcript.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "cli", "import", "--data-dir", str(tmp_path / "data"), str(transcript)],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(home.iterdir()) == []  # no ~/intel, no caches in the user's home
    assert "fork" not in proc.stderr  # no telemetry process forked (lancedb warns on any fork)


def test_no_third_party_warnings_on_stderr_unless_verbose(imported, tmp_path):
    import subprocess
    import sys

    from config.loader import SHIPPED_SETTINGS

    # the torch backend loads transformers, whose model-config warnings used to reach the terminal
    cfg = tmp_path / "kith.yaml"
    text = SHIPPED_SETTINGS.read_text(encoding="utf-8")
    assert "embed_backend: openvino" in text
    cfg.write_text(text.replace("embed_backend: openvino", "embed_backend: torch", 1), encoding="utf-8")

    # (in-process CLI runs of other tests set TRANSFORMERS_VERBOSITY in this process: a user's shell has none)
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}

    def search(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "memory", "search", CHAT, "sound card", "-k", "1",
                               "--data-dir", str(imported), "--config", str(cfg), *extra],
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=180, env=env)

    quiet = search()
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = search("-v")
    assert loud.returncode == 0 and "[transformers]" in loud.stderr  # still there for whoever asks


def test_kith_tiers_lists_credit_packs_prices_and_what_a_spent_quota_does(tmp_path):
    tiers = (Path(__file__).parent.parent / "config" / "tiers.yaml").read_text(encoding="utf-8")
    tiers = tiers.replace("# credit_packs:", "credit_packs:").replace(
        "#   small: {credits: 100", "  small: {credits: 100").replace(
        "#   month: {credits: 300, price: 100, expires_days: 30}", "  month: {credits: 300, price: 100, expires_days: 30}")
    tiers = tiers.replace("# prices:", "prices:").replace("#   per_message: {\"*\": 1}", "  per_message: {\"*\": 1}").replace(
        "#   per_image: 5", "  per_image: 5")
    (tmp_path / "tiers.yaml").write_text(tiers, encoding="utf-8")
    (tmp_path / "kith.yaml").write_text("", encoding="utf-8")
    res = CliRunner().invoke(app, ["tiers", "--config", str(tmp_path / "kith.yaml")], env={"COLUMNS": "160"},
                             terminal_width=160)
    assert res.exit_code == 0, res.output
    assert "credit packs (/buy)" in res.output and "after 30 days" in res.output and "300" in res.output
    assert "per answer: any: 1" in res.output and "per image: 5" in res.output
    assert "when spent" in res.output and "refuse" in res.output and "pages/day" in res.output
