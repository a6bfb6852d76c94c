"""The console transport: ``kith chat`` talks to the same pipeline as Telegram, in a terminal."""
from __future__ import annotations

import mimetypes
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import anyio

from rich.console import Console
from rich.markup import escape

from memory.types import MemoryHit

from .errors import MediaUnavailable
from .events import PRIVATE, CommandEvent, Incoming, Media, Sender
from .local import IdAllocator, LocalOutbox, OutMessage
from .runtime import Runtime
from .services import TurnReport


class ConsoleOutbox(LocalOutbox):
    """Prints the bot's replies as they stream; ``name`` prefixes each reply. Photos the bot sends
    are saved under ``photo_dir`` (when given) and their path printed."""

    def __init__(self, ids: IdAllocator, console: Console, name: str = "Kith", photo_dir: Path | None = None) -> None:
        super().__init__(ids)
        self.console = console
        self.name = name
        self.photo_dir = photo_dir
        self._streaming = False

    async def send_photo(self, chat_id: int, data: bytes, *, caption: str | None = None, reply_to: int | None = None,
                         thread_id: int | None = None):
        sent = await super().send_photo(chat_id, data, caption=caption, reply_to=reply_to, thread_id=thread_id)
        if self.photo_dir is not None:
            from providers.images import sniff_image_type

            ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}.get(sniff_image_type(data) or "", "bin")
            path = self.photo_dir / f"photo-{chat_id}-{sent.message_id}.{ext}"
            await anyio.Path(self.photo_dir).mkdir(parents=True, exist_ok=True)
            await anyio.Path(path).write_bytes(data)
            self.console.print(f"[dim]  (photo saved to {escape(str(path))})[/]")
        return sent

    async def on_notice(self, text: str) -> None:
        """A line from the console itself (not from the bot)."""
        self.console.print(f"[yellow]{escape(text)}[/]")

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
    """One line naming a recalled memory: id, date (UTC), speaker, score and the text (shortened); a
    document's chunk names the file message's id and the source (``[report.pdf, p. 7]``)."""
    text = " ".join(hit.text.split())
    if len(text) > 140:
        text = text[:139] + "…"
    if hit.citation:
        return f"#{hit.parent} {hit.date:%Y-%m-%d %H:%M} {hit.user_name} [{hit.citation}] (score {hit.score:.3f}): {text}"
    return f"#{hit.message_id} {hit.date:%Y-%m-%d %H:%M} {hit.user_name} (score {hit.score:.3f}): {text}"


def print_sources(console: Console, report: TurnReport) -> None:
    """Print which memories a reply used (who, when, score)."""
    if report.responded and report.hits:
        console.print(f"[dim]  recalled {len(report.hits)} memories:[/]")
        for hit in report.hits:
            console.print(f"[dim]  · {escape(format_hit(hit))}[/]")


def console_outbox(console: Console, name: str, photo_dir: Path | None = None):
    """An outbox factory for ``open_runtime``: a ConsoleOutbox numbering messages after the stored ones."""
    return lambda memory: ConsoleOutbox(IdAllocator(memory.store.max_message_id), console, name, photo_dir)


AUDIO_SUFFIXES = {".ogg": "voice", ".oga": "voice", ".opus": "voice"}


def local_media(path: Path) -> Media:
    """A local file as ``Media`` (kind from its type: image → photo, .ogg/.opus → voice, other audio →
    audio, anything else → document), with a download handle that reads it. raises OSError."""
    size = path.stat().st_size
    mime = mimetypes.guess_type(path.name)[0]
    kind = AUDIO_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        if mime in ("image/jpeg", "image/png", "image/webp"):
            kind = "photo"
        elif mime and mime.startswith("audio/"):
            kind = "audio"
        elif mime and mime.startswith("video/"):
            kind = "video"
        else:
            kind = "document"

    async def download() -> bytes:
        try:
            return await anyio.Path(path).read_bytes()
        except OSError as exc:
            raise MediaUnavailable(f"cannot read {path}: {exc}") from exc

    name = path.name if kind in ("document", "audio", "video") else None
    return Media(kind, mime, size, name, None, None, download)


def file_line(text: str) -> tuple[Path, str] | None:
    """``/file PATH [caption]`` → (PATH, caption); None for any other line. A path with spaces is
    quoted: ``/file "my report.pdf" what is on page 3?``."""
    if text != "/file" and not text.startswith("/file "):
        return None
    rest = text[len("/file"):].strip()
    if rest[:1] in ('"', "'") and rest.find(rest[0], 1) > 0:
        end = rest.find(rest[0], 1)
        return Path(os.path.expanduser(rest[1:end])), rest[end + 1:].strip()
    path, _, caption = rest.partition(" ")
    return Path(os.path.expanduser(path)), caption.strip()  # "~nobody/x" stays as written


def rest_is_file(path: Path) -> bool:
    return str(path) not in ("", ".") and path.is_file()


async def chat_turns(
    rt: Runtime,
    lines: AsyncIterator[str] | Iterable[str],
    *,
    chat_id: int,
    user: Sender,
    chat_title: str | None = None,
) -> int:
    """Send each line as a message of ``user`` in ``chat_id`` and wait for the bot's answer.

    Lines starting with ``/`` are commands; ``/file PATH [caption]`` sends a file (a photo, a
    document, a voice note) as Telegram would. In a group chat id (negative) the console user is
    always addressing the bot. Returns the number of messages sent.
    """
    sup = rt.supervisor
    box = sup.outbox
    assert isinstance(box, LocalOutbox), "the console talks through a LocalOutbox"
    ids = box.ids  # user messages and replies share one id sequence
    chat_type = PRIVATE if chat_id > 0 else "supergroup"
    n = 0

    async def one(text: str) -> None:
        nonlocal n
        text = text.strip()
        if not text:
            return
        message_id = await ids.next(chat_id)
        date = rt.services.clock()
        attached = file_line(text)
        if attached is not None:
            path, caption = attached
            if not rest_is_file(path):
                await box.on_notice(f"not sent: {path} is not a file. Usage: /file PATH [caption]")
                return
            try:
                media = local_media(path)
            except OSError as exc:
                await box.on_notice(f"not sent: cannot read {path}: {exc.strerror or exc}")
                return
            ev: Incoming | CommandEvent = Incoming(chat_id, chat_type, message_id, user, caption, date, chat_title=chat_title,
                                                   respond=True, media=media)
        elif text.startswith("/") and len(text) > 1:
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
