"""The control server of a running bot over real HTTP: /healthz, /readyz (part by part, Telegram
unreachable included), /metrics that move after a turn. The bot runs on the Telegram harness (real
pyrogram client, fake network), real stores in tmp_path, the real embedding model."""
from __future__ import annotations

import functools
import re
import socket

import anyio
import httpx
import pytest

from actors.errors import ControlServerError
from config.models import Config, ControlSettings, ModelSpec, Settings, TelegramSettings, TiersConfig
from operations.bot import serve
from operations.control import ControlServer
from operations.health import Health
from operations.metrics import Metrics
from tests.tg_harness import TelegramHarness, failing_connect

pytestmark = pytest.mark.anyio

ANY_PORT = ControlSettings(port=0)


def config(**telegram) -> Config:
    settings = Settings(models={"recall": ModelSpec(model="kith/recall")}, telegram=TelegramSettings(**telegram))
    return Config(settings=settings, tiers=TiersConfig())


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$"
    m = re.search(pattern, text, re.M)
    return float(m.group(1)) if m else None


async def test_health_ready_and_metrics_endpoints():
    health, metrics = Health(), Metrics()
    async with ControlServer(ANY_PORT, health, metrics) as server, httpx.AsyncClient(base_url=server.url) as http:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        r = await http.get("/healthz")
        assert (r.status_code, r.text) == (200, "ok\n")
        health.set("stores", True, "open")
        health.set("embedder", True, "openvino (bf16)")
        health.set("telegram", False, "connecting, retry 3 in 8 s (OSError: Network is unreachable)")
        r = await http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and body["parts"]["stores"] == {"ready": True, "detail": "open"}
        assert body["parts"]["telegram"]["detail"].startswith("connecting, retry 3 in 8 s")
        health.set("telegram", True, "connected as @kith_bot")
        assert (await http.get("/readyz")).status_code == 200
        r = await http.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE kith_turns_total counter" in r.text and "# TYPE kith_turn_seconds histogram" in r.text
        assert (await http.get("/nope")).status_code == 404
    with pytest.raises(KeyError):
        health.set("disk", True, "")


async def test_a_taken_port_is_one_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ControlServerError, match=rf"cannot listen on 127\.0\.0\.1:{port} .*control\.port"):
            async with ControlServer(ControlSettings(port=port), Health(), Metrics()):
                pass


async def test_a_running_bot_reports_readiness_and_turns(tmp_path, st_model):
    h = await TelegramHarness.create()
    failing_connect(h, [OSError(101, "Network is unreachable")] * 2)
    stop = anyio.Event()
    cfg = config(reconnect_initial_s=0.3, reconnect_max_s=0.3)
    async with anyio.create_task_group() as tg:
        app_box: dict = {}
        started = functools.partial(serve, h.client, cfg, tmp_path, model=st_model, stop=stop, control=ANY_PORT)
        tg.start_soon(_serve_and_report, started, app_box)
        # while Telegram is unreachable the control server already answers, and says why it is not ready
        states = []
        async with httpx.AsyncClient() as http:
            with anyio.fail_after(60):
                while "app" not in app_box:
                    url = app_box.get("url")
                    if url:
                        r = await http.get(url + "/readyz")
                        states.append((r.status_code, r.json()["parts"]["telegram"]["detail"]))
                    await anyio.sleep(0.05)
            app = app_box["app"]
            assert any(code == 503 and d.startswith("connecting, retry") and "Network is unreachable" in d for code, d in states)
            r = await http.get(app.control_url + "/readyz")
            assert r.status_code == 200 and r.json()["parts"]["telegram"]["detail"].startswith("connected as @")
            before = (await http.get(app.control_url + "/metrics")).text
            assert metric(before, "kith_turns_total", answered="true") is None
            ann = h.user(555, "Ann")
            await h.private(ann, "what did we talk about yesterday?")
            await h.settle(app.runtime.supervisor)
            await app.runtime.memory.flush()  # the message embedded and stored
            after = (await http.get(app.control_url + "/metrics")).text
        stop.set()
    assert h.texts(555)  # answered
    assert metric(after, "kith_turns_total", answered="true") == 1.0
    assert metric(after, "kith_turn_seconds_count") == 1.0
    assert metric(after, "kith_actors_alive") == 1.0 and metric(after, "kith_actors_spawned_total") == 1.0
    assert metric(after, "kith_embedder_texts_total") >= 1 and metric(after, "kith_indexer_queue") == 0.0
    assert metric(after, "kith_updates_received_total") >= 1
    assert metric(after, "kith_llm_requests_total", model="recall", tier="free") == 1.0  # by model and tier
    assert metric(after, "kith_ttft_seconds_count") == 1.0
    assert 0 < metric(after, "kith_ttft_seconds_sum") <= metric(after, "kith_turn_seconds_sum")
    assert metric(after, "kith_embedder_batch_seconds_count") >= 1 and metric(after, "kith_embedder_batch_seconds_sum") > 0
    assert metric(after, "kith_store_writer_lag_seconds") == 0.0  # flushed: nothing waits for DuckDB
    assert metric(after, "kith_memory_rows") >= 1 and metric(after, "kith_inbox_depth") == 0.0
    assert metric(after, "kith_telegram_flood_wait_seconds_total") == 0.0


async def _serve_and_report(start, box: dict) -> None:
    """Run ``serve`` and put its BotApp into ``box`` once started; the control server's URL as soon
    as it listens (read from the log line, before Telegram connects)."""
    import logging

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            m = re.match(r"control server on (\S+)", record.getMessage())
            if m:
                box["url"] = m.group(1)

    handler = Catch()
    logger = logging.getLogger("operations.bot")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with anyio.create_task_group() as tg:
            box["app"] = await tg.start(start)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)

