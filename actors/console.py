"""The console transport: ``kith chat`` talks to the same pipeline as Telegram, in a terminal."""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from rich.console import Console
from rich.markup import escape

from memory.types import MemoryHit

from .events import PRIVATE, CommandEvent, Incoming, Sender
from .local import IdAllocator, LocalOutbox, OutMessage
from .runtime import Runtime
from .services import TurnReport


class ConsoleOutbox(LocalOutbox):
    """Prints the bot's replies as they stream; ``name`` prefixes each reply."""

    def __init__(self, ids: IdAllocator, console: Console, name: str = "Kith") -> None:
        super().__init__(ids)
        self.console = console
        self.name = name
        self._streaming = False

    async def on_progress(self, chat_id: int, delta: str) -> None:
        if not self._streaming:
            self.console.print(f"[bold cyan]{escape(self.name)}:[/] ", end="")
            self._streaming = True
        self.console.out(delta, end="", highlight=False)

    async def on_message(self, msg: OutMessage, streamed_rest: str | None) -> None:
        if self._streaming and streamed_rest is not None:
            self.console.out(streamed_rest, highlight=False)
        else:
            if self._streaming:
                self.console.out("")
            self.console.print(f"[bold cyan]{escape(self.name)}:[/] ", end="")
            self.console.out(msg.text, highlight=False)
            for row in msg.buttons:
                self.console.print("  " + "  ".join(f"[reverse] {escape(b.text)} [/]" for b in row))
        self._streaming = False


def format_hit(hit: MemoryHit) -> str:
    """One line naming a recalled memory: id, date (UTC), speaker, score and the text (shortened)."""
    text = " ".join(hit.text.split())
    if len(text) > 140:
        text = text[:139] + "…"
    return f"#{hit.message_id} {hit.date:%Y-%m-%d %H:%M} {hit.user_name} (score {hit.score:.3f}): {text}"


def print_sources(console: Console, report: TurnReport) -> None:
    """Print which memories a reply used (who, when, score)."""
    if report.responded and report.hits:
        console.print(f"[dim]  recalled {len(report.hits)} memories:[/]")
        for hit in report.hits:
            console.print(f"[dim]  · {escape(format_hit(hit))}[/]")


def console_outbox(console: Console, name: str):
    """An outbox factory for ``open_runtime``: a ConsoleOutbox numbering messages after the stored ones."""
    return lambda memory: ConsoleOutbox(IdAllocator(memory.store.max_message_id), console, name)


async def chat_turns(
    rt: Runtime,
    lines: AsyncIterator[str] | Iterable[str],
    *,
    chat_id: int,
    user: Sender,
    chat_title: str | None = None,
) -> int:
    """Send each line as a message of ``user`` in ``chat_id`` and wait for the bot's answer.

    Lines starting with ``/`` are commands. In a group chat id (negative) the console user is
    always addressing the bot. Returns the number of messages sent.
    """
    sup = rt.supervisor
    ids = sup.outbox.ids  # a LocalOutbox: user messages and replies share one id sequence
    chat_type = PRIVATE if chat_id > 0 else "supergroup"
    n = 0

    async def one(text: str) -> None:
        nonlocal n
        text = text.strip()
        if not text:
            return
        message_id = await ids.next(chat_id)
        date = rt.services.clock()
        if text.startswith("/") and len(text) > 1:
            cmd, _, args = text[1:].partition(" ")
            ev = CommandEvent(chat_id, chat_type, message_id, user, cmd.split("@")[0].lower(), args.strip(), date, chat_title=chat_title)
        else:
            ev = Incoming(chat_id, chat_type, message_id, user, text, date, chat_title=chat_title, respond=True)
        await sup.tell(chat_id, ev)
        await sup.wait_idle(chat_id)
        n += 1

    if hasattr(lines, "__aiter__"):
        async for line in lines:  # type: ignore[union-attr]
            await one(line)
    else:
        for line in lines:  # type: ignore[union-attr]
            await one(line)
    return n
