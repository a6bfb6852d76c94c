"""`kith chat`'s transport (actors/console.py) as a user meets it: numbered buttons pressed by typing
the number, Markdown on a terminal and plain text when piped, /export saved to the current directory,
sources in the interface language without internal ids — real stores in tmp_path, the real model."""
from __future__ import annotations

import io
import re
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from babel.dates import format_date
from rich.console import Console
from typer.testing import CliRunner

import i18n
from actors.events import Sender
from actors.outbox import Button
from actors.services import TurnReport
from cli import app
from config.models import Config, MemorySettings, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from memory.transcripts import read_transcript
from memory.types import MemoryHit
from tests.llm_server import llm_server
from transports.console import ConsoleChat, ConsoleOutbox, console_outbox, format_hit, hard_breaks, print_sources, save_new
from transports.local import LOCAL_ID_BASE

pytestmark = pytest.mark.anyio

ME = Sender(1, "you")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
INTERNAL_ID = re.compile(r"#\d{10,}")  # e.g. #1099511627779: a console message's id (>= 2**40)


def config(recent_window: int = 30) -> Config:
    models = {"recall": ModelSpec(model="kith/recall", label="Recall (offline)"), "other": ModelSpec(model="kith/recall", label="Other")}
    return Config(settings=Settings(models=models, memory=MemorySettings(recent_window=recent_window)), tiers=TiersConfig())


class Screen:
    """What the console printed (a StringIO behind a rich Console, as `kith chat`'s stdout)."""

    def __init__(self, terminal: bool) -> None:
        self.buf = io.StringIO()
        self.console = Console(file=self.buf, force_terminal=terminal, width=100, height=30, soft_wrap=True,
                               color_system="standard" if terminal else None)
        self.seen = 0

    def new(self) -> str:
        """Everything printed since the last call."""
        text = self.buf.getvalue()
        out, self.seen = text[self.seen:], len(text)
        return out


@asynccontextmanager
async def console_chat(tmp_path, st_model, *, terminal: bool = False, user: Sender = ME, cfg: Config | None = None, turns=None):
    screen = Screen(terminal)

    def on_turn(report) -> None:
        print_sources(screen.console, report)
        if turns is not None:
            turns.append(report)

    async with open_runtime(cfg or config(), tmp_path / "data", console_outbox(screen.console, "Kith", tmp_path / "photos"),
                            model=st_model, on_turn=on_turn) as rt:
        yield ConsoleChat(rt, chat_id=user.user_id, user=user), screen, rt


async def test_model_buttons_are_numbered_and_a_number_presses_one(tmp_path, st_model):
    turns: list = []
    async with console_chat(tmp_path, st_model, turns=turns) as (chat, screen, rt):
        await chat.send("/model")
        shown = screen.new()
        assert "  [1] ✓ Recall (offline)\n  [2] Other\n" in shown
        assert chat.prompt() == "[1-2] > " and [b.data for b in chat.buttons()] == ["model:recall", "model:other"]
        menu = rt.supervisor.outbox.keyboard(1)

        assert await chat.send("2")  # a ButtonPress for the menu's message: it is edited, the press answered
        shown = screen.new()
        assert "Kith (edited): Model set to **other**." in shown and "» Model: other" in shown
        assert rt.supervisor.outbox.answered[-1] == ("console-1", "Model: other")
        assert [m.text for m in rt.supervisor.outbox.sent if m.message_id == menu.message_id] == ["Model set to **other**."]

        assert not await chat.send("9")  # out of range: said, nothing sent
        assert "There is no button 9: type a number from 1 to 2, or write a message." in screen.new()

        await chat.send("which model answers now?")
        assert turns[-1].model == "other"
        assert chat.buttons() == () and chat.prompt() == "> "  # a message was sent since the menu came
        await chat.send("1")  # so a number is a message again
        assert "1" in [m.text for m in await rt.memory.store.messages.recent(1, 10)]
        assert rt.supervisor.outbox.answered[-1][0] == "console-1"  # no second press


async def test_language_buttons_then_history_in_russian(tmp_path, st_model):
    async with console_chat(tmp_path, st_model) as (chat, screen, _rt):
        await chat.send("my favourite editor is vim")
        await chat.send("/language")
        labels = [b.text for b in chat.buttons()]
        assert labels[0] == "✓ English" and "Русский" in labels
        assert f"[{labels.index('Русский') + 1}] Русский" in screen.new()
        await chat.send(str(labels.index("Русский") + 1))
        assert "Теперь я говорю с вами на языке: Русский." in screen.new()

        await chat.send("/history")
        shown = screen.new()
        today = datetime.now(UTC)
        assert "Последние 2 сообщения:" in shown  # the message and its reply (commands and presses are not stored)
        assert f"**{format_date(today, 'medium', locale='ru')}**" in shown  # «6 дек. 2026 г.»
        assert re.search(r"`\d\d:\d\d` \*\*you\*\*: my favourite editor is vim", shown)  # 24-hour time, as in Russia
        assert " AM" not in shown and " PM" not in shown

        assert not await chat.send("/file /nonexistent.pdf")  # the console's own notes speak the bot's language too
        assert "не отправлено: /nonexistent.pdf — не файл." in screen.new()


async def test_history_dates_follow_the_telegram_app_language(tmp_path, st_model):
    async with console_chat(tmp_path, st_model, user=Sender(1, "Иван", language_code="ru-RU")) as (chat, screen, _rt):
        await chat.send("привет всем")
        await chat.send("/history")
        shown = screen.new()
    assert "Последние 2 сообщения:" in shown and f"**{format_date(datetime.now(UTC), 'medium', locale='ru')}**" in shown
    assert re.search(r"`\d\d:\d\d` \*\*Иван\*\*: привет всем", shown)


async def test_reset_all_is_confirmed_by_typing_the_buttons_number(tmp_path, st_model):
    async with console_chat(tmp_path, st_model) as (chat, screen, rt):
        await chat.send("the wifi password is on the fridge")
        assert await rt.memory.store.messages.count(1) == 2  # the message and the reply
        await chat.send("/reset all")
        assert "  [1] Delete everything  [2] Cancel\n" in screen.new()
        await chat.send("2")
        assert "Cancelled: nothing was deleted." in screen.new() and await rt.memory.store.messages.count(1) == 2
        await chat.send("1")  # the same keyboard: its buttons stay until a message is sent
        shown = screen.new()
        assert "Kith (edited): Deleted 2 messages and their memories." in shown and "» Deleted" in shown
        assert await rt.memory.store.messages.count(1) == 0


async def test_a_url_button_prints_its_url_instead_of_pressing(tmp_path, st_model):
    async with console_chat(tmp_path, st_model) as (chat, screen, rt):
        box = rt.supervisor.outbox
        await chat.send("hello")
        await box.send_buttons(1, "Read the docs", [[Button("Docs", "https://example.org/kith"), Button("Thanks", "noop")]])
        assert "  [1] Docs https://example.org/kith  [2] Thanks\n" in screen.new()
        assert not await chat.send("1")
        assert "Docs: open https://example.org/kith" in screen.new() and box.answered == []
        assert await chat.send("2")  # a press the actor does not know: answered as expired
        assert "» This button has expired." in screen.new()


async def test_export_writes_a_new_file_in_the_current_directory_and_prints_its_path(tmp_path, st_model, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (cwd / "chat-1.jsonl").write_text("mine, keep it\n")
    async with console_chat(tmp_path, st_model) as (chat, screen, _rt):
        await chat.send("first message")
        await chat.send("/export")
        shown = screen.new()
        await chat.send("/export")
        again = screen.new()
    assert (cwd / "chat-1.jsonl").read_text() == "mine, keep it\n"  # never overwritten
    assert "2 messages (JSONL, one message per line)" in shown and f"(saved to {cwd / 'chat-1-1.jsonl'})" in shown
    assert f"(saved to {cwd / 'chat-1-2.jsonl'})" in again
    msgs = [m for m in read_transcript(cwd / "chat-1-1.jsonl") if hasattr(m, "chat_id")]
    assert next(m.text for m in msgs) == "first message" and len(msgs) == 2


def test_save_new_keeps_names_inside_the_directory(tmp_path):
    assert save_new(tmp_path, "../../etc/passwd", b"x") == tmp_path / "passwd"
    assert save_new(tmp_path, "..", b"x") == tmp_path / "document"
    assert save_new(tmp_path, "report.tar.gz", b"1").name == "report.tar.gz"
    assert save_new(tmp_path, "report.tar.gz", b"2").name == "report.tar-1.gz"
    assert save_new(tmp_path, "README", b"1").name == "README" and save_new(tmp_path, "README", b"2").name == "README-1"


def test_kith_chat_with_piped_stdin_presses_buttons_and_saves_the_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["chat", "--data-dir", str(tmp_path / "data")], input="/model\n1\nhello\n/export\n")
    assert res.exit_code == 0, res.output
    assert "[1] ✓" in res.stdout and "\x1b" not in res.stdout  # piped: plain text
    assert "Kith (edited): Model set to **recall**." in res.stdout  # the default config has one model
    assert f"(saved to {tmp_path / 'chat-1.jsonl'})" in res.stdout and (tmp_path / "chat-1.jsonl").is_file()


async def test_markdown_is_rendered_on_a_terminal_and_plain_when_piped(tmp_path, st_model):
    async with console_chat(tmp_path / "piped", st_model) as (chat, screen, rt):
        await chat.send("/model")
        piped = screen.new()
    assert "Current model: **recall**. Choose one:" in piped and "\x1b" not in piped

    async with console_chat(tmp_path / "tty", st_model, terminal=True) as (chat, screen, _rt):
        await chat.send("/model")
        tty = screen.new()
    assert "**" not in tty and "\x1b[1mrecall\x1b[0m" in tty  # bold, without the asterisks
    plain = ANSI.sub("", tty)
    assert re.search(r"Kith: Current model: recall\. Choose one:", plain)
    assert "[1] ✓ Recall (offline)" in plain


async def test_a_streamed_reply_on_a_terminal_is_erased_progress_then_rendered_once(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    models = {"ok": ModelSpec(model="openai/ok-model", api_base=llm_server.base_url)}
    cfg = Config(settings=Settings(models=models, default_model="ok"), tiers=TiersConfig())
    async with console_chat(tmp_path / "tty", st_model, terminal=True, cfg=cfg) as (chat, screen, rt):
        await chat.send("please say **loud** words")
        tty = screen.new()
    # the progress (plain, as streamed) is drawn and erased; after the last erase, the reply rendered once
    assert "\x1b[2K" in tty
    final = tty[tty.rindex("\x1b[2K"):]
    assert "**" not in final and "\x1b[1mloud\x1b[0m" in final and ANSI.sub("", final).count("loud") == 1
    async with console_chat(tmp_path / "piped", st_model, cfg=cfg) as (chat, screen, _rt):
        await chat.send("please say **loud** words")
        piped = screen.new()
    assert "\x1b" not in piped and "**loud**" in piped and piped.count("loud") == 1  # streamed as today


def test_hard_breaks_keep_the_lines_of_a_message_but_not_inside_code():
    text = "one\ntwo\n\npara\n```\ncode\nmore\n```\nend"
    assert hard_breaks(text) == "one  \ntwo\n\npara\n```\ncode\nmore\n```\nend"


def hit(message_id: int, **kw) -> MemoryHit:
    return MemoryHit(1, message_id, 1, "Ann", "the router is in the attic", datetime(2026, 3, 14, 15, 9, tzinfo=UTC), 0.0312, **kw)


def test_format_hit_cites_by_who_when_and_file_page_never_by_internal_id():
    console_msg = format_hit(hit(LOCAL_ID_BASE + 3)).replace("\u202f", " ")  # CLDR: a narrow no-break space before PM
    assert console_msg == "3/14/26, 3:09 PM Ann (score 0.031): the router is in the attic"
    assert format_hit(hit(1234)).replace("\u202f", " ").startswith("#1234 3/14/26, 3:09 PM Ann")  # Telegram's / a transcript's id: findable there
    assert "#" not in format_hit(hit(-(2**40) + 5))  # a migrated group's shifted id
    doc = format_hit(hit(2**61 + 7, source="report.pdf", page=7, parent=LOCAL_ID_BASE + 9, kind="document"))
    assert "[report.pdf, p. 7]" in doc and "#" not in doc
    with i18n.use("ru"):
        ru = format_hit(hit(2**61 + 7, source="report.pdf", page=7, parent=12))
    assert ru == "14.03.2026, 15:09 Ann [report.pdf, с. 7] (оценка 0,031): the router is in the attic"


async def test_sources_say_how_many_memories_in_english_and_russian_without_internal_ids(tmp_path, st_model):
    async with console_chat(tmp_path, st_model, cfg=config(recent_window=2)) as (chat, screen, rt):
        for line in ("the wifi router is in the attic", "the printer needs toner", "lunch is at noon on fridays",
                     "the spare keys are under the mat"):
            await chat.send(line)
        await rt.memory.flush()  # embedded and searchable (a person types slower than a test)
        await chat.send("where is the wifi router?")
        shown = screen.new()
        hits = (await rt.memory.recall(1, "where is the router, the printer, lunch and the keys?", 5)).hits
    assert re.search(r"recalled \d+ memor(y|ies):", shown) and "the wifi router is in the attic" in shown
    assert min(h.message_id for h in hits) >= LOCAL_ID_BASE  # the console's own ids …
    assert not INTERNAL_ID.search(shown)  # … are never printed

    def sources(n: int, lang: str) -> str:  # a report with n of those hits (repeated: only the count matters)
        out = io.StringIO()
        with i18n.use(lang):
            print_sources(Console(file=out, width=200), TurnReport(1, 1, True, 1.0, hits=tuple((hits * 21)[:n])))
        return out.getvalue()

    assert hits
    assert "recalled 1 memory:" in sources(1, "en") and "recalled 2 memories:" in sources(2, "en")
    assert "recalled 21 memories:" in sources(21, "en")
    assert "из памяти 1 запись:" in sources(1, "ru") and "из памяти 21 запись:" in sources(21, "ru")
    assert "из памяти 2 записи:" in sources(2, "ru")
    assert "из памяти 5 записей:" in sources(5, "ru")
    assert not INTERNAL_ID.search(sources(5, "ru"))


async def test_the_console_outbox_records_like_a_local_outbox(tmp_path):
    from transports.local import IdAllocator

    async def none(_chat):
        return None

    screen = Screen(False)
    box = ConsoleOutbox(IdAllocator(none), screen.console, document_dir=tmp_path)
    await box.send(1, "hi")
    menu = await box.send_buttons(1, "pick", [[Button("a", "x:a")], [Button("b", "x:b")]])
    await box.send(1, "after")
    assert box.keyboard(1).message_id == menu.message_id  # the latest message *with buttons*
    await box.edit(1, menu.message_id, "picked")
    assert box.keyboard(1).text == "picked" and [b.text for b in box.keyboard(1).flat_buttons()] == ["a", "b"]
    assert "  [1] a\n  [2] b\n" in screen.new()
