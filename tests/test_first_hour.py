"""The first hour on the shipped defaults: what a new user runs first works as the README says.

Everything here runs on the shipped ``config/`` (no ``--config``): the demo answers its questions
from the messages that hold the answers, and an imported chat keeps its whole memory on the free tier.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from actors.console import chat_turns, console_outbox
from actors.events import Sender
from actors.runtime import open_runtime
from cli import app
from config import load_config
from memory.importer import import_transcript
from memory.types import ROLE_USER

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

    out = Console(file=open(tmp_path / "out.txt", "w"), width=120)  # noqa: SIM115 - closed with the runtime below
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
            said = [m async for batch in rt.memory.store.iter_messages(chat_id) for m in batch
                    if m.role == ROLE_USER and m.text.strip()]
            assert len(said) >= 1000
            assert await rt.memory.vectors.count(chat_id) == len(said), chat_id  # memories = messages
        assert await rt.memory.store.cleanups() == []
    out.file.close()
