"""providers.llm over real HTTP: litellm → the OpenAI-compatible test server on 127.0.0.1 (tests/llm_server.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from config.models import LLMSettings, ModelSpec
from memory.types import MemoryHit
from providers.errors import (
    AuthenticationFailed,
    BadRequest,
    ModelNotConfigured,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from providers.llm import LLM, Completion
from providers.memory_block import render_memories
from providers.recall_model import HEADER, NOTHING_FOUND
from tests.llm_server import FakeLLMServer, answer_for, llm_server

pytestmark = pytest.mark.anyio

KEY_ENV = "KITH_TEST_LLM_KEY"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "dummy-key")


def spec(server: FakeLLMServer, name: str, *fallbacks: str, **kw) -> ModelSpec:
    return ModelSpec(model=f"openai/{name}", api_base=server.base_url, api_key_env=KEY_ENV, fallbacks=fallbacks, **kw)


_open: list[LLM] = []


def make_llm(models: dict[str, ModelSpec], *, num_retries: int = 0, concurrency: int = 8) -> LLM:
    llm = LLM(models, LLMSettings(num_retries=num_retries, concurrency=concurrency))
    _open.append(llm)
    return llm


@pytest.fixture(autouse=True)
async def _close_llms(anyio_backend: str):
    yield
    while _open:
        await _open.pop().aclose()  # litellm's cached HTTP clients of this test's event loop


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are Kith."}, {"role": "user", "content": text}]


def server_usage(messages: list[dict], answer: str) -> tuple[int, int]:
    return sum(len(m["content"].split()) + 3 for m in messages), len(answer.split())


class Deltas:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, delta: str) -> None:
        self.items.append(delta)


# ---------------------------------------------------------------- plain and streaming


async def test_plain_completion_text_and_usage(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"main": spec(llm_server, "ok-main")})
    msgs = user("hello there, how are you")
    c = await llm.complete("main", msgs)
    assert isinstance(c, Completion)
    assert c.text == "echo: hello there, how are you"
    assert (c.prompt_tokens, c.completion_tokens) == server_usage(msgs, c.text)
    assert c.model == "main" and c.litellm_model == "openai/ok-main" and not c.fell_back
    assert c.cost_usd is None  # unpriced model: unknown, not 0
    assert c.latency_ms > 0
    (req,) = llm_server.requests
    assert req.model == "ok-main" and not req.stream
    assert req.headers["authorization"] == "Bearer dummy-key"  # from api_key_env
    assert req.body["max_tokens"] == 1024  # spec.max_output_tokens by default


async def test_streaming_deltas_in_order_and_usage(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"main": spec(llm_server, "ok-main")})
    msgs = user("one two three four five six")
    deltas = Deltas()
    c = await llm.complete("main", msgs, on_delta=deltas)
    expected = "echo: one two three four five six"
    assert c.text == expected
    assert len(deltas.items) >= 5 and "".join(deltas.items) == expected
    assert deltas.items[0] == "echo:" and deltas.items[1] == " one"  # in the server's order
    assert (c.prompt_tokens, c.completion_tokens) == server_usage(msgs, expected)
    (req,) = llm_server.requests
    assert req.stream and req.body.get("stream_options") == {"include_usage": True}


async def test_max_tokens_is_passed(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"main": spec(llm_server, "ok-main", max_output_tokens=50)})
    c = await llm.complete("main", user("a b c d e f"), max_tokens=3)
    assert c.text == "echo: a b"
    assert [r.body["max_tokens"] for r in llm_server.requests] == [3]
    await llm.complete("main", user("x"))
    assert llm_server.requests[-1].body["max_tokens"] == 50


async def test_temperature_from_spec(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"main": spec(llm_server, "ok-main", temperature=0.2)})
    await llm.complete("main", user("x"))
    assert llm_server.requests[0].body["temperature"] == 0.2


# ---------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("failing", ["rate-limit-first", "error-first"])
async def test_failure_falls_back_to_second(llm_server: FakeLLMServer, failing: str, stream: bool) -> None:
    llm = make_llm({"first": spec(llm_server, failing, "second"), "second": spec(llm_server, "ok-second")})
    deltas = Deltas()
    c = await llm.complete("first", user("hi there"), on_delta=deltas if stream else None)
    assert c.text == "echo: hi there"
    assert c.model == "second" and c.litellm_model == "openai/ok-second" and c.fell_back
    assert llm_server.models_seen() == [failing, "ok-second"]
    if stream:
        assert "".join(deltas.items) == c.text


async def test_retries_then_falls_back(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"first": spec(llm_server, "rate-limit-first", "second"), "second": spec(llm_server, "ok-second")}, num_retries=1)
    c = await llm.complete("first", user("hi"))
    assert c.model == "second"
    assert llm_server.models_seen() == ["rate-limit-first", "rate-limit-first", "ok-second"]


async def test_fallbacks_tried_in_order(llm_server: FakeLLMServer) -> None:
    llm = make_llm({
        "a": spec(llm_server, "error-a", "b", "c"),
        "b": spec(llm_server, "rate-limit-b"),
        "c": spec(llm_server, "ok-c"),
    })
    c = await llm.complete("a", user("q"))
    assert c.model == "c" and c.fell_back
    assert llm_server.models_seen() == ["error-a", "rate-limit-b", "ok-c"]


async def test_fallbacks_are_transitive(llm_server: FakeLLMServer) -> None:
    # litellm's Router follows a fallback's own fallbacks (documented in providers.llm)
    llm = make_llm({"a": spec(llm_server, "error-a", "b"), "b": spec(llm_server, "error-b", "c"), "c": spec(llm_server, "ok-c")})
    c = await llm.complete("a", user("q"))
    assert c.model == "c"
    assert llm_server.models_seen() == ["error-a", "error-b", "ok-c"]


async def test_no_cooldown_after_failures(llm_server: FakeLLMServer) -> None:
    # a failing alias is tried again on the next call (no cooldown turning it into "no deployments")
    llm = make_llm({"a": spec(llm_server, "error-a", "b"), "b": spec(llm_server, "ok-b")})
    for _ in range(4):
        assert (await llm.complete("a", user("q"))).model == "b"
    assert llm_server.models_seen() == ["error-a", "ok-b"] * 4


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("first", "second", "error"),
    [
        ("rate-limit-a", "rate-limit-b", RateLimited),
        ("error-a", "error-b", ProviderUnavailable),
        ("rate-limit-a", "error-b", RateLimited),  # the requested model's error; the detail names the fallback's
        ("error-a", "rate-limit-b", ProviderUnavailable),
    ],
)
async def test_all_models_failing_raise_our_error(llm_server: FakeLLMServer, first: str, second: str, error: type, stream: bool) -> None:
    import litellm
    import openai

    llm = make_llm({"a": spec(llm_server, first, "b"), "b": spec(llm_server, second)})
    with pytest.raises(error) as info:
        await llm.complete("a", user("q"), on_delta=Deltas() if stream else None)
    err = info.value
    assert type(err) is error and not isinstance(err, (openai.OpenAIError,))
    assert type(err).__module__ == "providers.errors"
    assert err.__cause__ is not None and type(err.__cause__).__module__.startswith(("litellm", "openai"))
    assert "a [openai/" in str(err) and second in str(err)  # the detail is kept for the log
    assert err.user_message
    assert llm_server.models_seen() == [first, second]
    assert not any(isinstance(err, t) for t in (litellm.RateLimitError, litellm.InternalServerError))


@pytest.mark.parametrize(("name", "error"), [("auth-a", AuthenticationFailed), ("bad-a", BadRequest)])
async def test_client_errors(llm_server: FakeLLMServer, name: str, error: type) -> None:
    llm = make_llm({"a": spec(llm_server, name)}, num_retries=1)
    with pytest.raises(error):
        await llm.complete("a", user("q"))
    assert llm_server.models_seen() == [name]  # not retried


@pytest.mark.parametrize("name", ["auth-a", "bad-a"])
async def test_client_errors_fall_back_too(llm_server: FakeLLMServer, name: str) -> None:
    # litellm 1.106.2 falls back on 400/401 as well (a bigger-context or differently keyed model may answer)
    llm = make_llm({"a": spec(llm_server, name, "b"), "b": spec(llm_server, "ok-b")})
    assert (await llm.complete("a", user("q"))).model == "b"
    assert llm_server.models_seen() == [name, "ok-b"]


async def test_connection_refused_is_unavailable() -> None:
    with FakeLLMServer() as server:
        models = {"a": spec(server, "ok-a")}
    llm = make_llm(models)  # the server is gone: nothing listens on its port
    with pytest.raises(ProviderUnavailable):
        await llm.complete("a", user("q"))


# ---------------------------------------------------------------- timeouts and broken streams


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_timeout(llm_server: FakeLLMServer, stream: bool) -> None:
    llm = make_llm({"slow": spec(llm_server, "slow-5", timeout_s=0.5)})
    t0 = time.perf_counter()
    with pytest.raises(ProviderTimeout) as info:
        await llm.complete("slow", user("q"), on_delta=Deltas() if stream else None)
    assert time.perf_counter() - t0 < 3.0
    assert info.value.__cause__ is not None


async def test_timeout_falls_back(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"slow": spec(llm_server, "slow-5", "fast", timeout_s=0.5), "fast": spec(llm_server, "ok-fast")})
    c = await llm.complete("slow", user("q"))
    assert c.model == "fast" and c.fell_back


async def test_slow_within_timeout_answers(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"slow": spec(llm_server, "slow-0.2", timeout_s=5)})
    c = await llm.complete("slow", user("patience"))
    assert c.text == "echo: patience" and c.latency_ms >= 200


async def test_stream_broken_after_text_raises_without_fallback(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"a": spec(llm_server, "broken-a", "b"), "b": spec(llm_server, "ok-b")})
    deltas = Deltas()
    with pytest.raises(ProviderUnavailable):
        await llm.complete("a", user("one two three four"), on_delta=deltas)
    assert "".join(deltas.items) == "echo: one"  # what arrived before the cut; nothing spliced after it
    assert llm_server.models_seen() == ["broken-a"]


async def test_on_delta_error_propagates_unchanged(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"a": spec(llm_server, "ok-a")})

    class Boom(Exception):
        pass

    async def on_delta(delta: str) -> None:
        raise Boom(delta)

    with pytest.raises(Boom):
        await llm.complete("a", user("x y z"), on_delta=on_delta)
    # the LLM still works afterwards
    assert (await llm.complete("a", user("again"))).text == "echo: again"


async def test_cancellation_is_not_translated(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"slow": spec(llm_server, "slow-5", timeout_s=10)})
    t0 = time.perf_counter()
    with anyio.move_on_after(0.3) as scope:
        await llm.complete("slow", user("q"))
    assert scope.cancelled_caught and time.perf_counter() - t0 < 2


# ---------------------------------------------------------------- configuration, cost, limits


async def test_unknown_alias(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"a": spec(llm_server, "ok-a")})
    with pytest.raises(ModelNotConfigured, match="nope"):
        await llm.complete("nope", user("q"))
    with pytest.raises(ModelNotConfigured):
        llm.context_tokens("nope")
    with pytest.raises(ModelNotConfigured):
        llm.count_tokens("nope", user("q"))
    assert (await llm.ping("nope"))[0] is False
    assert llm_server.requests == []


def test_unknown_fallback_alias() -> None:
    with pytest.raises(ModelNotConfigured, match="ghost"):
        LLM({"a": ModelSpec(model="openai/x", fallbacks=("ghost",))}, LLMSettings())


def test_unknown_provider_fails_at_construction() -> None:
    with pytest.raises(ModelNotConfigured, match="models.b: litellm cannot use model 'nonsense/abc'") as info:
        LLM({"a": ModelSpec(model="openai/x"), "b": ModelSpec(model="nonsense/abc")}, LLMSettings())
    assert info.value.__cause__ is not None


def test_default_settings_build() -> None:
    from config.models import Settings

    s = Settings()
    llm = LLM(s.models, s.llm)
    assert llm.aliases == ("recall",) and llm.context_tokens("recall") == 32_768


async def test_cost_priced_and_unpriced(llm_server: FakeLLMServer) -> None:
    import litellm

    llm = make_llm({"mini": spec(llm_server, "gpt-4o-mini"), "local": spec(llm_server, "ok-local")})
    msgs = user("what does it cost")
    priced = await llm.complete("mini", msgs)
    price = litellm.model_cost["gpt-4o-mini"]
    assert priced.cost_usd is not None and priced.cost_usd > 0
    assert priced.cost_usd == pytest.approx(
        priced.prompt_tokens * price["input_cost_per_token"] + priced.completion_tokens * price["output_cost_per_token"]
    )
    assert (await llm.complete("local", msgs)).cost_usd is None
    streamed = await llm.complete("mini", msgs, on_delta=Deltas())
    assert streamed.cost_usd == pytest.approx(priced.cost_usd)


async def test_context_and_token_estimates(llm_server: FakeLLMServer) -> None:
    llm = make_llm({
        "set": spec(llm_server, "ok-a", context_tokens=3000),
        "mini": spec(llm_server, "gpt-4o-mini"),
        "unknown": spec(llm_server, "ok-b"),
        "recall": ModelSpec(model="kith/recall"),
    })
    assert llm.context_tokens("set") == 3000
    assert llm.context_tokens("mini") == 128_000  # litellm's bundled map
    assert llm.context_tokens("unknown") == 8192
    assert llm.context_tokens("recall") == 32_768
    msgs = user("x" * 400)
    n = llm.count_tokens("mini", msgs)
    assert 100 <= n <= 130
    assert llm.count_tokens("mini", user("Привет " * 50)) > llm.count_tokens("mini", user("hello " * 50))


async def test_concurrency_limit(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"slow": spec(llm_server, "slow-0.3", timeout_s=10)}, concurrency=1)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(llm.complete, "slow", user(str(i)))
    assert time.perf_counter() - t0 >= 0.85  # one at a time


async def test_ping(llm_server: FakeLLMServer) -> None:
    llm = make_llm({
        "ok": spec(llm_server, "ok-a"),
        "down": spec(llm_server, "error-a", "ok"),
        "recall": ModelSpec(model="kith/recall"),
    })
    good, detail = await llm.ping("ok")
    assert good and "ms" in detail
    assert llm_server.requests[-1].body["max_tokens"] == 1
    llm_server.clear()
    good, detail = await llm.ping("down")
    assert not good and "InternalServerError" in detail and "error-a" in detail
    assert llm_server.models_seen() == ["error-a"]  # no retries, no fallback
    assert await llm.ping("recall") == (True, "built-in offline model")


# ---------------------------------------------------------------- kith/recall through the LLM


def _hits() -> list[MemoryHit]:
    d = datetime(2009, 3, 3, 10, 1, tzinfo=UTC)
    return [
        MemoryHit(-1, 1234, 7, "ActionParsnip", "exon: if he gets the grub error, run sudo update-grub", d, 0.9),
        MemoryHit(-1, 1100, 8, "exon", "lunch time", d.replace(hour=9), 0.5),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_recall_model_answers_from_memories(stream: bool) -> None:
    llm = make_llm({"recall": ModelSpec(model="kith/recall")})
    msgs = [
        {"role": "system", "content": "You are Kith.\n\n" + render_memories(_hits())},
        {"role": "user", "content": "bob: how do I fix the grub error?"},
    ]
    deltas = Deltas()
    c = await llm.complete("recall", msgs, on_delta=deltas if stream else None)
    assert c.text == f"{HEADER}\n> ActionParsnip, 2009-03-03 10:01 UTC: exon: if he gets the grub error, run sudo update-grub"
    assert c.model == "recall" and c.litellm_model == "kith/recall" and not c.fell_back
    assert c.cost_usd == 0.0  # free and known
    assert c.prompt_tokens > 20 and c.completion_tokens > 10
    if stream:
        assert len(deltas.items) >= 3 and "".join(deltas.items) == c.text


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_recall_model_without_memories(stream: bool) -> None:
    llm = make_llm({"recall": ModelSpec(model="kith/recall")})
    c = await llm.complete("recall", user("what did alice say?"), on_delta=Deltas() if stream else None)
    assert c.text == NOTHING_FOUND and c.cost_usd == 0.0


async def test_recall_as_fallback(llm_server: FakeLLMServer) -> None:
    llm = make_llm({"main": spec(llm_server, "error-main", "recall"), "recall": ModelSpec(model="kith/recall")})
    c = await llm.complete("main", user("anything"))
    assert c.model == "recall" and c.fell_back and c.text == NOTHING_FOUND


# ---------------------------------------------------------------- no other network, no telemetry

_AUDIT_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    seen = []
    def hook(event, args):
        if event == "socket.connect":
            addr = args[1]
            seen.append(["connect", str(addr[0]) if isinstance(addr, tuple) else str(addr)])
        elif event == "socket.getaddrinfo":
            seen.append(["resolve", str(args[0])])
    sys.addaudithook(hook)
    sys.path.insert(0, sys.argv[1])
    from providers.llm import LLM  # first: providers._offline must set LITELLM_LOCAL_* before litellm loads
    import anyio, litellm
    from config.models import LLMSettings, ModelSpec
    from tests.llm_server import FakeLLMServer

    async def main():
        with FakeLLMServer() as server:
            base = server.base_url
            llm = LLM({
                "a": ModelSpec(model="openai/error-a", api_base=base, fallbacks=("b",)),
                "b": ModelSpec(model="openai/gpt-4o-mini", api_base=base),
                "r": ModelSpec(model="kith/recall"),
            }, LLMSettings(num_retries=0))
            async def sink(d): pass
            await llm.complete("a", [{"role": "user", "content": "hi"}])
            await llm.complete("a", [{"role": "user", "content": "hi"}], on_delta=sink)
            await llm.complete("r", [{"role": "user", "content": "hi"}], on_delta=sink)
            await llm.complete("r", [{"role": "user", "content": "hi"}])
            llm.context_tokens("b"); llm.context_tokens("a")
            await llm.ping("b")
        cbs = [litellm.callbacks, litellm.success_callback, litellm.failure_callback,
               litellm._async_success_callback, litellm._async_failure_callback]
        print(json.dumps({"seen": seen, "telemetry": litellm.telemetry,
                          "callbacks": [repr(c) for lst in cbs for c in lst
                                        if isinstance(c, str) or str(getattr(c, "__module__", type(c).__module__)).split(".")[0] != "litellm"]}))
    import os; os.environ.setdefault("OPENAI_API_KEY", "dummy")
    anyio.run(main)
    """
)


def test_litellm_touches_only_the_configured_api_base(tmp_path: Path) -> None:
    script = tmp_path / "audit.py"
    script.write_text(_AUDIT_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("LITELLM", "HTTP_PROXY", "HTTPS_PROXY"))}
    out = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["telemetry"] is False
    assert report["callbacks"] == []
    hosts = {host for kind, host in report["seen"]}
    assert hosts <= {"127.0.0.1"}, report["seen"]
    assert any(kind == "connect" for kind, _ in report["seen"])  # the audit did see the real calls


def test_errors_module_has_no_litellm_types() -> None:
    # callers catch ProviderError only: every translated type is one of ours
    for t in (RateLimited, ProviderUnavailable, ProviderTimeout, AuthenticationFailed, BadRequest, ModelNotConfigured):
        assert issubclass(t, ProviderError) and t.__module__ == "providers.errors"


def test_answer_for_matches_server() -> None:
    assert answer_for({"messages": user("abc")}) == "echo: abc"
