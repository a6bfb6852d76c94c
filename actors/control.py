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
  400 with the file, line and key of a broken file (the running config is kept).

``/admin/*`` needs ``Authorization: Bearer <token>``: a random token the bot writes at start to
``<data dir>/control.token`` (mode 0600, removed at exit; never logged). Without it: 401.
"""
from __future__ import annotations

import errno
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from aiohttp import web

from config.models import ControlSettings

from .errors import ControlServerError
from .health import Health
from .metrics import CONTENT_TYPE, Metrics
from .reload import ReloadReport

log = logging.getLogger(__name__)


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
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/admin/reload", self._reload)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def __aenter__(self) -> "ControlServer":
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
                write_token(self.token_file, self._token)
            except OSError as exc:
                await self._runner.cleanup()
                raise ControlServerError(f"control server: cannot write {self.token_file}: {exc.strerror or exc}") from None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._runner.cleanup()
        if self.token_file is not None:
            self.token_file.unlink(missing_ok=True)

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return self.token_file is not None and hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    async def _reload(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized: send Authorization: Bearer <data dir>/control.token"}, status=401)
        if self.reload is None:
            return web.json_response({"error": "the bot is still starting"}, status=503)
        report = self.reload()
        return web.json_response({"ok": report.ok, "summary": report.summary(), "error": report.error,
                                  "changed": report.changed, "at_next_start": report.at_next_start},
                                 status=200 if report.ok else 400)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, parts = self.health.report()
        return web.Response(text=json.dumps({"ready": ready, "parts": parts}) + "\n", status=200 if ready else 503,
                            content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


TOKEN_FILE = "control.token"


def write_token(path: Path, token: str) -> None:
    """Write ``token`` to ``path`` readable by this user only (0600), replacing any old one."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
