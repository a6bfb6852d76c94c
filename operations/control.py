"""The control server of a running bot: ``/healthz``, ``/readyz``, ``/metrics`` over HTTP.

Built on aiohttp's web server: asyncio-native, so it runs in the bot's own event loop (anyio on
asyncio) with no thread and no ASGI layer; well kept (aio-libs), already installed with litellm.
Listens on ``control.host:control.port`` (127.0.0.1 by default: not reachable from other machines;
port 0 takes any free port), started before Telegram connects.

- ``GET /healthz``: 200 ``ok`` while the process runs;
- ``GET /readyz``: 200 when the stores are open, the embedding model loaded and Telegram connected,
  else 503; the body (JSON) says each part's state, e.g. ``"telegram": {"ready": false, "detail":
  "connecting, retry 3 in 8 s"}``;
- ``GET /metrics``: Prometheus text format (``actors.metrics``);
- ``POST /admin/reload``: re-read and apply the config (``actors.reload``); 200 with what changed,
  400 with the file, line and key of a broken file (the running config is kept);
- ``POST /admin/op``: run a CLI operation on the bot's open stores (``actors.operations``: ``kith
  memory stats|search|forget|reindex``, ``kith import``, ``kith sub``, ``kith usage``). Body
  ``{"op": "memory.search", "args": {...}, "console": {"width": 120, "out_terminal": true, ...}}``;
  the answer streams NDJSON frames as the operation writes: ``{"out": text}``, ``{"err": text}``,
  then ``{"exit": code}`` (with ``"error": message`` when it failed). 503 ``{"retry": true}`` while
  the stores are still opening. A client that disconnects asks the operation to stop (an import
  keeps what it read); at shutdown, operations are asked to stop, then cancelled after
  ``actors.drain_timeout_s``.

``/admin/*`` needs ``Authorization: Bearer <token>``: a random token the bot writes at start to
``<data dir>/control.json`` with the server's URL and the bot's pid (mode 0600, removed at exit;
never logged). Without it: 401. The CLI finds a running bot through that file (``actors.remote``).
"""
from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web
from rich.console import Console

from actors.errors import ControlServerError
from config.models import ControlSettings

from .health import Health
from .metrics import CONTENT_TYPE, Metrics
from .reload import ReloadReport
from .remote import CONTROL_FILE

if TYPE_CHECKING:
    from actors.services import Services

__all__ = ["TOKEN_FILE", "ControlServer", "write_token"]

log = logging.getLogger(__name__)
_PUMP_INTERVAL_S = 0.1  # how often an operation's output is sent to the client


class ControlServer:
    """``async with ControlServer(settings, health, metrics) as server:`` listens until the block
    ends; ``server.url`` is where (``http://127.0.0.1:8787``). raises ControlServerError when it
    cannot listen."""

    def __init__(self, settings: ControlSettings, health: Health, metrics: Metrics, *, token_file: Path | None = None) -> None:
        self.settings, self.health, self.metrics = settings, health, metrics
        self.url = ""
        self.token_file = token_file  # where the admin token is written (None: /admin/* is off)
        self._token = secrets.token_urlsafe(32)
        self.reload: Callable[[], ReloadReport] | None = None  # set once the runtime is up
        self._services: Services | None = None  # set by ``operations`` while the runtime is open
        self._stopping = False
        self._running: dict[anyio.CancelScope, None] = {}
        self._idle = anyio.Event()
        self._idle.set()
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/admin/reload", self._reload)
        app.router.add_post("/admin/op", self._op)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def __aenter__(self) -> ControlServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason += ": another kith run on this port?"
            raise ControlServerError(
                f"control server: cannot listen on {self.settings.host}:{self.settings.port} ({reason}); "
                "set control.port in kith.yaml to a free port (0: any), or control.enabled: false") from None
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        if self.token_file is not None:
            try:
                write_token(self.token_file, self._token, self.url)
            except OSError as exc:
                await self._runner.cleanup()
                raise ControlServerError(f"control server: cannot write {self.token_file}: {exc.strerror or exc}") from None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._runner.cleanup()
        if self.token_file is not None:
            self.token_file.unlink(missing_ok=True)

    @asynccontextmanager
    async def operations(self, services: Services, *, drain_timeout_s: float) -> AsyncIterator[None]:
        """Serve ``/admin/op`` on ``services`` (the open runtime) for the block. Leaving it asks the
        running operations to stop, waits up to ``drain_timeout_s`` for them, then cancels the rest:
        none outlives the stores."""
        self._services, self._stopping = services, False
        try:
            yield
        finally:
            self._stopping = True
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(drain_timeout_s):
                    await self._idle.wait()
                for scope in list(self._running):
                    scope.cancel()
                await self._idle.wait()
            self._services = None

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return self.token_file is not None and hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    async def _reload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized: send Authorization: Bearer <token of <data dir>/control.json>"},
                                     status=401)
        if self.reload is None:
            return web.json_response({"error": "the bot is still starting"}, status=503)
        report = self.reload()
        return web.json_response({"ok": report.ok, "summary": report.summary(), "error": report.error,
                                  "changed": report.changed, "at_next_start": report.at_next_start},
                                 status=200 if report.ok else 400)

    async def _op(self, request: web.Request) -> web.StreamResponse:
        from . import registry as operations  # deferred: the registry imports the whole memory stack

        if not self._authorized(request):
            return web.json_response({"error": "unauthorized: send Authorization: Bearer <token of <data dir>/control.json>"},
                                     status=401)
        services = self._services
        if services is None or self._stopping:
            state = "stopping" if self._stopping else "starting: its stores are not open yet"
            return web.json_response({"error": f"the bot is {state}", "retry": not self._stopping}, status=503)
        try:
            body = await request.json()
            name, args, spec = body["op"], dict(body.get("args") or {}), dict(body.get("console") or {})
            operations.get(name)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad operation request: {exc}"}, status=400)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        sink = _Sink()
        gone = False  # the client disconnected: the operation is asked to stop

        def stop() -> bool:
            return gone or self._stopping

        io = operations.Streams(_console(sink, "out", spec), _console(sink, "err", spec), stop)

        async def pump() -> None:
            nonlocal gone
            while True:
                await anyio.sleep(_PUMP_INTERVAL_S)
                if not gone:
                    try:
                        await _send(resp, sink.take())
                    except (ConnectionError, RuntimeError):
                        gone = True

        final: dict[str, Any]
        with anyio.CancelScope() as scope:
            self._running[scope] = None
            self._idle = anyio.Event() if len(self._running) == 1 else self._idle
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump)
                    try:
                        final = {"exit": await operations.run_in_bot(services, name, args, io)}
                    except operations.known_errors() as exc:
                        final = {"exit": 1, "error": str(exc)}
                    except Exception as exc:
                        log.exception("control: operation %s failed", name)
                        final = {"exit": 1, "error": f"the operation failed in the bot: {exc!r} (details in its log)"}
                    tg.cancel_scope.cancel()
            finally:
                del self._running[scope]
                if not self._running:
                    self._idle.set()
        if scope.cancelled_caught:
            final = {"exit": 1, "error": "the bot stopped before the operation finished (what it stored is kept)"}
        if not gone:
            try:
                await _send(resp, [*sink.take(), final])
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        return resp

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, parts = self.health.report()
        return web.Response(text=json.dumps({"ready": ready, "parts": parts}) + "\n", status=200 if ready else 503,
                            content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.metrics.refresh()
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


TOKEN_FILE = CONTROL_FILE  # <data dir>/control.json: url, pid and token (the CLI's side reads it: actors.remote)


def write_token(path: Path, token: str, url: str) -> None:
    """Write ``{"url", "pid", "token"}`` to ``path`` readable by this user only (0600), replacing
    any old one."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(json.dumps({"url": url, "pid": os.getpid(), "token": token}) + "\n")


class _Sink:
    """What an operation's consoles wrote, by stream, until the pump takes it. Thread-safe: rich's
    progress bars refresh from a thread of their own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: list[dict[str, str]] = []

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            if self._frames and stream in self._frames[-1]:
                self._frames[-1][stream] += text
            else:
                self._frames.append({stream: text})

    def take(self) -> list[dict[str, str]]:
        with self._lock:
            frames, self._frames = self._frames, []
        return frames


class _SinkFile:
    """The file a server-side console writes to: one stream of a ``_Sink``."""

    def __init__(self, sink: _Sink, stream: str, encoding: str) -> None:
        self.sink, self.stream, self.encoding = sink, stream, encoding

    def write(self, text: str) -> int:
        self.sink.write(self.stream, text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _console(sink: _Sink, stream: str, spec: dict[str, Any]) -> Console:
    """A console that renders as the client's own would: its width, terminal-ness, colours, encoding."""
    terminal = bool(spec.get(f"{stream}_terminal", False))
    return Console(file=_SinkFile(sink, stream, str(spec.get("encoding") or "utf-8")),  # type: ignore[arg-type]
                   width=int(spec.get(f"{stream}_width") or 80), force_terminal=terminal,
                   color_system=spec.get("color_system") if terminal else None, soft_wrap=True)


async def _send(resp: web.StreamResponse, frames: list[dict[str, Any]]) -> None:
    if frames:
        await resp.write("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in frames).encode())
