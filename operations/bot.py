"""The Telegram transport's run loop: client, handlers, runtime, shutdown (docs/design.md §2, §8).

``run_bot`` builds the ``pyrogram.Client`` (kurigram) inside the running loop from the environment's
credentials and calls ``serve``, which:

1. registers the handlers *before* the client starts, so nothing that arrives — including the
   updates ``recover_gaps`` fetches at start for the time the bot was offline — is missed; they
   wait in order until the router is attached;
2. opens the runtime with the ``TelegramOutbox`` (a second bot on the same data directory stops
   here, on the store's lock, before touching Telegram);
3. starts the client (``skip_updates=False``: kurigram 2.2.26 recovers gaps at start and after a
   silence; its default skips them), fills ``BotIdentity`` from ``get_me()``, attaches the router,
   sets the command menu;
4. runs until SIGINT/SIGTERM (or ``stop``); then stops taking updates (the ones already queued are
   dropped and their pts rewound, new ones are not acknowledged), waits up to
   ``actors.drain_timeout_s`` for the turns in flight (their replies still go out), rewinds the
   update state and stops the client, then leaves the runtime — so every update not handled now is
   delivered again at the next start. Re-delivered messages are stored and answered once (the
   transport's LRU and the chat actor's recent window).

Under systemd (``Type=notify``, deploy/kith.service) it reports ``STATUS=`` while connecting,
``READY=1`` once updates are handled and ``STOPPING=1`` when the drain begins (``operations.systemd``).
"""
from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from actors.runtime import Runtime, frozen_startup_heap
from actors.services import BotIdentity
from config.models import Config, ControlSettings
from config.secrets import telegram_credentials
from features.app import open_runtime
from transports.telegram.client import build_client, connect, set_commands, stop_receiving
from transports.telegram.outbox import TelegramOutbox
from transports.telegram.updates import UpdateRouter

from .control import TOKEN_FILE, ControlServer
from .health import Health
from .metrics import Metrics
from .reload import reload_config
from .systemd import notify

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BotApp:
    """A running bot (what ``serve`` reports once ready)."""

    client: Any
    runtime: Runtime
    outbox: TelegramOutbox
    router: UpdateRouter
    identity: BotIdentity
    health: Health = field(default_factory=Health)
    metrics: Metrics | None = None
    control_url: str = ""  # the control server's URL ("" when it is off)


async def run_bot(config: Config, data_dir: Path, *, model=None) -> None:
    """Run the Telegram bot until SIGINT/SIGTERM. raises config.errors.MissingSecret without credentials."""
    creds = telegram_credentials()
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    client = build_client(config, data_dir, creds)
    await serve(client, config, data_dir, model=model, control=config.settings.control)


async def serve(
    client: Any,
    config: Config,
    data_dir: Path,
    *,
    model=None,
    llm=None,
    outbox: TelegramOutbox | None = None,
    stop: anyio.Event | None = None,
    control: ControlSettings | None = None,
    task_status: TaskStatus[BotApp] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bot on ``client`` (not started yet) until ``stop`` is set (None: until SIGINT/SIGTERM).

    model/llm: passed to ``open_runtime``; outbox: a prepared ``TelegramOutbox`` (tests pass one on a
    fake clock). control: start the control server (``actors.control``) first, before the stores
    open and Telegram connects (``kith run`` passes ``config.settings.control``).
    ``task_status.started(BotApp)`` once updates are being handled. raises ControlServerError when
    the control server cannot listen.
    """
    health, metrics = Health(), Metrics()
    async with AsyncExitStack() as stack:
        server = None
        if control is not None and control.enabled:
            server = await stack.enter_async_context(ControlServer(control, health, metrics, token_file=data_dir / TOKEN_FILE))
            log.info("control server on %s", server.url)
        reloader: list[Callable[[], object]] = []  # filled once the runtime is up
        # a real process (no stop event given): SIGHUP re-reads the config, and never kills the bot
        async with _reload_signal(reloader, watch=stop is None):
            await _serve(client, config, data_dir, model, llm, outbox, stop, health, metrics, server, reloader, task_status)


async def _serve(client: Any, config: Config, data_dir: Path, model, llm, outbox: TelegramOutbox | None,
                 stop: anyio.Event | None, health: Health, metrics: Metrics, server: ControlServer | None,
                 reloader: list[Callable[[], object]], task_status: TaskStatus[BotApp]) -> None:
    settings = config.settings
    url = server.url if server is not None else ""
    outbox = outbox or TelegramOutbox(client, settings.telegram, stream_interval_s=settings.llm.stream_edit_interval_s)
    router = UpdateRouter(client, outbox, settings.telegram)
    router.register(client)
    metrics.attach_transport(router.stats, outbox.limits.stats)
    await anyio.lowlevel.checkpoint()  # add_handler registers from a task: let it run before updates can flow

    async with _stop_signal(stop) as stopped:
        # The runtime first: a second bot on the same data directory fails here, on the store's lock,
        # before it touches Telegram (and takes updates the running bot should get).
        health.set("stores", False, "opening")
        health.set("embedder", False, "loading")
        async with open_runtime(config, data_dir, outbox, model=model, llm=llm, on_turn=metrics.observe_turn) as rt, \
                AsyncExitStack() as ops_stack:
            emb = rt.memory.embedder
            health.set("stores", True, "open")
            health.set("embedder", True, f"{emb.backend} ({emb.encoder.precision})")
            metrics.attach(rt)
            reload = functools.partial(reload_config, rt.services, config.settings_file)
            if server is not None:
                server.reload = reload
                # the CLI's operations run on these stores from now on, and stop before they close
                await ops_stack.enter_async_context(server.operations(rt.services, drain_timeout_s=settings.actors.drain_timeout_s))
            reloader.append(reload)
            if not await connect(client, stopped, settings.telegram, on_state=functools.partial(_telegram_state, health)):
                notify("STOPPING=1", "STATUS=stopped before Telegram could be reached")
                log.info("stopped before Telegram could be reached")
                return
            try:
                me = client.me or await client.get_me()
                name = " ".join(p for p in (me.first_name, me.last_name) if p) or settings.bot.name
                identity = BotIdentity(me.id, name, me.username)
                rt.services.bot = identity  # read by the actors at use time; none has run yet
                async with anyio.create_task_group() as notices:
                    router.attach(rt.supervisor, identity, can_read_all_group_messages=me.can_read_all_group_messages,
                                  spawn=notices.start_soon)
                    await set_commands(client)
                    log.info("@%s (id %s) is running", identity.username, identity.user_id)
                    health.set("telegram", True, f"connected as @{identity.username}")
                    notify("READY=1", f"STATUS=connected as @{identity.username}")
                    with frozen_startup_heap() as frozen:
                        log.debug("start-up heap frozen: %d objects", frozen)
                        task_status.started(BotApp(client, rt, outbox, router, identity, health, metrics, url))
                        await stopped.wait()
                    log.info("stopping: no new updates; draining the turns in flight")
                    notify("STOPPING=1", "STATUS=stopping: draining the turns in flight")
                    health.set("telegram", False, "stopping")
                    stop_receiving(client, router)
                    drain = settings.actors.drain_timeout_s
                    with anyio.move_on_after(drain) as scope:
                        await rt.supervisor.wait_all_idle()  # their replies still go out
                    if scope.cancelled_caught:
                        log.warning("shutdown: turns still running after %.0f s; their replies are lost", drain)
                    notices.cancel_scope.cancel()  # pending notices are not worth waiting for
            finally:
                stop_receiving(client, router)
                with anyio.CancelScope(shield=True):
                    await router.rewind(client.storage)
                    await client.stop()
                metrics.attach(None)
        log.info("stopped")


def _telegram_state(health: Health, state: str) -> None:
    """``connect``'s progress (``"connecting, retry 3 in 8 s (…)"``): to /readyz and systemd's status."""
    health.set("telegram", False, state)
    notify(f"STATUS=telegram: {state}")


# what an unreachable or flaky network raises from Client.start() (kurigram also lets a KeyError out
# of its session start when the first connection fails); anything else, Telegram's refusals
# (RPCError: a bad token or API id) included, is not retried
class _SignalWatcher:
    """A task watching signals while the ``async with`` body runs (when ``watch``), in a task group
    this object owns (entered through an exit stack, so the body's own exceptions propagate
    unwrapped, not in an ExceptionGroup). The body runs once the signal handlers are installed; when
    they cannot be (e.g. not the main thread), entering raises that error, the group already closed."""

    def __init__(self, *, watch: bool) -> None:
        self.watch = watch
        self._owner: AsyncExitStack | None = None  # holds the task group while the body runs

    async def _start(self) -> None:
        if not self.watch:
            return
        stack = AsyncExitStack()
        tg = None
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            await tg.start(self._watch)
        except BaseException:
            if tg is not None:
                tg.cancel_scope.cancel()
            await stack.aclose()
            raise
        stack.callback(tg.cancel_scope.cancel)  # leaving stops the watcher (before joining it)
        self._owner = stack

    async def _watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    async def __aexit__(self, *exc: Any) -> bool | None:
        owner, self._owner = self._owner, None
        if owner is not None:
            await owner.aclose()
        return None


class _stop_signal(_SignalWatcher):
    """``async with _stop_signal(event) as ev``: ``ev`` is set on SIGINT/SIGTERM, or is ``event``."""

    def __init__(self, event: anyio.Event | None) -> None:
        super().__init__(watch=event is None)
        self.event = event or anyio.Event()

    async def __aenter__(self) -> anyio.Event:
        await self._start()
        return self.event

    async def _watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                self.event.set()
                return


class _reload_signal(_SignalWatcher):
    """``async with _reload_signal(reloader, watch=True)``: SIGHUP calls ``reloader[0]`` (once the
    runtime put it there; before, it is logged and ignored)."""

    def __init__(self, reloader: list[Callable[[], object]], *, watch: bool) -> None:
        super().__init__(watch=watch)
        self.reloader = reloader

    async def __aenter__(self) -> None:
        await self._start()

    async def _watch(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as received:
            task_status.started()
            async for _ in received:
                if not self.reloader:
                    log.warning("received SIGHUP while starting: ignored (send it again once the bot runs)")
                    continue
                log.info("received SIGHUP: reloading the config")
                self.reloader[0]()


__all__ = ["BotApp", "run_bot", "serve"]
