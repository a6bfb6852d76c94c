"""The console transport: ``kith chat`` talks to the same pipeline as Telegram, in a terminal.

What Telegram shows, the console shows as text: replies are Markdown rendered by rich on a terminal
(plain text when stdout is piped, so scripts read what the bot wrote); inline buttons are listed
with numbers and pressed by typing the number (``ConsoleChat``); toasts are printed as notes;
documents are saved to the current directory and photos under the data dir, their paths printed.
"""
from __future__ import annotations

import itertools
import mimetypes
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

import anyio
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

import i18n
from actors.errors import MediaUnavailable
from actors.events import PRIVATE, ButtonPress, CommandEvent, Incoming, Media, Sender
from actors.outbox import Button
from actors.runtime import Runtime
from actors.services import TurnReport
from i18n import _, ngettext
from memory.types import MemoryHit

from .local import LOCAL_ID_BASE, IdAllocator, LocalOutbox, OutMessage

__all__ = [
    "AUDIO_SUFFIXES",
    "REFRESH_S",
    "ConsoleChat",
    "ConsoleOutbox",
    "button_url",
    "chat_turns",
    "console_outbox",
    "file_line",
    "format_hit",
    "hard_breaks",
    "local_media",
    "print_sources",
    "rest_is_file",
    "save_new",
]

REFRESH_S = 0.05  # a streamed reply's progress on a terminal is redrawn at most this often


class ConsoleOutbox(LocalOutbox):
    """Prints the bot's messages; ``name`` prefixes each. On a terminal (``console.is_terminal``) a
    message is rendered as Markdown, and a streamed reply shows its latest lines while it is written,
    then the whole reply rendered once (the progress is erased: nothing is printed twice); piped, the
    text is printed as the bot wrote it, streamed pieces as they come.

    Buttons are listed numbered (``[1] GPT-4o mini  [2] Recall (offline)``) in
    ``OutMessage.flat_buttons`` order; ``ConsoleChat`` turns a typed number into the press.
    Documents the bot sends are saved in ``document_dir`` (None: the current directory), never over
    an existing file; photos under ``photo_dir`` (when given); each path is printed."""

    def __init__(self, ids: IdAllocator, console: Console, name: str = "Kith", photo_dir: Path | None = None,
                 document_dir: Path | None = None) -> None:
        super().__init__(ids)
        self.console = console
        self.name = name
        self.photo_dir = photo_dir
        self.document_dir = document_dir
        self._streaming = False  # piped: a reply's pieces are being printed on the current line
        self._streamed = ""  # terminal: the reply written so far, shown by _live
        self._live: Live | None = None
        self._refreshed = 0.0
        self._hinted = False  # the first keyboard says how to press a button

    @property
    def rich(self) -> bool:
        """Whether messages are rendered (Markdown, styles): stdout is a terminal."""
        return self.console.is_terminal

    # ------------------------------------------------------------------ what the bot sends

    async def send_photo(self, chat_id: int, data: bytes, *, caption: str | None = None, reply_to: int | None = None,
                         thread_id: int | None = None):
        sent = await super().send_photo(chat_id, data, caption=caption, reply_to=reply_to, thread_id=thread_id)
        if self.photo_dir is not None:
            # deferred: imports litellm (~2 s); `kith memory search` uses this module without it
            from providers.images import sniff_image_type

            ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}.get(sniff_image_type(data) or "", "bin")
            path = self.photo_dir / f"photo-{chat_id}-{sent.message_id}.{ext}"
            await anyio.Path(self.photo_dir).mkdir(parents=True, exist_ok=True)
            await anyio.Path(path).write_bytes(data)
            self._note(_("(photo saved to {path})", path=str(path)))
        return sent

    async def send_document(self, chat_id: int, filename: str, data: bytes, *, caption: str | None = None,
                            reply_to: int | None = None, thread_id: int | None = None):
        """The message (its caption), then the file saved as ``filename`` in the document directory
        (``name-1.ext``, ``name-2.ext``… when taken) and its path — or why it could not be saved."""
        directory = self.document_dir if self.document_dir is not None else Path(await anyio.Path.cwd())
        try:
            path: Path | None = await anyio.to_thread.run_sync(save_new, directory, filename, data)
            problem = ""
        except OSError as exc:
            path, problem = None, exc.strerror or str(exc)
        sent = await super().send_document(chat_id, filename, data, caption=caption, reply_to=reply_to, thread_id=thread_id)
        if path is not None:
            self._note(_("(saved to {path})", path=str(path)))
        else:
            self._note(_("(not saved: cannot write {file} in {directory}: {problem})", file=filename, directory=str(directory),
                         problem=problem), style="yellow")
        return sent

    # ------------------------------------------------------------------ display hooks

    async def on_notice(self, text: str) -> None:
        """A line from the console itself (not from the bot)."""
        self._end_stream()
        self.console.print(Text(text, style="yellow"))

    async def on_answer(self, text: str, alert: bool) -> None:
        """A button press's toast (or alert), as a note under the conversation."""
        self._end_stream()
        self.console.print(Text("  " + ("⚠ " if alert else "» ") + text, style="bold yellow" if alert else "yellow"))

    async def on_idle(self) -> None:
        self._end_stream()

    async def on_progress(self, chat_id: int, delta: str) -> None:
        if not self.rich:
            if not self._streaming:
                self.console.print(f"[bold cyan]{escape(self.name)}:[/] ", end="")
                self._streaming = True
            self.console.out(delta, end="", highlight=False)
            return
        self._streamed += delta
        if self._live is None:
            self._live = Live(console=self.console, auto_refresh=False, transient=True)
            self._live.start()
            self._refreshed = 0.0
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            tail = _Tail(Text.assemble((f"{self.name}: ", "bold cyan"), self._streamed), max(1, self.console.size.height - 2))
            self._live.update(tail, refresh=True)

    async def on_message(self, msg: OutMessage, streamed_rest: str | None) -> None:
        if not self.rich and self._streaming and streamed_rest is not None:
            self.console.out(streamed_rest, highlight=False)  # the end of the reply printed as it streamed
            self._streaming = False
        else:
            self._end_stream()
            self._say(f"{self.name}:", msg.text)
        if msg.buttons:
            self._show_buttons(msg)

    async def on_edit(self, msg: OutMessage) -> None:
        """An edited message (e.g. after a button press) is printed again, marked; its buttons keep
        their numbers and are not listed again."""
        self._end_stream()
        self._say(_("{name} (edited):", name=self.name), msg.text)

    # ------------------------------------------------------------------ printing

    def _say(self, label: str, text: str) -> None:
        if not self.rich:
            self.console.print(f"[bold cyan]{escape(label)}[/] ", end="")
            self.console.out(text, highlight=False)
            return
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column()
        grid.add_row(Text(label, style="bold cyan"), Markdown(hard_breaks(text)))
        self.console.print(grid, soft_wrap=False)

    def _show_buttons(self, msg: OutMessage) -> None:
        number = itertools.count(1)
        for row in msg.buttons:
            line = Text("  ")
            for i, (button, n) in enumerate(zip(row, number, strict=False)):
                line.append("  " if i else "")
                line.append(f"[{n}]", style="bold")
                line.append(" " + button.text)
                if (url := button_url(button)) is not None:
                    line.append(f" {url}", style="underline")
            self.console.print(line)
        if not self._hinted:
            self._hinted = True
            self._note(_("(type a button's number to press it)"))

    def _note(self, text: str, style: str = "dim") -> None:
        self._end_stream()
        self.console.print(Text("  " + text, style=style))

    def _end_stream(self) -> None:
        """Whatever was being streamed stops being shown as progress (terminal: erased; piped: the line ends)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._streamed = ""
        if self._streaming:
            self.console.out("")
            self._streaming = False


class _Tail:
    """The last ``lines`` lines of ``text`` as wrapped at the console's width: a streamed reply's
    progress always fits the screen (rich's Live cannot redraw what scrolled off it)."""

    def __init__(self, text: Text, lines: int) -> None:
        self.text, self.lines = text, lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.text, options.update(height=None), pad=False)
        for i, line in enumerate(lines[-self.lines:]):
            if i:
                yield Segment.line()
            yield from line


_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def hard_breaks(text: str) -> str:
    """Markdown in which every line break is one (as Telegram shows a message): two spaces end each
    line followed by another non-blank line, outside code blocks (CommonMark would join them)."""
    lines = text.split("\n")
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced and line.strip() and i + 1 < len(lines) and lines[i + 1].strip() and not _FENCE.match(lines[i + 1]):
            lines[i] = line + "  "
    return "\n".join(lines)


def button_url(button: Button) -> str | None:
    """The URL a button opens (a ``url`` attribute, or data that is an http(s) URL), None for a
    button that calls back the bot."""
    url = getattr(button, "url", None) or button.data
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None


def save_new(directory: Path, filename: str, data: bytes) -> Path:
    """Write ``data`` to a new file in ``directory`` named as ``filename`` (its last part; a name
    that is only dots becomes ``document``), else ``name-1.ext``, ``name-2.ext``…: an existing file is
    never overwritten (exclusive creation, so two savers cannot take the same name). Returns the
    absolute path. raises OSError."""
    name = Path(filename.replace("\\", "/")).name.lstrip(".") or "document"
    stem, dot, suffix = name.rpartition(".") if "." in name else (name, "", "")
    directory = directory.resolve()
    for n in itertools.count():
        path = directory / (name if n == 0 else f"{stem}-{n}{dot}{suffix}")
        try:
            f = path.open("xb")
        except FileExistsError:
            continue
        with f:
            try:
                f.write(data)
            except OSError:
                path.unlink(missing_ok=True)
                raise
        return path
    raise AssertionError("unreachable")


def format_hit(hit: MemoryHit) -> str:
    """One line naming a recalled memory: when (in the interface language's locale), who, the score
    and the text (shortened). A document's part is cited by file and page (``[report.pdf, p. 7]``);
    a message keeps its id only when it is Telegram's or a transcript's (``#1234``, findable there),
    not the console's own (from ``LOCAL_ID_BASE`` on) nor a migrated group's shifted one."""
    text = " ".join(hit.text.split())
    if len(text) > 140:
        text = text[:139] + "…"
    head = f"{i18n.datetime_(hit.date)} {hit.user_name}"
    if hit.source:
        citation = _("{file}, p. {page}", file=hit.source, page=hit.page) if hit.page else hit.source
        head += f" [{citation}]"
    elif 0 < hit.message_id < LOCAL_ID_BASE:
        head = f"#{hit.message_id} {head}"
    score = _("(score {score})", score=i18n.number(hit.score, digits=3))
    return f"{head} {score}: {text}"


def print_sources(console: Console, report: TurnReport) -> None:
    """Print which memories a reply used (who, when, score)."""
    if report.responded and report.hits:
        n = len(report.hits)
        console.print(Text("  " + ngettext("recalled {n} memory:", "recalled {n} memories:", n, n=i18n.number(n)), style="dim"))
        for hit in report.hits:
            console.print(Text(f"  · {format_hit(hit)}", style="dim"))


def console_outbox(console: Console, name: str, photo_dir: Path | None = None, document_dir: Path | None = None):
    """An outbox factory for ``open_runtime``: a ConsoleOutbox numbering messages after the stored ones."""
    return lambda memory: ConsoleOutbox(IdAllocator(memory.store.messages.max_id), console, name, photo_dir, document_dir)


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


class ConsoleChat:
    """One person typing lines into one chat, as Telegram would deliver them (``send``).

    Lines starting with ``/`` are commands; ``/file PATH [caption]`` sends a file (a photo, a
    document, a voice note). A number presses a button: the buttons of the latest message with
    buttons, numbered from 1, while no message has been sent since it came (``buttons``) — a
    ``ButtonPress`` for that message, as a tap in Telegram. A number with no buttons shown is a
    message; one out of range is refused with a note. In a group chat id (negative) the console user
    is always addressing the bot."""

    def __init__(self, rt: Runtime, *, chat_id: int, user: Sender, chat_title: str | None = None) -> None:
        box = rt.supervisor.outbox
        assert isinstance(box, LocalOutbox), "the console talks through a LocalOutbox"
        self.rt, self.box, self.chat_id, self.user, self.chat_title = rt, box, chat_id, user, chat_title
        self.chat_type = PRIVATE if chat_id > 0 else "supergroup"
        self.sent = 0  # messages, commands, files and presses delivered
        self._typed = 0  # id of the latest message sent: buttons that came before it are no longer pressed by number
        self._presses = itertools.count(1)

    def buttons(self) -> tuple[Button, ...]:
        """The buttons a number presses now (button n is ``buttons()[n - 1]``); empty when none."""
        kb = self.box.keyboard(self.chat_id)
        return kb.flat_buttons() if kb is not None and kb.message_id > self._typed else ()

    def prompt(self) -> str:
        """The interactive prompt: ``> ``, or ``[1-3] > `` while buttons can be pressed."""
        n = len(self.buttons())
        return "> " if n == 0 else ("[1] > " if n == 1 else f"[1-{n}] > ")

    async def send(self, text: str) -> bool:
        """Deliver one typed line and wait until the bot has handled it. False when nothing was sent
        (a blank line, a file that cannot be read, a number with no such button)."""
        text = text.strip()
        if not text:
            return False
        if text.isascii() and text.isdigit() and (buttons := self.buttons()):
            return await self._press(buttons, int(text))
        ids = self.box.ids  # user messages and replies share one id sequence
        message_id = await ids.next(self.chat_id)
        date = self.rt.services.clock()
        chat_id, chat_type, user, title = self.chat_id, self.chat_type, self.user, self.chat_title
        attached = file_line(text)
        if attached is not None:
            path, caption = attached
            if not rest_is_file(path):
                await self._notice(lambda: _("not sent: {path} is not a file. Usage: /file PATH [caption]", path=str(path)))
                return False
            try:
                media = local_media(path)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                await self._notice(lambda: _("not sent: cannot read {path}: {reason}", path=str(path), reason=reason))
                return False
            ev: Incoming | CommandEvent = Incoming(chat_id, chat_type, message_id, user, caption, date, chat_title=title,
                                                   respond=True, media=media)
        elif text.startswith("/") and len(text) > 1:
            cmd, _sep, args = text[1:].partition(" ")
            ev = CommandEvent(chat_id, chat_type, message_id, user, cmd.split("@")[0].lower(), args.strip(), date, chat_title=title)
        else:
            ev = Incoming(chat_id, chat_type, message_id, user, text, date, chat_title=title, respond=True)
        self._typed = message_id
        await self._deliver(ev)
        return True

    async def _press(self, buttons: tuple[Button, ...], n: int) -> bool:
        if not 1 <= n <= len(buttons):
            k = len(buttons)
            await self._notice(lambda: _("There is no button {n}: type 1 to press the button, or write a message.", n=n) if k == 1
                               else _("There is no button {n}: type a number from 1 to {k}, or write a message.", n=n, k=k))
            return False
        button = buttons[n - 1]
        url = button_url(button)
        if url is not None:
            await self._notice(lambda: _("{button}: open {url}", button=button.text, url=url))
            return False
        kb = self.box.keyboard(self.chat_id)
        assert kb is not None
        await self._deliver(ButtonPress(self.chat_id, kb.message_id, self.user, button.data, f"console-{next(self._presses)}"))
        return True

    async def _deliver(self, ev: Incoming | CommandEvent | ButtonPress) -> None:
        sup = self.rt.supervisor
        await sup.tell(self.chat_id, ev)
        await sup.wait_idle(self.chat_id)
        await self.box.on_idle()
        self.sent += 1

    async def _notice(self, text: Callable[[], str]) -> None:
        """A note of the console's own, in the language the bot speaks here (else the user's app's)."""
        with i18n.use(self.box.language if self.box.sent else self.user.language_code):
            await self.box.on_notice(text())


async def chat_turns(
    rt: Runtime,
    lines: AsyncIterator[str] | Iterable[str],
    *,
    chat_id: int,
    user: Sender,
    chat_title: str | None = None,
) -> int:
    """Send each line as ``user`` in ``chat_id`` (``ConsoleChat.send``: messages, commands, files,
    button numbers) and wait for the bot's answer. Returns the number of lines delivered."""
    chat = ConsoleChat(rt, chat_id=chat_id, user=user, chat_title=chat_title)
    if hasattr(lines, "__aiter__"):
        async for line in lines:  # type: ignore[union-attr]
            await chat.send(line)
    else:
        for line in lines:  # type: ignore[union-attr]
            await chat.send(line)
    return chat.sent
