"""What a self-hoster runs on a data dir — ``kith memory stats|search|forget|reindex|learn``, ``kith import``,
``kith sub grant|revoke|list``, ``kith usage`` — written once, run two ways.

Each operation is an async function ``op(res: Resources, io: Streams, **args) -> exit code`` whose
arguments are JSON values (paths as absolute strings). ``run_local`` opens what the operation
``needs`` under the data dir and runs it (no bot running); the control server of a running bot runs
the same function on the bot's own open stores (``actors.control``, ``POST /admin/op``), because
DuckDB allows one writer process. Same function, same rich consoles (width and terminal-ness sent
by the client), so the output is the same both ways.

In a running bot (``Resources.services`` set), what changes a chat goes through its actor or tells
it: ``forget`` runs inside the chat's actor between its events (its context drops the erased
messages), ``import`` and ``reindex`` make live actors re-read their context; subscriptions go
through the running admission, so a grant applies to the next message.

Errors: the operations raise the packages' own errors (``MemoryStoreError``, ``TierError``,
``ProviderError``, ``FeatureError``); the caller turns them into ``error: …`` and exit code 1 (``KNOWN_ERRORS``).
"""
from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from actors.stores import Stores, dialogue_store, open_stores
from config.models import Config
from features.capacity import describe as describe_cleanup
from features.errors import FactLearningOff, FeatureError
from memory.errors import MemoryStoreError, TranscriptError
from providers.errors import DocumentError, ProviderError
from tiers.errors import TierError

if TYPE_CHECKING:
    from actors.services import Services
    from memory.service import Memory
    from memory.store import DialogueStore
    from memory.vector_counts import VectorCounts
    from memory.vectors import VectorMemory

__all__ = [
    "OPERATIONS",
    "Needs",
    "OpFn",
    "Operation",
    "Resources",
    "Streams",
    "UnknownOperation",
    "credits_change",
    "credits_history",
    "credits_list",
    "doctor_store",
    "get",
    "import_documents",
    "import_files",
    "import_transcripts",
    "known_errors",
    "memory_compact",
    "memory_forget",
    "memory_learn",
    "memory_reindex",
    "memory_search",
    "memory_stats",
    "open_resources",
    "operation",
    "run_in_bot",
    "run_local",
    "sub_grant",
    "sub_list",
    "sub_revoke",
    "usage",
    "wait_gap_fill",
    "why_of",
]

Needs = Literal["store", "stores", "memory"]
_FLUSH_WAIT_S = 5.0  # memory.stats in a running bot: how long to wait for its queues before counting


@dataclass
class Streams:
    """Where an operation writes: ``out`` (results) and ``err`` (progress, warnings) — the CLI's
    consoles, or consoles that stream back to it. ``stop()`` turns True when the caller asks the
    operation to stop (SIGINT at the CLI, the client gone, the bot shutting down): long operations
    drain and keep what they did."""

    out: Console
    err: Console
    stop: Callable[[], bool] = lambda: False

    def write(self, text: str) -> None:
        """Raw text to ``out`` (JSON lines; no markup, no wrapping)."""
        self.out.file.write(text)


@dataclass
class Resources:
    """What an operation works on. ``store`` always; ``vectors`` for ``needs="stores"`` or more;
    ``memory`` (embedder, indexer, document reader) for ``needs="memory"``; ``services`` in a
    running bot only (its supervisor and admission)."""

    config: Config
    store: DialogueStore
    vectors: VectorMemory | VectorCounts | None = None  # VectorCounts: needs="stores" with no bot
    memory: Memory | None = None
    services: Services | None = None

    def need_memory(self) -> Memory:
        assert self.memory is not None, "operation declared needs='memory'"
        return self.memory

    def need_vectors(self) -> VectorMemory | VectorCounts:
        assert self.vectors is not None, "operation declared needs='stores'"
        return self.vectors

    async def refresh_chats(self, chat_ids) -> None:
        """In a running bot: the live actors of ``chat_ids`` re-read their settings and context."""
        if self.services is not None and self.services.supervisor is not None:
            await self.services.supervisor.refresh(chat_ids)


OpFn = Callable[..., Awaitable[int]]


@dataclass(frozen=True)
class Operation:
    name: str
    needs: Needs
    fn: OpFn
    gap_fill: bool = False  # locally: embed what an earlier run left out, and wait for it before exiting
    model_change: bool = False  # locally: opens vector memory that holds another embedding model's vectors


OPERATIONS: dict[str, Operation] = {}


def operation(name: str, needs: Needs, *, gap_fill: bool = False, model_change: bool = False) -> Callable[[OpFn], OpFn]:
    def register(fn: OpFn) -> OpFn:
        OPERATIONS[name] = Operation(name, needs, fn, gap_fill, model_change)
        return fn
    return register


def known_errors() -> tuple[type[BaseException], ...]:
    """The errors an operation reports as ``error: …`` with exit code 1 (anything else is a bug)."""
    return (MemoryStoreError, ProviderError, TierError, FeatureError)


class UnknownOperation(KeyError):
    pass


def get(name: str) -> Operation:
    """raises UnknownOperation."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise UnknownOperation(f"unknown operation {name!r} (one of {', '.join(sorted(OPERATIONS))})") from None


# ---------------------------------------------------------------------- running them


@asynccontextmanager
async def open_resources(needs: Needs, config: Config, data_dir: Path, *, gap_fill: bool = False,
                         model_change: bool = False) -> AsyncIterator[Resources]:
    """Open what ``needs`` asks for under ``data_dir`` (no bot running). raises StoreLocked when a
    running bot holds the database."""

    if needs == "store":
        async with dialogue_store(config, data_dir) as store:
            yield Resources(config, store)
    elif needs == "stores":
        async with open_stores(config, data_dir) as stores:
            yield Resources(config, stores.store, stores.vectors)
    else:
        from actors.runtime import open_memory  # deferred: lancedb and the embedder (seconds), only for search, reindex, import

        async with open_memory(config, data_dir, fill_gaps=gap_fill, model_change=model_change) as memory:
            yield Resources(config, memory.store, memory.vectors, memory)


async def run_local(name: str, args: dict[str, Any], config: Config, data_dir: Path, io: Streams) -> int:
    """Run operation ``name`` on the stores under ``data_dir``; returns its exit code."""
    op = get(name)
    async with open_resources(op.needs, config, data_dir, gap_fill=op.gap_fill, model_change=op.model_change) as res:
        code = await op.fn(res, io, **args)
        if op.gap_fill and res.memory is not None and not io.stop():
            await wait_gap_fill(res.memory, io)
        return code


async def run_in_bot(services: Services, name: str, args: dict[str, Any], io: Streams) -> int:
    """Run operation ``name`` on a running bot's stores (its control server calls this)."""
    op = get(name)
    mem = services.memory
    return await op.fn(Resources(services.config, mem.store, mem.vectors, mem, services), io, **args)


async def wait_gap_fill(memory: Memory, io: Streams) -> None:
    """Before a command exits: wait for the start-up gap check (``GapFiller``), with a status line
    when it has work to do."""
    filler = memory.gap_filler
    if filler is None:
        return
    with io.err.status("embedding stored messages an earlier run left out…"):
        await filler.wait()
    gaps = filler.gaps
    if gaps is not None and (gaps.n_missing or gaps.n_orphans) and memory.indexer.disk_full is None:
        io.err.print(f"[dim]memory repaired: {gaps.n_missing} stored messages embedded, "
                     f"{gaps.n_orphans} memories of deleted messages removed[/]")


# ---------------------------------------------------------------------- memory


def _stats_table(rows: list[dict[str, Any]]) -> Table:
    """The per-chat table of ``kith memory stats``: whole chat ids, numbers and dates (never wrapped),
    the title folded, light borders, so it reads at 80 columns (``--json`` has every field)."""
    table = Table(title="memory", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("chat", no_wrap=True)
    table.add_column("title", overflow="fold", ratio=1, min_width=8)
    for col in ("messages", "memories", "cleaned up"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("last", no_wrap=True)
    for r in rows:
        removed = r["cleaned_messages"] + r["cleaned_memories"]
        table.add_row(str(r["chat_id"]), escape(r["title"] or f"({r['type'] or '?'})"), str(r["messages"]),
                      str(r["memories"]), str(removed) if removed else "–", (r["last"] or "")[:10])
    return table


@operation("memory.stats", "stores")
async def memory_stats(res: Resources, io: Streams, *, as_json: bool = False) -> int:
    """Messages and memories per chat, and the size of each store."""
    from memory.maintenance import find_gaps  # deferred: ~60 ms; sub, usage and credits do not need it

    vectors = res.need_vectors()
    if res.memory is not None:  # a running bot: what it was told so far is counted (briefly: it may be busy)
        with anyio.move_on_after(_FLUSH_WAIT_S):
            await res.memory.flush()
    chats = await res.store.settings.chats()
    cleaned: dict[int, list] = {}
    for rec in await res.store.index.cleanups():
        cleaned.setdefault(rec.chat_id, []).append(rec)
    rows: list[dict[str, Any]] = []
    for c in chats:
        recs = cleaned.get(c.chat_id, [])
        rows.append({
            "chat_id": c.chat_id, "type": c.type, "title": c.title, "messages": c.messages,
            "memories": await vectors.count(c.chat_id),
            "cleaned_messages": sum(r.messages for r in recs), "cleaned_memories": sum(r.memories for r in recs),
            "cleanups": [{"scope": r.scope, "scope_id": r.scope_id, "tier": r.tier, "limit": r.limit_name,
                          "limit_value": r.limit, "messages": r.messages, "memories": r.memories, "last": r.at.isoformat()}
                         for r in recs],
            "first": c.first_date.isoformat() if c.first_date else None,
            "last": c.last_date.isoformat() if c.last_date else None,
        })
    stats = await res.store.stats()
    total_mem = await vectors.count()
    gaps = await find_gaps(Stores(res.store, vectors))
    if as_json:
        io.out.print_json(json.dumps({"chats": rows, "dialogue": stats, "memories": total_mem,
                                      "not_embedded": gaps.n_missing, "orphaned": gaps.n_orphans}, default=str))
        return 0
    io.out.print(_stats_table(rows))
    for r in rows:
        for rec in cleaned.get(r["chat_id"], []):
            io.out.print(f"[dim]chat {r['chat_id']}: {escape(describe_cleanup(rec))}[/]")
    size = stats.get("file_bytes")
    io.out.print(f"dialogue store: {stats.get('messages', 0):,} messages in {stats.get('chats', 0):,} chats, "
                 f"{stats.get('usage', 0):,} usage rows" + (f", {size / 1e6:,.1f} MB" if size else "")
                 + f", schema {stats.get('schema_version')}")
    io.out.print(f"vector memories: {total_mem}")
    if gaps.n_missing or gaps.n_orphans:
        io.out.print(f"[yellow]{gaps.n_missing} stored messages are not embedded yet and {gaps.n_orphans} memories "
                     "belong to deleted messages[/]: " + (
                         f"the running bot has {res.memory.indexer.pending} queued for embedding; "
                         if res.services is not None and res.memory is not None else "")
                     + "the next `kith run`, `kith chat`, `kith import` or `kith replay` repairs them "
                     "(or `kith memory reindex` now)")
    return 0


@operation("memory.search", "memory")
async def memory_search(res: Resources, io: Streams, *, chat_id: int, queries: list[list[Any]], k: int = 10,
                        mode: str = "hybrid", as_json: bool = False, explain: bool = False) -> int:
    """Search one chat's memory. queries: ``[[query_id | None, text], …]``."""
    memory = res.need_memory()
    for qid, q in queries:
        recall = await memory.recall(chat_id, q, k, mode=mode)
        if as_json:
            for rank, h in enumerate(recall.hits, 1):
                row = {
                    "chat_id": h.chat_id, "message_id": h.parent if h.citation else h.message_id, "score": round(h.score, 6),
                    "text": h.text, "user": h.user_name, "date": h.date.isoformat(), "rank": rank,
                    "parts": {name: round(v, 6) for name, v in h.parts.items()},
                    "kind": h.kind, "file": h.source, "page": h.page, "why": why_of(h),
                }
                if qid is not None:
                    row["query_id"] = qid
                io.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        table = Table(title=f"chat {chat_id}: {q[:60]}")
        for col in ("#", "score", "message", "date", "user", "text", *(("why",) if explain else ())):
            table.add_column(col)
        for rank, h in enumerate(recall.hits, 1):
            why = (" ".join([f"{name}={value:.3f}" for name, value in h.parts.items()] + [f"[{st}]" for st in h.stages]),) if explain else ()
            mid = f"{h.parent} [{h.citation}]" if h.citation else str(h.message_id)
            table.add_row(str(rank), f"{h.score:.4f}", escape(mid), f"{h.date:%Y-%m-%d %H:%M}", escape(h.user_name),
                          escape(h.text[:200]), *why)
        io.out.print(table)
        if not recall.hits:
            io.out.print("[dim]no memories match[/]")
    return 0


def why_of(h) -> dict:
    """What matched and why, for ``kith memory search --json``: the row's rank in each leg (null: that
    leg did not return it), what the recall stages did to it ("neighbour of 41", "entity link (…)",
    ``memory.retrieval``), and whether it is a message, a message a memory entry came from (the
    entry matched the query), or a part of a document."""
    kind = "document part" if h.kind != "message" else (
        "entry" if any(st.startswith("source of memory entry") for st in h.stages) else "message")
    return {"legs": {"bm25": h.fts_rank, "vector": h.vector_rank}, "stages": list(h.stages), "kind": kind}


@operation("memory.forget", "memory")
async def memory_forget(res: Resources, io: Streams, *, chat: int, user: int | None = None) -> int:
    """Erase a chat's messages (or one user's there) from both stores. In a running bot the chat's
    actor does it between its events, so its context forgets them too."""
    sup = res.services.supervisor if res.services is not None else None
    if sup is not None:
        if user is None:
            n = await sup.call(chat, lambda actor: actor.delete_history())
        else:
            n = await sup.call(chat, lambda actor: actor.forget_user(user))
    else:
        n = await res.need_memory().forget(chat, user_id=user)
    io.out.print(f"erased {n} messages")
    return 0


@operation("memory.reindex", "memory", model_change=True)
async def memory_reindex(res: Resources, io: Streams, *, chat: int | None = None) -> int:
    """Rebuild vector memory from the dialogue store, re-embedding every message (or one chat's)."""
    # deferred: rich.progress (~5 ms); `kith memory stats` must not
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memory.maintenance import reindex  # deferred: ~60 ms; sub, usage and credits do not need it

    memory = res.need_memory()
    total = await memory.store.messages.count(chat)
    with Progress(TextColumn("reindex"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=io.err) as progress:
        task = progress.add_task("reindex", total=total)
        n = await reindex(memory, chat_id=chat, on_progress=lambda k: progress.advance(task, k))
    io.out.print(f"reindexed {n} memories from {total} stored messages")
    return 0


@operation("memory.learn", "memory")
async def memory_learn(res: Resources, io: Streams, *, chat: int, after_id: int = 0) -> int:
    """Learn memory entries from chat ``chat``'s stored history (imports too) with ``memory.memory_model``
    (``FactLearner.learn_history``): a progress bar over its members' messages, then what was learned,
    what it cost and, when it stopped early, the message to go on after. raises FactLearningOff."""
    # deferred: rich.progress (~5 ms); `kith memory stats` must not
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from features.fact_learning import FactLearner  # deferred: only for `kith memory learn`

    async with _learning_services(res) as svc:
        learner = FactLearner(svc)
        if not learner.enabled:
            raise FactLearningOff
        total = await res.store.messages.count(chat)
        if not total:
            io.err.print(f"[red]chat {chat} has no stored messages[/] (`kith memory stats` lists the chats)")
            return 1
        started = datetime.now(UTC)
        with Progress(TextColumn("learning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=io.err) as progress:
            task = progress.add_task("learn", total=total)
            run = await learner.learn_history(chat, after_id=after_id, stop=io.stop,
                                              on_batch=lambda b: progress.advance(task, b.messages))
        await res.store.flush()
        calls = [u for u in await res.store.usage.rows(since=started) if u.kind == "memory" and u.chat_id == chat]
    costs = [u.cost_usd for u in calls]
    cost = "cost unknown" if any(c is None for c in costs) else f"${sum(c or 0.0 for c in costs):.4f}"
    read, n_calls = run.total("messages"), len(run.batches)
    io.out.print(f"chat {chat}: read {read} message{'s' * (read != 1)} in {n_calls} call{'s' * (n_calls != 1)} to {learner.alias} "
                 f"({sum(u.prompt_tokens + u.completion_tokens for u in calls)} tokens, {cost}): {run.total('added')} facts "
                 f"added, {run.total('changed')} changed, {run.total('unchanged')} unchanged, {run.total('skipped')} skipped")
    if run.stopped:
        io.err.print(f"[yellow]stopped early ({escape(run.stopped)})[/]"
                     + (f": go on with --after-id {run.last_id}" if run.last_id is not None else ""))
        return 1
    return 0


@asynccontextmanager
async def _learning_services(res: Resources) -> AsyncIterator[Services]:
    """A running bot's services, or services for this command alone: the LLM of the config, the
    tiers' admission (entry limits) and the host's spending cap, on the stores ``res`` opened."""
    if res.services is not None:
        yield res.services
        return
    from actors.services import BotIdentity, Services  # deferred: only for `kith memory learn`
    from providers.llm import LLM  # deferred: litellm (~2 s)
    from tiers.admission import open_admission  # deferred: tiers, babel (~15 ms)

    cfg = res.config.settings
    clock = lambda: datetime.now(UTC)  # noqa: E731
    admission = await open_admission(res.store, res.config, clock)
    llm = LLM(cfg.models, cfg.llm)
    try:
        yield Services(res.config, res.need_memory(), llm, BotIdentity(0, cfg.bot.name, cfg.bot.username), clock,
                       admission)
    finally:
        await llm.aclose()


@operation("memory.compact", "memory")
async def memory_compact(res: Resources, io: Streams) -> int:
    """Compact vector memory and update its indexes."""
    from memory.maintenance import compact  # deferred: ~60 ms; sub, usage and credits do not need it

    memory = res.need_memory()
    t0 = time.perf_counter()
    await compact(memory)
    n = await memory.vectors.count()
    io.out.print(f"compacted {n} memories in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------------- import


@operation("import.transcripts", "memory", gap_fill=True)
async def import_transcripts(res: Resources, io: Streams, *, files: list[str], with_files: bool = False) -> int:
    """Import transcripts / Telegram exports (absolute paths); exit 1 when a file or line failed."""
    ok, chats = await import_files(res.need_memory(), [Path(f) for f in files], io, with_files=with_files)
    await res.refresh_chats(chats)
    return 0 if ok else 1


async def import_files(memory: Memory, files: list[Path], io: Streams, *, with_files: bool = False) -> tuple[bool, set[int]]:
    """Import each file with a progress bar; print a summary line per file. A file that cannot be
    read is reported and the next one imported. Returns (every file and line imported, the chats)."""
    # deferred: rich.progress (~5 ms); `kith memory stats` must not
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memory.importer import import_transcript  # deferred: ~10 ms, only for `kith import`

    ok, chats = True, set()
    for file in files:
        if io.stop():
            io.err.print(f"[yellow]{escape(file.name)}: not imported (stopped)[/]")
            ok = False
            continue
        total = _count_lines(file)
        t0 = time.perf_counter()
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=io.err,
            transient=False,
        ) as progress:
            task = progress.add_task(file.name, total=total)
            try:
                report = await import_transcript(
                    memory, file,
                    on_progress=functools.partial(progress.advance, task),
                    on_error=lambda e: progress.console.print(f"[yellow]skipped[/] {escape(str(e))}"),
                    with_files=with_files,
                    should_stop=io.stop,
                )
            except TranscriptError as exc:
                progress.stop()
                io.err.print(f"[red]{escape(file.name)}: not imported:[/] {escape(str(exc))}")
                ok = False
                continue
            progress.update(task, total=report.read, completed=report.read)
        chats |= set(report.chats)
        ok = ok and not report.errors and not report.document_errors and not report.stopped
        dt = time.perf_counter() - t0
        io.out.print(
            f"{file.name}: {report.read} messages in {len(report.chats)} chat(s), {report.embedded} embedded, "
            f"{report.already_known} already known, {len(report.errors)} bad line(s) skipped "
            f"({report.read / dt:.0f} msg/s)" + (f", {report.documents} document(s) read into memory" if with_files else "")
        )
        for problem in report.document_errors:
            io.err.print(f"[yellow]document not read[/] {escape(problem)}")
    return ok, chats


def _count_lines(file: Path) -> int | None:
    if file.suffix == ".jsonl":
        with file.open("rb") as fh:
            return sum(1 for _ in fh)
    return None


@operation("import.documents", "memory")
async def import_documents(res: Resources, io: Streams, *, files: list[str], chat_id: int, user: str) -> int:
    """Each document (absolute paths) into chat ``chat_id``'s memory; a line per file; exit 1 if any failed."""
    from memory.documents import document_summary  # deferred: ~5 ms, only for `kith import`
    from memory.importer import import_document  # deferred: ~10 ms, only for `kith import`
    from memory.transcripts import derived_user_id  # deferred: ~8 ms, only for `kith import`
    from transports.local import IdAllocator  # deferred: ~5 ms, only for `kith import`

    memory = res.need_memory()
    media = res.config.settings.media
    ok = True
    ids = IdAllocator(memory.store.messages.max_id)
    for file in map(Path, files):
        with io.err.status(f"reading {file.name}…"):
            try:
                info, fresh = await import_document(
                    memory, file, chat_id=chat_id, user_id=derived_user_id(user), user_name=user,
                    message_id=await ids.next(chat_id), date=datetime.now(UTC), max_chars=media.chunk_chars,
                    max_pages=media.max_document_pages)
            except (OSError, DocumentError) as exc:
                ok = False
                io.err.print(f"[red]{escape(file.name)}:[/] {escape(getattr(exc, 'user_message', None) or str(exc))}")
                continue
        state = "read into" if fresh else "already in"
        io.out.print(f"{file.name}: {state} chat {chat_id}'s memory ({document_summary(info)})")
    await res.refresh_chats([chat_id])
    return 0 if ok else 1


# ---------------------------------------------------------------------- subscriptions, usage


def _subs(res: Resources):
    """A running bot's subscription store (its admission sees a grant at once); None: one on the store."""
    if res.services is not None and res.services.admission is not None:
        return res.services.admission.subs
    return None


@operation("sub.grant", "store")
async def sub_grant(res: Resources, io: Streams, *, target: str, tier: str, days: float | None = None) -> int:
    from .tiers_report import grant  # deferred: tiers, babel (~15 ms), only for subscriptions

    await grant(res.store, res.config.tiers, target, tier, days, io.out, subs=_subs(res))
    return 0


@operation("sub.revoke", "store")
async def sub_revoke(res: Resources, io: Streams, *, target: str) -> int:
    from .tiers_report import revoke  # deferred: tiers, babel (~15 ms), only for subscriptions

    await revoke(res.store, res.config.tiers, target, io.out, subs=_subs(res))
    return 0


@operation("sub.list", "store")
async def sub_list(res: Resources, io: Streams, *, expired: bool = False, as_json: bool = False) -> int:
    from .tiers_report import list_subs  # deferred: tiers, babel (~15 ms), only for subscriptions

    await list_subs(res.store, res.config.tiers, io.out, expired=expired, as_json=as_json, subs=_subs(res))
    return 0


def _ledger(res: Resources):
    """A running bot's credit ledger (its admission's; one lock for the bot and the CLI); None: one on the store."""
    if res.services is not None and res.services.admission is not None:
        return res.services.admission.ledger
    return None


@operation("credits.change", "store")
async def credits_change(res: Resources, io: Streams, *, target: str, amount: int, kind: str = "grant",
                         note: str | None = None, op_id: str | None = None) -> int:
    from .credits_report import change, ledger_of  # deferred: ~9 ms, only for credits

    await change(await ledger_of(res.store, _ledger(res)), target, amount, io.out, kind=kind, note=note, op_id=op_id)
    return 0


@operation("credits.list", "store")
async def credits_list(res: Resources, io: Streams, *, as_json: bool = False) -> int:
    from .credits_report import ledger_of, list_balances  # deferred: ~9 ms, only for credits

    await list_balances(await ledger_of(res.store, _ledger(res)), io.out, as_json=as_json)
    return 0


@operation("credits.history", "store")
async def credits_history(res: Resources, io: Streams, *, target: str, limit: int = 50, as_json: bool = False) -> int:
    from .credits_report import history, ledger_of  # deferred: ~9 ms, only for credits

    await history(await ledger_of(res.store, _ledger(res)), target, io.out, limit=limit, as_json=as_json)
    return 0


@operation("usage", "store")
async def usage(res: Resources, io: Streams, *, by: str = "model", since: str | None = None, as_json: bool = False) -> int:
    from tiers.budget import Budget  # deferred: ~6 ms, only for usage

    from .tiers_report import usage_report  # deferred: tiers, babel (~15 ms), only for usage

    await res.store.flush()  # a running bot: its queued usage records count
    start = datetime.fromisoformat(since) if since else None
    adm = res.services.admission if res.services is not None else None
    budget = adm.budget if adm is not None else None
    if budget is None:  # the stores alone: today's and this month's spend from the usage table
        budget = Budget(res.store, res.config.settings.budget, res.config.settings.models, lambda: datetime.now(UTC), remember=False)
    await budget.load()
    await usage_report(res.store, io.out, by=by, since=start, as_json=as_json, budget=budget)
    return 0


@operation("doctor.store", "store")
async def doctor_store(res: Resources, io: Streams) -> int:
    """The doctor's dialogue-store line: how many messages it holds."""
    s = await res.store.stats()
    io.out.print(f"{s.get('messages', 0)} messages")
    return 0
