"""A small OpenAI-compatible HTTP server for tests (stdlib only), and the ``llm_server`` fixture.

It listens on 127.0.0.1 on a free port in a background thread. ``POST /v1/chat/completions`` behaves
according to the request's ``model`` (the litellm prefix ``openai/`` is stripped by litellm):

====================  =============================================================================
``ok-*``              200: the answer ``"echo: <last user message>"``, with usage
``slow-<N>[-*]``      waits N seconds (float; interrupted at shutdown), then answers like ``ok-*``
``rate-limit-*``      429 with an OpenAI-style error body (``retry-after: 0``)
``error-*``           500 with an OpenAI-style error body
``auth-*``            401
``bad-*``             400 (``context_length_exceeded``)
``broken-*``          streaming only: two content chunks, then the connection is cut (no ``[DONE]``)
anything else         answers like ``ok-*`` (e.g. ``gpt-4o-mini``, to test a priced model)
====================  =============================================================================

``"stream": true`` answers as SSE: a role chunk, the answer in several content chunks (one per word,
in order), a chunk with ``finish_reason``, a usage chunk when ``stream_options.include_usage`` is
set (as OpenAI does), then ``data: [DONE]``.

Usage is deterministic: ``prompt_tokens`` = words in all message contents + 3 per message,
``completion_tokens`` = words in the answer. ``max_tokens`` truncates the answer to that many words.

Every request is recorded (``server.requests``: ``RecordedRequest(path, model, body, headers)``) in
arrival order, before any delay or failure, so tests can assert which models were tried.

Use the fixture (import it into a test module: ``from tests.llm_server import llm_server``)::

    async def test_x(llm_server):
        base = llm_server.base_url        # "http://127.0.0.1:PORT/v1"

The fixture stops the server when the test ends; a ``slow-*`` request still waiting is released
at once (``stop()`` sets an event the delay waits on), so shutdown never waits for the delay.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["FakeLLMServer", "RecordedRequest", "answer_for", "llm_server"]


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    model: str
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def answer_for(body: dict[str, Any]) -> str:
    """The answer the server gives to ``body`` (a chat completion request), before ``max_tokens``."""
    return f"echo: {_last_user_text(body.get('messages') or [])}"


def _usage(body: dict[str, Any], answer: str) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = sum(len(_content_text(m.get("content")).split()) + 3 for m in messages)
    completion = len(answer.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _slow_seconds(model: str) -> float:
    # "slow-2", "slow-0.5-whatever"
    parts = model.split("-")
    try:
        return float(parts[1])
    except (IndexError, ValueError):
        return 5.0


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -------------------------------------------------------------- helpers
    def _send_json(self, status: int, payload: dict[str, Any], extra_headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, type_: str, code: str | None = None, extra: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, extra)

    # -------------------------------------------------------------- routes
    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": []})
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "invalid JSON", "invalid_request_error")
            return
        model = str(body.get("model", ""))
        self.server.owner._record(RecordedRequest(self.path, model, body, {k.lower(): v for k, v in self.headers.items()}))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "invalid_request_error")
            return

        if model.startswith("rate-limit"):
            self._error(429, f"Rate limit reached for {model}", "rate_limit_error", "rate_limit_exceeded", {"retry-after": "0"})
            return
        if model.startswith("error"):
            self._error(500, f"The server had an error while processing your request ({model})", "server_error")
            return
        if model.startswith("auth"):
            self._error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
            return
        if model.startswith("bad"):
            self._error(400, "This model's maximum context length is 10 tokens", "invalid_request_error", "context_length_exceeded")
            return
        if model.startswith("slow"):
            if self.server.owner._stopping.wait(_slow_seconds(model)):
                return  # shutting down: drop the request

        answer = answer_for(body)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and max_tokens < len(answer.split()):
            answer = " ".join(answer.split()[:max_tokens])
            finish = "length"
        if body.get("stream"):
            self._stream(body, model, answer, finish, broken=model.startswith("broken"))
        else:
            self._send_json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}],
                "usage": _usage(body, answer),
            })

    def _stream(self, body: dict[str, Any], model: str, answer: str, finish: str, *, broken: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")  # as OpenAI does; a cut stream is then detectable
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def write(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, usage: dict[str, int] | None = None) -> None:
            payload: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                       "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            if usage is not None:
                payload["usage"] = usage
            write(f"data: {json.dumps(payload)}\n\n".encode())

        chunk({"role": "assistant", "content": ""})
        words = answer.split(" ")
        for i, w in enumerate(words):
            chunk({"content": w if i == 0 else " " + w})
            if broken and i == 1:
                return  # cut: the connection closes mid-body (no final chunk, no finish_reason, no [DONE])
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk(None, usage=_usage(body, answer))
        write(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "FakeLLMServer"

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up (timeout, cancelled stream) is expected here: stay quiet about it
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class FakeLLMServer:
    """The server; ``start()`` binds 127.0.0.1:0 and serves in a daemon thread, ``stop()`` ends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> "FakeLLMServer":
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-llm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases slow-* requests at once
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- access
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """The OpenAI-style base, ``http://127.0.0.1:PORT/v1`` (litellm's ``api_base``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _record(self, r: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(r)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def models_seen(self) -> list[str]:
        """The ``model`` of every chat completion request so far, in order."""
        return [r.model for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions"]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


@pytest.fixture
def llm_server() -> Iterator[FakeLLMServer]:
    """A running ``FakeLLMServer``, stopped (and any slow request released) when the test ends."""
    with FakeLLMServer() as server:
        yield server
