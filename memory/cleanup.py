"""Capacity auto-cleanup per tier (docs/design.md §4): keep each chat and each user within their limits.

When a scope passes its tier's limit — ``chat.dialogue_limit`` / ``chat.memory_limit`` for a chat,
``user.dialogue_limit`` / ``user.memory_limit`` for a user across all chats — the oldest entries
beyond ``keep_percentage`` of the limit are deleted, never any younger than ``min_age_days``:

- over a *dialogue* limit: the messages are deleted from DuckDB *and* their memories from LanceDB
  (a deleted message is never recalled);
- over a *memory* limit: only memories are deleted (the history stays readable, it is no longer
  searchable).

The ``Janitor`` runs cleanups in its own task, one at a time, so turns never wait for them; actors
only ``request`` a check. Limits of -1 mean unlimited.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio

from config.models import AutoCleanup, StorageLimits

from .errors import DiskFull
from .service import Memory
from .types import DOC_ID_BASE, CleanupRecord, is_chunk_id

__all__ = ["CleanupResult", "Janitor", "cleanup_scope", "keep_count"]

log = logging.getLogger(__name__)

CHAT, USER = "chat", "user"


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What one cleanup deleted: messages (both stores) and memories (LanceDB only), in all; and per
    chat and reason, as logged in the store (``records``: one per chat and limit that removed something)."""

    scope: str
    scope_id: int
    messages: int = 0
    memories: int = 0
    records: tuple[CleanupRecord, ...] = ()


def keep_count(limit: int, policy: AutoCleanup) -> int:
    """How many entries survive a cleanup of a scope whose limit is ``limit`` (≥ 0)."""
    return int(limit * policy.keep_percentage / 100)


async def cleanup_scope(
    memory: Memory, scope: str, scope_id: int, limits: StorageLimits, policy: AutoCleanup, now: datetime,
    *, tier: str = "",
) -> CleanupResult:
    """Bring ``scope:scope_id`` (``"chat"`` or ``"user"``, on tier ``tier``) back within ``limits``.
    Returns what was deleted; each chat's part is also logged in the store (``store.index.record_cleanup``).

    Only what was said in the chat counts and can go: the host's imports (``StoredMessage.imported``)
    are neither counted nor evicted. A scope within its limits is counted without waiting for the
    indexer — most checks, since a new user's first message is checked at once, and a flush would
    cut the indexer's batch short; only a scope that may be over them waits for everything in flight
    to be stored and embedded (``Memory.flush``), then is counted again and cleaned."""
    if not await _may_exceed(memory, scope, scope_id, limits):
        return CleanupResult(scope, scope_id)
    await memory.flush()
    store, cutoff = memory.store, now - timedelta(days=policy.min_age_days)
    who = _who(scope, scope_id)
    removed: dict[tuple[int, str], list[int]] = {}  # (chat, limit name) -> [messages, memories]

    if limits.dialogue_limit >= 0:
        total = await _messages_stored(memory, scope, scope_id)
        if total > limits.dialogue_limit:
            excess = total - keep_count(limits.dialogue_limit, policy)
            rows = await store.messages.keys(**who, before=cutoff, limit=excess, imported=False)
            for chat_id, ids in _by_chat(rows).items():
                deleted = await store.messages.delete(chat_id, message_ids=ids)
                if deleted:
                    await memory.vectors.delete(chat_id, message_ids=deleted)
                    removed.setdefault((chat_id, "dialogue_limit"), [0, 0])[0] += len(deleted)

    if limits.memory_limit >= 0:
        held = await _memories_held(memory, scope, scope_id)
        total = sum(len(ids) for ids in held.values())
        if total > limits.memory_limit:
            excess = total - keep_count(limits.memory_limit, policy)
            rows = await store.messages.keys(**who, before=cutoff, imported=False)
            oldest = [(c, m) for c, m in rows if m in held.get(c, ())][:excess]
            for chat_id, ids in _by_chat(oldest).items():
                await memory.note_evictions(chat_id, ids)  # first: neither the indexer nor the gap check embeds them again
                n = await memory.vectors.delete(chat_id, message_ids=ids)
                if n:
                    removed.setdefault((chat_id, "memory_limit"), [0, 0])[1] += n
    records = tuple(
        CleanupRecord(chat_id, now, scope, scope_id, tier, name, getattr(limits, name), messages, memories)
        for (chat_id, name), (messages, memories) in removed.items())
    for rec in records:
        await store.index.record_cleanup(rec)
    messages, memories = sum(r.messages for r in records), sum(r.memories for r in records)
    if records:
        log.info("cleanup %s:%s (tier %s) deleted %d messages and %d memories", scope, scope_id, tier, messages, memories)
    return CleanupResult(scope, scope_id, messages, memories, records)


async def _may_exceed(memory: Memory, scope: str, scope_id: int, limits: StorageLimits) -> bool:
    """Whether the scope may be over a limit: its stored messages (committed first: exact), its
    memories in LanceDB plus every memory still queued for embedding (an upper bound)."""
    await memory.store.flush()
    if limits.dialogue_limit >= 0 and await _messages_stored(memory, scope, scope_id) > limits.dialogue_limit:
        return True
    if limits.memory_limit >= 0:
        held = sum(len(ids) for ids in (await _memories_held(memory, scope, scope_id)).values())
        if held + memory.indexer.pending > limits.memory_limit:
            return True
    return False


def _who(scope: str, scope_id: int) -> dict[str, int]:
    """The store's filter for a scope: ``{"chat_id": id}`` or ``{"user_id": id}``."""
    return {"chat_id": scope_id} if scope == CHAT else {"user_id": scope_id}


async def _messages_stored(memory: Memory, scope: str, scope_id: int) -> int:
    """Committed messages said in a chat, or by a user in every chat (the host's imports left out)."""
    return await memory.store.messages.count(**_who(scope, scope_id), imported=False)


def _owner_id(memory_id: int) -> int:
    """The message a memory belongs to: itself, or the message that carried a document chunk."""
    return (memory_id - DOC_ID_BASE) >> 16 if is_chunk_id(memory_id) else memory_id


async def _memories_held(memory: Memory, scope: str, scope_id: int) -> dict[int, set[int]]:
    """Memory ids in LanceDB that count against the scope's limit, per chat: a chat's all (document
    chunks included) but those of the host's imports, or a user's messages in every chat."""
    if scope == CHAT:
        held = await memory.vectors.message_ids(scope_id)
        if await memory.store.messages.count(scope_id, imported=True):
            hosts = {m for _c, m in await memory.store.messages.keys(chat_id=scope_id, imported=True)}
            held = {i for i in held if _owner_id(i) not in hosts}
        return {scope_id: held}
    rows = await memory.store.messages.keys(user_id=scope_id, imported=False)
    return {chat_id: set(ids) & await memory.vectors.message_ids(chat_id) for chat_id, ids in _by_chat(rows).items()}


def _by_chat(rows: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for chat_id, message_id in rows:
        out.setdefault(chat_id, []).append(message_id)
    return out


class Janitor:
    """Runs capacity cleanups in the background, one at a time, never blocking a turn.

    limits_of(scope, scope_id) → ``(tier name, StorageLimits)`` of the scope (from its tier).
    on_cleanup(result): awaited after a cleanup that removed something (the runtime tells the chats
    concerned; an exception there is logged, the cleanup stays done). ``request`` is non-blocking and
    coalesces repeated requests for the same scope. Use as ``async with``.
    """

    def __init__(
        self,
        memory: Memory,
        limits_of: Callable[[str, int], Awaitable[tuple[str, StorageLimits]]],
        policy: AutoCleanup,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_cleanup: Callable[[CleanupResult], Awaitable[None]] | None = None,
    ) -> None:
        self.memory, self.limits_of, self.policy, self.clock = memory, limits_of, policy, clock
        self.on_cleanup = on_cleanup
        self._queue: dict[tuple[str, int], None] = {}
        self._wakeup = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self._closed = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._counts: dict[tuple[str, int], int] = {}
        self._every: dict[tuple[str, int], int] = {}  # check after this many new messages (from the limit)
        self.results: list[CleanupResult] = []

    async def __aenter__(self) -> Janitor:
        async with AsyncExitStack() as stack:  # the worker's task group, owned by this object until __aexit__
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._worker, name="janitor")
            self._owner = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._wakeup.set()
        assert self._tg is not None
        await self._owner.aclose()

    def note_stored(self, chat_id: int, user_id: int | None) -> None:
        """A message was stored (``user_id`` None for the bot's own): check the chat and the user
        once enough new messages arrived (every 5 % of the limit; a new scope is checked at once)."""
        keys = [(CHAT, chat_id)] + ([(USER, user_id)] if user_id is not None else [])
        for key in keys:
            n = self._counts.get(key, 0) + 1
            if n >= self._every.get(key, 1):
                self.request(*key)
                n = 0
            self._counts[key] = n

    def request(self, scope: str, scope_id: int) -> None:
        """Ask for a capacity check of ``scope:scope_id`` (``"chat"`` or ``"user"``)."""
        if not self.policy.enabled or self._closed:
            return
        self._queue[(scope, scope_id)] = None
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._wakeup.set()

    async def wait_idle(self) -> None:
        """Wait until every requested cleanup has run."""
        await self._idle.wait()

    async def _worker(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while self._queue:
                scope, scope_id = next(iter(self._queue))
                del self._queue[(scope, scope_id)]
                try:
                    tier, limits = await self.limits_of(scope, scope_id)
                    smallest = min((x for x in (limits.dialogue_limit, limits.memory_limit) if x >= 0), default=-1)
                    self._every[(scope, scope_id)] = max(1, smallest // 20) if smallest >= 0 else 1000
                    result = await cleanup_scope(self.memory, scope, scope_id, limits, self.policy, self.clock(), tier=tier)
                    self.results.append(result)
                    if result.records and self.on_cleanup is not None:
                        await self.on_cleanup(result)
                except DiskFull as exc:  # already reported once, where it stops intake; no traceback here
                    log.warning("cleanup of %s:%s skipped: %s", scope, scope_id, exc)
                except Exception:
                    log.exception("cleanup of %s:%s failed", scope, scope_id)
            self._idle.set()
            if self._closed:
                return
