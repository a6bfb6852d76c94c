"""Supervisor: spawns a ChatActor per chat on demand, evicts idle ones, restarts crashed ones,
and drains every inbox on shutdown (docs/design.md §2).

Each chat has a record holding its bounded inbox (an anyio memory object stream). The inbox
outlives the actor instance: when an actor crashes, the supervisor starts a fresh one on the same
inbox, so events queued behind the failing one are kept. Restarts are bounded: after
``max_restarts`` within ``restart_window_s`` the supervisor waits out the window before the next.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from config.models import ActorSettings
from memory.errors import DiskFull
from memory.types import StoredMessage

from .chat import ChatActor
from .errors import SupervisorClosed
from .events import Call, CallResult, ChatEvent, ConfigChanged, Incoming, with_caption
from .handlers import NO_HANDLERS, Handlers, Plugins
from .outbox import Outbox
from .services import Services, SupervisorStats

T = TypeVar("T")

log = logging.getLogger(__name__)


class Actor(Protocol):
    """What the supervisor runs per chat (``ChatActor``; tests and benchmarks may give another)."""

    async def start(self) -> None: ...
    async def run(self, inbox: AsyncIterator[ChatEvent], on_handled: Callable[[], None] = ...) -> None: ...


ActorFactory = Callable[[int, Services, Outbox], Actor]


@dataclass(eq=False)
class _ActorRecord:
    chat_id: int
    send: MemoryObjectSendStream[ChatEvent]
    receive: MemoryObjectReceiveStream[ChatEvent]
    last_active: float
    pending: int = 0  # told but not yet handled
    closing: bool = False
    idle: anyio.Event = field(default_factory=anyio.Event)
    stopped: anyio.Event = field(default_factory=anyio.Event)
    restarts: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.idle.set()


class Supervisor:
    """Owns every chat actor. Use as ``async with Supervisor(services, outbox, settings) as sup:``.

    ``await sup.tell(chat_id, event)`` queues an event (waits when the chat's inbox is full:
    back-pressure); ``await sup.wait_idle(chat_id)`` / ``wait_all_idle()`` wait until handled.
    Leaving the context closes every inbox and waits up to ``drain_timeout_s`` for the drain, then
    cancels what is left. raises SupervisorClosed from ``tell`` once shutdown began.
    """

    def __init__(
        self,
        services: Services,
        outbox: Outbox,
        settings: ActorSettings,
        *,
        handlers: Handlers = NO_HANDLERS,
        plugins: Plugins | None = None,
        factory: ActorFactory | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.svc = services
        self.outbox = outbox
        self.settings = settings
        self.handlers = handlers
        self.plugins = plugins
        self.factory: ActorFactory = factory or (lambda chat_id, svc, box: ChatActor(chat_id, svc, box, handlers, plugins))
        self._now = monotonic
        self._actors: dict[int, _ActorRecord] = {}
        self._tg: TaskGroup | None = None
        self._owner: AsyncExitStack | None = None  # holds the task group while the supervisor runs
        self._closed = False
        self.stats = SupervisorStats()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Supervisor:
        # the actors' task group, owned by this object until __aexit__; a start that fails half-way
        # cancels what it started and closes the group before its error propagates (as itself)
        stack = AsyncExitStack()
        try:
            self._tg = tg = await stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._reaper, name="supervisor-reaper")
        except BaseException:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._owner = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        self._closed = True
        assert self._tg is not None and self._owner is not None
        for rec in list(self._actors.values()):
            rec.closing = True
            rec.send.close()
        try:
            with anyio.move_on_after(self.settings.drain_timeout_s) as scope:
                for rec in list(self._actors.values()):
                    await rec.stopped.wait()
            if scope.cancelled_caught:
                log.warning("shutdown: %d chat(s) did not drain within %.0f s", len(self._actors), self.settings.drain_timeout_s)
        finally:  # even when the drain itself is cancelled: the task group's scope must be left here, in order
            self._tg.cancel_scope.cancel()
            owner, self._owner = self._owner, None
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                # the body was cancelled, maybe by this group (an actor failed, e.g. DiskFull): the group
                # absorbs its own cancellation and raises what the actor raised
                await owner.__aexit__(exc_type, exc, tb)
            else:
                await owner.aclose()  # the body's exception propagates unwrapped
        return None

    @property
    def active(self) -> int:
        """Number of live chat actors."""
        return len(self._actors)

    @property
    def inbox_depth(self) -> int:
        """Events told to live actors and not handled yet (the one in hand included), all chats."""
        return sum(rec.pending for rec in self._actors.values())

    # ------------------------------------------------------------------ API

    async def tell(self, chat_id: int, event: ChatEvent) -> None:
        """Queue ``event`` for chat ``chat_id``, spawning its actor if needed. Order per chat is kept."""
        while True:
            if self._closed:
                raise SupervisorClosed("the bot is shutting down")
            rec = self._actors.get(chat_id)
            if rec is None:
                rec = self._spawn(chat_id)
            elif rec.closing:
                await rec.stopped.wait()  # an evicted actor finishing; spawn a fresh one
                continue
            rec.pending += 1
            if rec.pending == 1:
                rec.idle = anyio.Event()
            rec.last_active = self._now()
            try:
                rec.send.send_nowait(event)
            except anyio.WouldBlock:
                try:
                    await rec.send.send(event)
                except BaseException:
                    self._done_one(rec)
                    raise
            return

    async def offer(self, chat_id: int, event: ChatEvent) -> bool:
        """Queue ``event`` like ``tell`` without ever waiting for a full inbox: True when queued.

        For a transport that serves every chat from one dispatcher (Telegram): one chat's full inbox
        must not hold up the others. On False the caller handles the overflow (``overflow``).
        raises SupervisorClosed once shutdown began."""
        rec = self._actors.get(chat_id)
        if rec is not None and not rec.closing:
            st = rec.send.statistics()
            if st.current_buffer_used >= st.max_buffer_size:
                return False
        await self.tell(chat_id, event)  # room (or a new actor): queued at once
        return True

    async def call(self, chat_id: int, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``await work(actor)`` in chat ``chat_id``'s actor after the events queued before it
        (spawning the actor if needed) and return its value; its exception is raised here.
        raises SupervisorClosed once shutdown began."""
        result: CallResult[T] = CallResult()
        await self.tell(chat_id, Call(chat_id, work, result))
        return await result.wait()

    async def refresh(self, chat_ids: Iterable[int]) -> None:
        """The live actors among ``chat_ids`` re-read their settings and context from the stores
        (after the CLI changed them); none is spawned for it."""
        for chat_id in chat_ids:
            rec = self._actors.get(chat_id)
            if rec is not None and not rec.closing and not self._closed:
                await self.tell(chat_id, ConfigChanged(chat_id))

    def overflow(self, event: ChatEvent) -> None:
        """Keep a message that found its chat's inbox full: stored (and queued for memory) without
        an answer, so nothing said in the chat is lost while the bot is busy there."""
        self.stats.overflowed += 1
        if not isinstance(event, Incoming):
            return
        text = with_caption(event.media, event.text) if event.media is not None else event.text
        self.svc.memory.remember(StoredMessage(event.chat_id, event.message_id, event.sender.user_id, event.sender.name,
                                               text, event.date, reply_to=event.reply_to, thread_id=event.thread_id))

    async def wait_idle(self, chat_id: int) -> None:
        """Wait until every event told to ``chat_id`` so far has been handled."""
        rec = self._actors.get(chat_id)
        if rec is not None:
            await rec.idle.wait()

    async def wait_all_idle(self) -> None:
        """Wait until every chat's inbox is drained and no turn is running."""
        while True:
            busy = [r for r in self._actors.values() if r.pending]
            if not busy:
                return
            for rec in busy:
                await rec.idle.wait()

    # ------------------------------------------------------------------ internals

    def _spawn(self, chat_id: int) -> _ActorRecord:
        assert self._tg is not None
        send, receive = anyio.create_memory_object_stream[ChatEvent](self.settings.inbox_size)
        rec = _ActorRecord(chat_id, send, receive, self._now())
        self._actors[chat_id] = rec
        self.stats.spawned += 1
        self._tg.start_soon(self._actor_main, rec, name=f"chat-{chat_id}")
        return rec

    def _done_one(self, rec: _ActorRecord) -> None:
        rec.pending -= 1
        rec.last_active = self._now()
        self.stats.handled += 1
        if rec.pending <= 0:
            rec.pending = 0
            rec.idle.set()

    async def _actor_main(self, rec: _ActorRecord) -> None:
        try:
            while True:
                actor = self.factory(rec.chat_id, self.svc, self.outbox)
                try:
                    await actor.start()
                    async with rec.receive.clone() as inbox:
                        await actor.run(inbox, on_handled=lambda: self._done_one(rec))
                    return  # inbox closed and drained
                except DiskFull:
                    raise  # not this chat's fault and not cured by a restart: stop intake (the runtime ends)
                except Exception:
                    log.exception("chat %s: actor crashed; restarting", rec.chat_id)
                    await self._before_restart(rec)
                    self.stats.restarted += 1
        finally:
            rec.receive.close()
            rec.idle.set()
            rec.stopped.set()
            if self._actors.get(rec.chat_id) is rec:
                del self._actors[rec.chat_id]

    async def _before_restart(self, rec: _ActorRecord) -> None:
        now = self._now()
        window = self.settings.restart_window_s
        while rec.restarts and now - rec.restarts[0] > window:
            rec.restarts.popleft()
        if len(rec.restarts) >= self.settings.max_restarts:
            wait = window - (now - rec.restarts[0])
            log.error(
                "chat %s: %d crashes within %.0f s; next restart in %.1f s (queued events kept)",
                rec.chat_id, len(rec.restarts), window, wait,
            )
            await anyio.sleep(max(0.0, wait))
            rec.restarts.clear()
        rec.restarts.append(self._now())

    async def _reaper(self) -> None:
        ttl = self.settings.idle_ttl_s
        period = max(0.05, min(ttl / 4, 5.0))
        while True:
            await anyio.sleep(period)
            now = self._now()
            for rec in list(self._actors.values()):
                if not rec.closing and rec.pending == 0 and now - rec.last_active >= ttl:
                    rec.closing = True
                    rec.send.close()
                    self.stats.evicted += 1
                    log.debug("chat %s: evicted after %.0f s idle", rec.chat_id, now - rec.last_active)


__all__ = ["Supervisor", "SupervisorStats"]
