"""Indexer: the background path from stored messages to searchable vector memory.

``submit`` enqueues messages without blocking; one worker task takes up to ``batch`` messages at a
time (waiting at most ``max_wait_s`` for a batch to fill) — or, when more are already queued (an
import, a reindex, a replay, a long document), up to ``bulk_batch`` — embeds them in one
``Embedder.embed`` call, and appends them to ``VectorMemory`` in one batched upsert (many small
appends fragment LanceDB). The Embedder sorts a bulk call by length before splitting it into model
calls, so the larger the window, the less padding: on #ubuntu messages (OpenVINO, 2 cores) windows
of 256 texts encode at ~465 texts/s, of 1,041 at ~625.
After every ``optimize_every`` appended rows it starts ``VectorMemory.optimize()`` in its own task.

A batch that fails (embedding or LanceDB error) is retried a few times, then logged and dropped
(``failed`` counts its messages): vector memory is derived data, ``kith memory reindex`` rebuilds it.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack

import anyio
import numpy as np

from providers.embedder import BulkEmbedder

from .errors import DiskFull
from .types import DocumentChunk, StoredMessage
from .vector_rows import KIND_DOCUMENT, KIND_MESSAGE, MemoryRow
from .vectors import VectorMemory

__all__ = ["OPTIMIZE_AFTER_APPENDS", "OPTIMIZE_ON_DRAIN_ROWS", "OPTIMIZE_WHEN_IDLE_S", "Indexer", "Item", "memory_row"]

Item = StoredMessage | DocumentChunk  # what the indexer embeds: a message, or a chunk of a document


def memory_row(item: Item, vector: np.ndarray) -> MemoryRow:
    """The vector-memory row of a message or of a document chunk (with its provenance)."""
    if isinstance(item, DocumentChunk):
        return MemoryRow(chat_id=item.chat_id, message_id=item.memory_id, user_id=item.user_id, user_name=item.user_name,
                         text=item.text, date=item.date, vector=vector, kind=KIND_DOCUMENT, source=item.file_name,
                         page=item.page, parent=item.message_id)
    return MemoryRow(chat_id=item.chat_id, message_id=item.message_id, user_id=item.user_id, user_name=item.user_name,
                     text=item.text, date=item.date, vector=vector, kind=KIND_MESSAGE)

log = logging.getLogger(__name__)

_RETRIES = 3
OPTIMIZE_AFTER_APPENDS = 32  # appends (fragments) between two optimize() runs at most
OPTIMIZE_WHEN_IDLE_S = 5.0  # ... and optimize once the queue has been idle this long
# ... and as soon as the queue drains with at least this many rows not yet in the indexes (each
# unindexed row is scanned flat by every search: ~1 ms per 1000 rows)
OPTIMIZE_ON_DRAIN_ROWS = 256


class Indexer:
    """Embeds and appends submitted messages in batches; use as ``async with Indexer(vm, emb) as ix``.

    batch: messages per embedding call and per append in live use; bulk_batch: the most taken at
    once when more are queued. max_wait_s: how long a partial batch waits for more messages
    (``flush`` and exit skip the wait). optimize_every: appended rows between two
    ``VectorMemory.optimize()`` runs (0 disables them).

    Counters: ``indexed`` (rows appended), ``skipped`` (empty/whitespace texts), ``failed`` (messages
    of batches dropped after retries), ``optimizations`` (optimize runs finished). ``disk_full``:
    the DiskFull of the last append when it failed for lack of space (None once one succeeds).
    """

    def __init__(
        self,
        vectors: VectorMemory,
        embedder: BulkEmbedder,
        *,
        batch: int = 256,
        bulk_batch: int = 2048,
        max_wait_s: float = 0.2,
        optimize_every: int = 2000,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.vectors = vectors
        self.embedder = embedder
        self.batch = batch
        self.bulk_batch = max(batch, bulk_batch)
        self.max_wait_s = max_wait_s
        self.optimize_every = optimize_every
        self.indexed = 0
        self.skipped = 0
        self.failed = 0
        self.optimizations = 0
        self.disk_full: DiskFull | None = None  # set while appends fail for lack of space
        self._queue: deque[tuple[int, Item]] = deque()
        self._submitted = 0  # sequence number of the last submitted message
        self._done = 0  # every message with a sequence number <= this has been handled
        self._wakeup = anyio.Event()
        self._progress = anyio.Event()
        self._flush_target = 0  # messages up to this sequence number are wanted now: skip the wait
        self._since_optimize = 0
        self._appends_since_optimize = 0
        self._optimizing = False
        self._optimize_done = anyio.Event()
        self._closed = False
        self._tg: anyio.abc.TaskGroup | None = None
        # what of a batch to index (``Memory.not_evicted``: never what the capacity cleanup evicted); None = all
        self.keep: Callable[[list[Item]], Awaitable[list[Item]]] | None = None
        self.dropped = 0  # items ``keep`` left out

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Indexer:
        async with AsyncExitStack() as stack:  # the worker's task group, owned by this object until __aexit__
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._worker, name="indexer-worker")
            self._owner = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        """Drain: everything queued is embedded and appended (and a running optimize finishes)."""
        self._closed = True
        self._flush_target = self._submitted
        self._wakeup.set()
        assert self._tg is not None
        # drain; the body's own exception (if any) propagates unwrapped, not inside an ExceptionGroup
        await self._owner.aclose()
        return None

    # ------------------------------------------------------------------ API

    def submit(self, msgs: Iterable[Item]) -> None:
        """Queue messages (or document chunks) for indexing (never blocks). Empty or whitespace-only texts are skipped.

        raises RuntimeError after the indexer was closed.
        """
        if self._closed:
            raise RuntimeError("Indexer is closed")
        added = False
        for m in msgs:
            if not m.text or not m.text.strip():
                self.skipped += 1
                continue
            self._submitted += 1
            self._queue.append((self._submitted, m))
            added = True
        if added:
            self._wakeup.set()

    @property
    def pending(self) -> int:
        """Messages submitted and not yet handled."""
        return self._submitted - self._done

    async def flush(self) -> None:
        """Return once every message submitted before this call is appended (or counted as failed).

        Skips the batching wait for those messages. raises RuntimeError if the indexer is not running.
        """
        target = self._submitted
        if self._done >= target:
            return
        if self._tg is None:
            raise RuntimeError("Indexer is not running (use `async with Indexer(...)`)")
        self._flush_target = max(self._flush_target, target)
        self._wakeup.set()
        while self._done < target:
            await self._progress.wait()

    async def settle(self) -> None:
        """``flush``, then wait until no optimize is running (one may follow another: rows appended
        during an optimize start the next). The state a running bot reaches within seconds after a
        burst of messages; for benchmarks and maintenance."""
        await self.flush()
        while self._optimizing:
            await self._optimize_done.wait()

    # ------------------------------------------------------------------ worker

    async def _worker(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                with anyio.move_on_after(OPTIMIZE_WHEN_IDLE_S) as idle:
                    await self._wakeup.wait()
                if idle.cancelled_caught:
                    self._maybe_optimize(idle=True)
                    continue
                self._wakeup = anyio.Event()
                continue
            # let a partial batch fill up, unless someone is waiting for it
            if len(self._queue) < self.batch and self._flush_target < self._queue[0][0] and self.max_wait_s > 0:
                with anyio.move_on_after(self.max_wait_s):
                    while len(self._queue) < self.batch and not self._closed and self._flush_target < self._queue[0][0]:
                        await self._wakeup.wait()
                        self._wakeup = anyio.Event()
            items = [self._queue.popleft() for _ in range(min(self.bulk_batch, len(self._queue)))]
            batch = [m for _, m in items]
            if self.keep is not None:
                kept = await self._kept(batch)
                self.dropped += len(batch) - len(kept)
                batch = kept
            if batch:
                await self._index(batch)
            self._done = items[-1][0]
            self._progress.set()
            self._progress = anyio.Event()
            if not self._queue:
                self._maybe_optimize(drained=True)

    async def _kept(self, batch: list[Item]) -> list[Item]:
        """``keep(batch)``; on a failure (the store cannot be read) the whole batch, logged."""
        assert self.keep is not None
        try:
            return await self.keep(batch)
        except Exception:
            log.warning("indexer: cannot check %d messages against the evictions; indexing them", len(batch), exc_info=True)
            return batch

    async def _index(self, msgs: list[Item]) -> None:
        for attempt in range(1, _RETRIES + 1):
            try:
                vecs = await self.embedder.embed([m.text for m in msgs])
                rows = [memory_row(m, vecs[i]) for i, m in enumerate(msgs)]
                await self.vectors.add(rows)
            except DiskFull as exc:  # a retry will not help; the start-up gap check embeds them later
                if self.disk_full is None:
                    log.error("vector memory: %s", exc)
                self.disk_full = exc
                self.failed += len(msgs)
                return
            except Exception:
                if attempt == _RETRIES and len(msgs) > self.batch:
                    # a bulk window: one bad text must not cost 2,048 memories; retry it in live-sized parts
                    log.warning("indexing %d messages failed %d times; retrying in parts of %d", len(msgs), attempt, self.batch)
                    for i in range(0, len(msgs), self.batch):
                        await self._index(msgs[i : i + self.batch])
                    return
                if attempt == _RETRIES:
                    log.exception("indexing %d messages failed %d times; dropped", len(msgs), attempt)
                    self.failed += len(msgs)
                    return
                log.warning("indexing %d messages failed (attempt %d), retrying", len(msgs), attempt, exc_info=True)
                await anyio.sleep(0.1 * 2**attempt)
                continue
            self.disk_full = None
            self.indexed += len(rows)
            self._since_optimize += len(rows)
            self._appends_since_optimize += 1
            self._maybe_optimize()
            return

    def _maybe_optimize(self, *, idle: bool = False, drained: bool = False) -> None:
        """Optimize after ``optimize_every`` rows, after ``OPTIMIZE_AFTER_APPENDS`` appends (each
        append is a fragment, and fragments slow every search), when the queue drains with
        ``OPTIMIZE_ON_DRAIN_ROWS`` rows unindexed (a burst is over), or when the queue goes idle with
        anything appended since the last optimize. Checked again when an optimize finishes (rows
        appended while it ran are not in it)."""
        if self.optimize_every <= 0 or self._optimizing or not self._appends_since_optimize:
            return
        due = (
            self._since_optimize >= self.optimize_every
            or self._appends_since_optimize >= OPTIMIZE_AFTER_APPENDS
            or (drained and self._since_optimize >= OPTIMIZE_ON_DRAIN_ROWS)
            or idle
        )
        if not due:
            return
        self._appends_since_optimize = 0
        self._since_optimize = 0
        self._optimizing = True
        self._optimize_done = anyio.Event()
        assert self._tg is not None
        self._tg.start_soon(self._optimize, name="indexer-optimize")

    async def _optimize(self) -> None:
        done, ok = self._optimize_done, False
        try:
            await self.vectors.optimize()
            self.optimizations += 1
            ok = True
        except DiskFull as exc:  # the appends report it too; an optimize only costs speed
            log.warning("vector memory: not compacted: %s", exc)
        except Exception:
            log.exception("vector memory optimize failed")
        finally:
            self._optimizing = False
            if ok and not self._closed:
                self._maybe_optimize(drained=not self._queue)  # rows appended meanwhile are not in it
            done.set()
