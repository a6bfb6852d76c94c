"""The control server of a running bot: ``/healthz``, ``/readyz``, ``/metrics`` over HTTP.

Built on aiohttp's web server: asyncio-native, so it runs in the bot's own event loop (anyio on
asyncio) with no thread and no ASGI layer; well kept (aio-libs), already installed with litellm.
Listens on ``control.host:control.port`` (127.0.0.1 by default: not reachable from other machines;
port 0 takes any free port), started before Telegram connects.

- ``GET /healthz``: 200 ``ok`` while the process runs;
- ``GET /readyz``: 200 when the stores are open, the embedding model loaded and Telegram connected,
  else 503; the body (JSON) says each part's state, e.g. ``"telegram": {"ready": false, "detail":
  "connecting, retry 3 in 8 s"}``;
- ``GET /metrics``: Prometheus text format (``actors.metrics``).
"""
from __future__ import annotations

import errno
import json
import logging
import os
from types import TracebackType

from aiohttp import web

from config.models import ControlSettings

from .errors import ControlServerError
from .health import Health
from .metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)


class ControlServer:
    """``async with ControlServer(settings, health, metrics) as server:`` listens until the block
    ends; ``server.url`` is where (``http://127.0.0.1:8787``). raises ControlServerError when it
    cannot listen."""

    def __init__(self, settings: ControlSettings, health: Health, metrics: Metrics) -> None:
        self.settings, self.health, self.metrics = settings, health, metrics
        self.url = ""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
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
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, parts = self.health.report()
        return web.Response(text=json.dumps({"ready": ready, "parts": parts}) + "\n", status=200 if ready else 503,
                            content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})
