"""What the tool loop adds to a turn (issue #25): Kith's own milliseconds, without the model and the tool.

Turns run through the whole pipeline (supervisor → chat actor → memory → litellm over real HTTP to
the local OpenAI-compatible test server → outbox), one private chat, on the shipped tiers (the host
at the terminal, owner tier), with the shipped plugins (``features.registry.HANDLERS``: the
``PluginHost``). Two kinds of turn, interleaved so that the machine's load hits both alike:

- **plain**: the model offered the tools answers without calling any;
- **tool**: the model calls ``calculator`` once, reads the result, then answers (two model rounds).

Per turn, Kith's own time = total − embedding − the time inside the model's HTTP rounds (every
``LLM._call``, litellm's router included, less Kith's own callbacks from inside them: the delivery
record noted at the first streamed token) − the time inside the tool. The headline is the p50 of
tool turns minus the p50 of plain turns: what asking for tools, running the loop, framing the
result, announcing the call ("🧮 …") and recording its usage cost. Target: p50 ≤ 2 ms.
"""
from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import metric, p50_p99, progress

TARGET_ADDED_P50_MS = 2.0
KEY_ENV = "KITH_BENCH_LLM_KEY"
TOOL_TEXT = 'what is 2*(3+4)?\nCALL calculator {"expression": "2*(3+4)"}'
PLAIN_TEXT = 'what is 2*(3+4)?\nCALC calculator {"expression": "2*(3+4)"}'  # the same words; no call scripted


class _Timer:
    """Sums the time spent inside wrapped coroutines since the last ``take``; ``inside``: one runs now."""

    def __init__(self) -> None:
        self.ms = 0.0
        self.inside = 0

    def wrap(self, fn, *, within: _Timer | None = None):
        """``fn`` timed; with ``within``, the time spent while ``within`` runs is taken back from it
        (Kith's own work called back from inside a model round, e.g. the delivery record at the
        first streamed token, is not the model's)."""
        async def timed(*args: Any, **kw: Any):
            t0 = time.perf_counter()
            self.inside += 1
            try:
                return await fn(*args, **kw)
            finally:
                self.inside -= 1
                ms = (time.perf_counter() - t0) * 1000
                self.ms += ms
                if within is not None and within.inside:
                    within.ms -= ms

        return timed

    def take(self) -> float:
        ms, self.ms = self.ms, 0.0
        return ms


async def _bench(n: int, data_dir: Path, model) -> dict:
    import os

    from actors.chat import ChatActor
    from actors.events import Incoming, Sender
    from config.loader import load_config
    from config.models import ModelSpec
    from features.app import open_runtime
    from features.plugins.calculator import Calculator
    from providers.llm import LLM
    from tests.llm_server import FakeLLMServer
    from transports.local import IdAllocator, LocalOutbox

    os.environ.setdefault(KEY_ENV, "sk-bench")
    model_time, tool_time = _Timer(), _Timer()
    LLM._call = model_time.wrap(LLM._call)  # type: ignore[method-assign]  # this process only
    Calculator.run = tool_time.wrap(Calculator.run)  # type: ignore[method-assign]
    # the delivery record is noted at the first streamed token (inside the model's round) in a plain
    # turn, at the first tool call (outside it) in a tool turn: Kith's own time in both
    ChatActor.note_delivery = _Timer().wrap(ChatActor.note_delivery, within=model_time)  # type: ignore[method-assign]

    server = FakeLLMServer()
    server.start()
    try:
        shipped = load_config(None)
        models = {**shipped.settings.models, "remote": ModelSpec(model="openai/bench", api_base=server.base_url,
                                                                   api_key_env=KEY_ENV, tools=True, context_tokens=8192)}
        cfg = shipped.model_copy(update={"settings": shipped.settings.model_copy(
            update={"models": models, "default_model": "remote"})})
        reports: list = []
        host_id = 1
        async with open_runtime(cfg, data_dir, lambda m: LocalOutbox(IdAllocator(m.store.messages.max_id)), model=model,
                                on_turn=reports.append, owners=[host_id]) as rt:
            plain: list[float] = []
            tool: list[float] = []
            calls = 0
            for i in range(2 * n + 4):
                with_tool = i % 2 == 1
                text = TOOL_TEXT if with_tool else PLAIN_TEXT
                await rt.supervisor.tell(host_id, Incoming(host_id, "private", 1000 + i, Sender(host_id, "host"), text,
                                                           datetime.now(UTC)))
                await rt.supervisor.wait_all_idle()
                rep = reports[-1]
                own = rep.total_ms - rep.embed_ms - model_time.take() - tool_time.take()
                if i < 4:  # warm-up: first loads (language detector, litellm's first call)
                    continue
                if with_tool:
                    tool.append(own)
                    calls += 1
                else:
                    plain.append(own)
                if rep.error:
                    raise RuntimeError(f"turn {i} failed: {rep.error}")
            box = rt.supervisor.outbox
            replies = [m.text for m in box.sent] if isinstance(box, LocalOutbox) else []
    finally:
        server.stop()
    shown = sum(1 for r in replies if r.startswith("🧮"))
    return {"plain": plain, "tool": tool, "calls": calls, "shown": shown}


def run(quick: bool = False) -> dict:
    import anyio

    n = 40 if quick else 200
    progress(f"plugins: loading the embedding model; {n} plain and {n} tool turns, interleaved")
    model, _load_s = common.load_model_timed()
    with tempfile.TemporaryDirectory(prefix="kith-bench-plugins-") as tmp:
        r = anyio.run(_bench, n, Path(tmp), model, backend="asyncio")
    p_plain, p_tool = p50_p99(r["plain"]), p50_p99(r["tool"])
    added = p_tool[0] - p_plain[0]
    return {
        "description": "the tool loop's own cost per turn (no model, no tool time), shipped tiers and plugins",
        "params": {"turns_each": n, "tool": "calculator, one call per tool turn", "model": "test server over HTTP"},
        "metrics": [
            metric("added_by_tool_loop_p50", added, "ms", target=("<=", TARGET_ADDED_P50_MS)),
            metric("own_time_plain_p50", p_plain[0], "ms"),
            metric("own_time_plain_p99", p_plain[1], "ms"),
            metric("own_time_tool_p50", p_tool[0], "ms"),
            metric("own_time_tool_p99", p_tool[1], "ms"),
            metric("tool_calls_announced", r["shown"], "replies", target=(">=", r["calls"])),
        ],
        "notes": ["own time = total − embedding − inside the model's HTTP rounds − inside the tool",
                  "added = p50(tool turns) − p50(plain turns): the second model round's litellm overhead is "
                  "excluded with the model time"],
    }
