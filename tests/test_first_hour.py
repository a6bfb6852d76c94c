"""The first hour on the shipped defaults: what a new user runs first works as the README says.

Everything here runs on the shipped ``config/`` (no ``--config``): the demo answers its questions
from the messages that hold the answers, and an imported chat keeps its whole memory on the free tier.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from actors.events import Sender
from cli import app
from config import load_config
from features.app import open_runtime
from memory.importer import import_transcript
from memory.types import ROLE_USER
from transports.console import chat_turns, console_outbox

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "ubuntu-irc"

# The demo's questions (examples/ubuntu-questions.txt) and, for each, texts of the messages of the
# 2009-03-03 #ubuntu slice that answer it: the answer must quote one of them.
ANSWERS = {
    "Python.h": ("apt-file search Python.h", "python-dev is what provides the python development headers",
                 "try python2.5-dev"),
    "filesystem": ("fat32 if you're going to use it on linux and windows",),
    "SMTP": ("smtp.skynet.co.uk", "relay.skynet.be"),
    "Jaunty": ("Jaunty Jackalope is the code for Ubuntu 9.04",),
    "sed": ("Then give that variable to sed", 'sed -e "s/$regex/$var/"', "sed -i 's/searchforthis/$var/g'"),
}


def test_the_demo_answers_each_question_with_the_message_that_holds_the_answer(tmp_path, ov_encoder):
    questions = (REPO / "examples" / "ubuntu-questions.txt").read_text(encoding="utf-8").split("\n")
    questions = [q for q in questions if q.strip()]
    res = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "demo"), str(DATA / "2009-03-03_10.jsonl"),
                                   "--questions", str(REPO / "examples" / "ubuntu-questions.txt")])
    assert res.exit_code == 0, res.output
    answers = res.stdout.split("demo: ")[1:]
    assert len(answers) == len(questions) == len(ANSWERS)
    for block, (key, texts) in zip(answers, ANSWERS.items()):
        question, _, rest = block.partition("\n")
        assert key in question
        reply = rest.split("recalled ")[0]  # the quotes, not the list of recalled memories under them
        assert any(t in reply for t in texts), f"{question}: none of {texts} quoted in\n{reply}"


@pytest.mark.anyio
async def test_an_imported_chat_keeps_its_whole_memory_on_the_free_tier(tmp_path, st_model):
    """3,000 real #ubuntu lines imported, then 20 questions by a free member: nothing is cleaned up."""
    config = load_config(None)  # the shipped kith.yaml and tiers.yaml
    assert config.tiers.default_tier == "free"
    slices = sorted(DATA.glob("*.jsonl"))[:3]
    from rich.console import Console

    out = Console(file=open(tmp_path / "out.txt", "w"), width=120)
    async with open_runtime(config, tmp_path / "data", console_outbox(out, "Kith"), model=st_model) as rt:
        chats = set()
        for path in slices:
            report = await import_transcript(rt.memory, path)
            chats |= report.chats
        questions = [f"what did people say about question number {i}: sound, wifi, grub, apt, python?" for i in range(20)]
        for chat_id in sorted(chats):
            await chat_turns(rt, questions, chat_id=chat_id, user=Sender(42, "newcomer"))
        await rt.supervisor.wait_all_idle()
        await rt.services.janitor.wait_idle()
        await rt.memory.flush()
        for chat_id in chats:
            said = [m async for batch in rt.memory.store.messages.iter(chat_id) for m in batch
                    if m.role == ROLE_USER and m.text.strip()]
            assert len(said) >= 1000
            assert await rt.memory.vectors.count(chat_id) == len(said), chat_id  # memories = messages
        assert await rt.memory.store.index.cleanups() == []
    out.file.close()


# ---------------------------------------------------------------- kith chat -f, with no setup at all


def _pdf(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    for page in range(1, 11):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        text = f"Page {page} of the annual report. " + "The committee reviewed routine matters across the regional offices. " * 5
        if page == 7:
            text += "The 2027 infrastructure budget of 4.2 million euros was signed off by Margaret Okonkwo on 14 March."
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def _docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.add_heading("Team notes", 1)
    d.add_paragraph("The offsite is planned for the second week of May in Tallinn.")
    d.save(str(path))
    return path


def _png(path: Path) -> Path:
    from tests.test_ocr import encode, render

    path.write_bytes(encode(render(["Router password", "blue-falcon-42"]), "PNG"))
    return path


def _ogg(path: Path) -> Path:
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    av = pytest.importorskip("av")
    wav = path.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), "What did we decide about the sound card driver?"],
                   check=True, capture_output=True, timeout=60)
    with av.open(str(wav)) as src, av.open(str(path), "w", format="ogg") as dst:
        stream = dst.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in [*src.decode(audio=0), None]:
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return path


def test_the_readmes_file_examples_work_with_no_setup(tmp_path, ov_encoder, monkeypatch):
    """`kith chat -f FILE -m …` on the shipped config: the host at the terminal is an owner, so
    documents, photos and voice notes are read (not refused as a free member's), and each gets feedback."""
    from providers import ocr

    monkeypatch.chdir(tmp_path)
    data = str(tmp_path / "data")

    def chat(*args: str) -> str:
        res = CliRunner().invoke(app, ["chat", "--data-dir", data, *args])
        assert res.exit_code == 0, res.output
        assert "free tier" not in res.stdout and "/billing" not in res.stdout, res.stdout  # never refused
        return res.stdout

    said = chat("-f", str(_pdf(tmp_path / "report.pdf")), "-m", "who signed off the infrastructure budget?")
    assert "report.pdf: 10 pages, 10 parts kept in this chat's memory" in said
    assert "Margaret Okonkwo" in said.split("recalled")[0]  # the quote reaches the fact on page 7
    said = chat("-f", str(_docx(tmp_path / "notes.docx")))
    assert "notes.docx:" in said and "kept in this chat's memory" in said and "I don't have anything" not in said
    if ocr.available():
        said = chat("-f", str(_png(tmp_path / "router.png")))
        assert "read the text in the picture" in said and "blue-falcon-42" in said
    said = chat("-f", str(_ogg(tmp_path / "note.ogg")))
    transcript = said.split("🎤 “", 1)[1].split("”", 1)[0].lower()
    assert "sound card" in transcript  # shown as Telegram shows a transcript, then answered: it asks something
    assert said.count("Kith:") == 2


def test_kith_chat_as_a_member_gets_that_members_tier(tmp_path, ov_encoder):
    data = str(tmp_path / "data")
    res = CliRunner().invoke(app, ["chat", "--data-dir", data, "--as", "777", "-f", str(_docx(tmp_path / "notes.docx"))])
    assert res.exit_code == 0, res.output
    assert "free tier" in res.stdout and "notes.docx:" not in res.stdout  # a free member: documents are premium
    res = CliRunner().invoke(app, ["chat", "--data-dir", data, "-m", "/admin"])
    assert "Admin overview" in res.stdout  # the host is an owner
    res = CliRunner().invoke(app, ["chat", "--data-dir", data, "--as", "777", "-m", "/admin"])
    assert "Admin overview" not in res.stdout


# ---------------------------------------------------------------- the small things a user met


def test_settings_and_memory_read_right_in_russian(tmp_path, ov_encoder):
    data = str(tmp_path / "data")
    res = CliRunner().invoke(app, ["chat", "--data-dir", data, "--chat-id", "-100500", "--lang", "ru"],
                             input="привет всем\n/settings\n/memory\n")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for english in ("(default)", "(none)", "(each member their own)", "(everyone)", "admins (who"):
        assert english not in out, english
    assert "(по умолчанию)" in out and "(нет)" in out and "администраторы" in out
    assert "Сохранение: включено." in out and ".." not in out.replace("...", "")


def test_import_takes_the_documents_it_can_and_exits_1_naming_the_rest(tmp_path, ov_encoder):
    (tmp_path / "a.txt").write_text("The spare key is under the blue flower pot.", encoding="utf-8")
    (tmp_path / "x.bin").write_bytes(b"\x00\x01binary")
    data = str(tmp_path / "data")
    res = CliRunner().invoke(app, ["import", str(tmp_path / "a.txt"), str(tmp_path / "x.bin"), "--chat-id", "-5",
                                   "--data-dir", data])
    assert res.exit_code == 1
    assert "a.txt: read into chat -5's memory" in res.stdout and "skipped" in res.output and "x.bin" in res.output
    found = CliRunner().invoke(app, ["memory", "search", "--data-dir", data, "--json", "--", "-5", "spare key"])
    assert "blue flower pot" in found.stdout


def test_doctor_on_a_mistyped_data_dir_says_so_and_creates_nothing(tmp_path):
    typo = tmp_path / "dtaa"
    res = CliRunner().invoke(app, ["doctor", "--data-dir", str(typo)])
    assert res.exit_code == 1 and "does not exist" in res.stdout and not typo.exists()


def test_usage_keeps_whole_chat_ids_at_80_columns(tmp_path, ov_encoder):
    data = str(tmp_path / "data")
    CliRunner().invoke(app, ["chat", "--data-dir", data, "--chat-id", "-1002009030310", "-m", "hello there"])
    for args in (["usage", "--by", "chat"], ["memory", "stats"]):
        res = CliRunner().invoke(app, [*args, "--data-dir", data], env={"COLUMNS": "80"}, terminal_width=80)
        assert res.exit_code == 0, res.output
        assert "-1002009030310" in res.stdout and max(map(len, res.stdout.splitlines())) <= 80, res.stdout


@pytest.mark.parametrize("command", [["chat", "-m", "hi"], ["replay", str(DATA / "2009-03-03_10.jsonl")]])
def test_a_data_dir_in_use_is_said_before_the_model_loads(tmp_path, command):
    import subprocess
    import sys

    data = tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(data / "kith.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli", *command, "--data-dir", str(data)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
    assert proc.returncode == 1 and f"is in use by process {holder.pid}" in proc.stderr, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "openvino", "litellm", "lancedb"}  # said before any of them loads
