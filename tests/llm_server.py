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
``drip-<N>[-*]``      streaming only: waits N seconds (float) before each content chunk; a client that
                      closes the stream early is recorded in ``server.cut`` (content chunks written)
anything else         answers like ``ok-*`` (e.g. ``gpt-4o-mini``, to test a priced model)
====================  =============================================================================

A line of the last user message holding ``ANSWER <text>`` (anywhere in the line, e.g. inside a
quoted chat message) makes the answer exactly ``<text>``: a scripted output (a background call's JSON).

A user message with ``image_url`` content parts (``data:`` URLs) shows each image in the echo:
``"echo: <text> [image image/png 1234 bytes]"`` (the decoded size), so tests can prove the image
reached the model.

``POST /v1/images/generations`` (JSON; ``n`` images, default 1, at most 10; ``revised_prompt`` is the prompt):

====================  =============================================================================
``policy-*``          400 ``{"error": {"code": "content_policy_violation", ...}}``
``error-*``           500
``url-*``             200 with ``data[i].url`` = ``<server>/files/<id>.png`` (served by ``GET``)
anything else         200 with ``data[i].b64_json``: a real 8x8 RGB PNG (``TEST_PNG``)
====================  =============================================================================

``POST /v1/images/edits`` (multipart/form-data: ``image``, optional ``mask``, ``prompt``, ``n``) and
``POST /v1/images/variations`` (``image``, ``n``) answer ``n`` images as ``b64_json`` (``TEST_PNG``);
``error-*`` models → 500, no ``image`` (or an edit without ``prompt``) → 400. Their
``RecordedRequest.body`` holds the form fields, each file part as ``{"filename", "size", "data"}``.

``POST /v1/audio/transcriptions`` (multipart/form-data) answers ``{"text", "duration", "language":
"en"}``: the server stands in for the provider, so an uploaded "recording" whose bytes are UTF-8
text starting with ``SPEECH:`` is transcribed as the rest of its first line, anything else as
``"transcribed <N> bytes"``; ``duration`` is the float on a ``DURATION:<seconds>`` line, else 1.0.
``error-*`` models → 500. Its ``RecordedRequest.body`` holds the form fields, with ``file`` replaced
by ``{"filename": ..., "size": ...}``.

``"stream": true`` answers as SSE: a role chunk, the answer in several content chunks (one per word,
in order), a chunk with ``finish_reason``, a usage chunk when ``stream_options.include_usage`` is
set (as OpenAI does), then ``data: [DONE]``.

Tool calls are scripted by lines of the last user message (``tool_script``), on any model that
answers (``ok-*``, ``slow-*``, ...), only when the request has ``tools`` and its ``tool_choice`` is
not ``"none"``:

==========================  =======================================================================
``CALL <name> <args>``      in the first round, call tool ``name`` with the raw text ``args`` as its
                            arguments (sent verbatim: malformed JSON stays malformed); several
                            ``CALL`` lines are parallel calls of one round
``CALL<n> <name> <args>``   the same in round ``n`` (``CALL2 ...``: after the first results came back)
``LOOP <name> <args>``      call it in every round, whatever came back (an endless loop)
``SAY <text>``              a tool-call round also writes ``text`` (content next to ``tool_calls``)
==========================  =======================================================================

Round ``n`` = 1 + the assistant messages with ``tool_calls`` after the last user message; a round
with no scripted call answers in text. Call ids are ``call_<n>_<i>`` (``i`` from 0 within the round).
A plain answer is ``{"content": <SAY text or null>, "tool_calls": [...]}`` with ``finish_reason``
``"tool_calls"``; streamed, as OpenAI sends them: a role chunk, the SAY text (word chunks), then per
call a chunk with ``index``, ``id``, ``type`` and ``function.name`` (arguments ``""``) followed by the
arguments cut into three chunks, the ``finish_reason`` chunk, usage, ``[DONE]``. A text answer after
tool results (``role: tool`` messages after the last user message) is the echo followed by one line
per result: ``"\n[<tool_call_id>] <content>"`` (``answer_for``), so tests see what the model received.

Usage is deterministic: ``prompt_tokens`` = words in all message contents + 3 per message,
``completion_tokens`` = words in the answer (a tool-call round: words of the SAY text plus, per call,
1 + the words of its arguments). ``max_tokens`` truncates a text answer to that many words.

Every request is recorded (``server.requests``: ``RecordedRequest(path, model, body, headers)``;
``GET /files/*`` too, with an empty model and body) in arrival order, before any delay or failure, so tests can assert which models were tried.

Use the fixture (import it into a test module: ``from tests.llm_server import llm_server``)::

    async def test_x(llm_server):
        base = llm_server.base_url        # "http://127.0.0.1:PORT/v1"

The fixture stops the server when the test ends; a ``slow-*`` request still waiting is released
at once (``stop()`` sets an event the delay waits on), so shutdown never waits for the delay.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["TEST_PNG", "FakeLLMServer", "RecordedRequest", "answer_for", "llm_server", "tool_script", "transcript_for"]


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
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def _image_notes(messages: list[dict[str, Any]]) -> str:
    """`` [image <mime> <N> bytes]`` for each ``image_url`` part of the last user message."""
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        notes = []
        for p in content if isinstance(content, list) else []:
            if not isinstance(p, dict) or p.get("type") != "image_url":
                continue
            url = p.get("image_url")
            url = str(url.get("url", "")) if isinstance(url, dict) else str(url or "")
            header, sep, data = url.partition(",")
            if url.startswith("data:") and sep:
                mime = header[5:].split(";")[0] or "unknown"
                try:
                    size = len(base64.b64decode(data, validate=True)) if ";base64" in header else len(data.encode())
                except (binascii.Error, ValueError):
                    size = -1
                notes.append(f" [image {mime} {size} bytes]")
            else:
                notes.append(f" [image url {url}]")
        return "".join(notes)
    return ""


def _after_last_user(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return messages[i + 1:]
    return list(messages)


def answer_for(body: dict[str, Any]) -> str:
    """The answer the server gives to ``body`` (a chat completion request), before ``max_tokens``: the
    echo of the last user message, then a line per tool result that came after it."""
    messages = body.get("messages") or []
    scripted = _ANSWER_RE.search(_last_user_text(messages))
    if scripted is not None:
        return scripted.group(1)
    results = "".join(f"\n[{m.get('tool_call_id')}] {_content_text(m.get('content'))}"
                      for m in _after_last_user(messages) if m.get("role") == "tool")
    return f"echo: {_last_user_text(messages)}{_image_notes(messages)}{results}"


_ANSWER_RE = re.compile(r"ANSWER (.+)$", re.M)
_SCRIPT_RE = re.compile(r"^(?:CALL(?P<round>\d*)|(?P<loop>LOOP)) +(?P<name>\S+)(?: (?P<args>.*))?$")


def tool_script(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """``(text, tool_calls)`` of the round the server is at for ``body`` (OpenAI ``tool_calls`` entries:
    ``{"id", "type": "function", "function": {"name", "arguments"}}``), or None when it answers in text
    (no ``tools``, ``tool_choice`` ``"none"``, or no call scripted for this round)."""
    if not body.get("tools"):
        return None
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    messages = body.get("messages") or []
    n = 1 + sum(1 for m in _after_last_user(messages) if m.get("role") == "assistant" and m.get("tool_calls"))
    say, calls = "", []
    for line in _last_user_text(messages).splitlines():
        line = line.strip()
        if line.startswith("SAY "):
            say = line[4:]
            continue
        m = _SCRIPT_RE.match(line)
        if m is None or not (m["loop"] or int(m["round"] or 1) == n):
            continue
        calls.append({"id": f"call_{n}_{len(calls)}", "type": "function",
                      "function": {"name": m["name"], "arguments": m["args"] or ""}})
    return (say, calls) if calls else None


def _png(width: int = 8, height: int = 8) -> bytes:
    """A real RGB PNG (a plain gradient), built with zlib + struct."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 32 % 256, y * 32 % 256, 128))
                    for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


TEST_PNG = _png()


def transcript_for(data: bytes) -> tuple[str, float]:
    """``(text, duration)`` the server answers for an uploaded recording ``data``."""
    text, duration = f"transcribed {len(data)} bytes", 1.0
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return text, duration
    lines = decoded.splitlines()
    if lines and lines[0].startswith("SPEECH:"):
        text = lines[0][len("SPEECH:"):].strip()
    for line in lines:
        if line.startswith("DURATION:"):
            with contextlib.suppress(ValueError):
                duration = float(line[len("DURATION:"):])
    return text, duration


def _parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], tuple[str, bytes] | None]:
    """Form fields (text) and the uploaded ``file`` part (name, bytes) of a multipart/form-data body."""
    import email.parser
    import email.policy

    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields: dict[str, Any] = {}
    upload: tuple[str, bytes] | None = None
    for part in msg.iter_parts() if msg.is_multipart() else ():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None or name == "file":
            upload = (filename or "", payload)
        elif name:
            value = payload.decode("utf-8", "replace")
            if name in fields:  # repeated fields (timestamp_granularities[])
                fields[name] = (fields[name] if isinstance(fields[name], list) else [fields[name]]) + [value]
            else:
                fields[name] = value
    return fields, upload


def _multipart_files(content_type: str, raw: bytes) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """Form fields (text) and every uploaded file part by its field name (``image``, ``mask``): (file name, bytes)."""
    import email.parser
    import email.policy

    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    fields: dict[str, Any] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in msg.iter_parts() if msg.is_multipart() else ():
        name = part.get_param("name", header="content-disposition") or ""
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = (filename, payload)
        elif name:
            fields[str(name)] = payload.decode("utf-8", "replace")
    return fields, files


def _usage(body: dict[str, Any], answer: str) -> dict[str, int]:
    messages = body.get("messages") or []
    prompt = sum(len(_content_text(m.get("content")).split()) + 3 for m in messages)
    completion = len(answer.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_usage(body: dict[str, Any], text: str, calls: list[dict[str, Any]]) -> dict[str, int]:
    usage = _usage(body, text)
    extra = sum(1 + len(c["function"]["arguments"].split()) for c in calls)
    usage["completion_tokens"] += extra
    usage["total_tokens"] += extra
    return usage


def _slow_seconds(model: str) -> float:
    # "slow-2", "slow-0.5-whatever"
    parts = model.split("-")
    try:
        return float(parts[1])
    except (IndexError, ValueError):
        return 5.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
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
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": []})
        elif self.path.startswith("/files/"):
            self.server.owner._record(RecordedRequest(self.path, "", {}, {k.lower(): v for k, v in self.headers.items()}))
            data = self.server.owner._files.get(self.path[len("/files/"):])
            if data is None:
                self._error(404, f"no file {self.path}", "invalid_request_error")
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._error(404, f"no route {self.path}", "invalid_request_error")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.rstrip("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if path == "/v1/audio/transcriptions":
            self._transcription(raw, headers)
            return
        if path in ("/v1/images/edits", "/v1/images/variations"):
            self._image_upload(path, raw, headers)
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._error(400, "invalid JSON", "invalid_request_error")
            return
        model = str(body.get("model", ""))
        self.server.owner._record(RecordedRequest(self.path, model, body, headers))
        if path == "/v1/images/generations":
            self._image(body, model)
            return
        if path != "/v1/chat/completions":
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
        if model.startswith("slow") and self.server.owner._stopping.wait(_slow_seconds(model)):
            return  # shutting down: drop the request

        script = tool_script(body)
        if script is not None:
            self._tool_calls(body, model, *script)
            return
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

    def _tool_calls(self, body: dict[str, Any], model: str, say: str, calls: list[dict[str, Any]]) -> None:
        if body.get("stream"):
            self._stream(body, model, say, "tool_calls", broken=False, tool_calls=calls)
            return
        self._send_json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": say or None, "tool_calls": calls},
                         "finish_reason": "tool_calls"}],
            "usage": _tool_usage(body, say, calls),
        })

    def _image(self, body: dict[str, Any], model: str) -> None:
        if model.startswith("policy"):
            self._error(400, "Your request was rejected as a result of our safety system.", "invalid_request_error",
                        "content_policy_violation")
            return
        if model.startswith("error"):
            self._error(500, f"The server had an error while processing your request ({model})", "server_error")
            return
        try:
            n = max(1, min(10, int(body.get("n") or 1)))
        except (TypeError, ValueError):
            n = 1
        items: list[dict[str, Any]] = []
        for _i in range(n):
            item: dict[str, Any] = {"revised_prompt": str(body.get("prompt", ""))}
            if model.startswith("url"):
                name = f"{uuid.uuid4().hex[:12]}.png"
                self.server.owner._files[name] = TEST_PNG
                host, port = self.server.server_address[:2]
                item["url"] = f"http://{host}:{port}/files/{name}"
            else:
                item["b64_json"] = base64.b64encode(TEST_PNG).decode("ascii")
            items.append(item)
        self._send_json(200, {"created": int(time.time()), "data": items})

    def _image_upload(self, path: str, raw: bytes, headers: dict[str, str]) -> None:
        fields, files = _multipart_files(headers.get("content-type", ""), raw)
        model = str(fields.get("model", ""))
        recorded: dict[str, Any] = dict(fields)
        for name, (filename, data) in files.items():
            recorded[name] = {"filename": filename, "size": len(data), "data": data}
        self.server.owner._record(RecordedRequest(self.path, model, recorded, headers))
        if "image" not in files and "image[]" not in files:
            self._error(400, "'image' is a required property", "invalid_request_error")
            return
        if path.endswith("/edits") and not fields.get("prompt"):
            self._error(400, "'prompt' is a required property", "invalid_request_error")
            return
        if model.startswith("error"):
            self._error(500, f"The server had an error while processing your request ({model})", "server_error")
            return
        try:
            n = max(1, min(10, int(fields.get("n") or 1)))
        except ValueError:
            n = 1
        self._send_json(200, {"created": int(time.time()),
                              "data": [{"b64_json": base64.b64encode(TEST_PNG).decode("ascii")} for _ in range(n)]})

    def _transcription(self, raw: bytes, headers: dict[str, str]) -> None:
        fields, upload = _parse_multipart(headers.get("content-type", ""), raw)
        model = str(fields.get("model", ""))
        filename, data = upload if upload is not None else ("", b"")
        recorded = dict(fields)
        recorded["file"] = {"filename": filename, "size": len(data)} if upload is not None else None
        self.server.owner._record(RecordedRequest(self.path, model, recorded, headers))
        if upload is None:
            self._error(400, "missing file", "invalid_request_error")
            return
        if model.startswith("error"):
            self._error(500, f"The server had an error while processing your request ({model})", "server_error")
            return
        text, duration = transcript_for(data)
        self._send_json(200, {"text": text, "duration": duration, "language": "en"})

    def _stream(self, body: dict[str, Any], model: str, answer: str, finish: str, *, broken: bool,
                tool_calls: list[dict[str, Any]] | None = None) -> None:
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

        chunk({"role": "assistant", "content": "" if answer or not tool_calls else None})
        words = answer.split(" ") if answer or not tool_calls else []
        drip = _slow_seconds(model) if model.startswith("drip") else 0.0
        for i, w in enumerate(words):
            if drip and self.server.owner._stopping.wait(drip):
                return
            try:
                chunk({"content": w if i == 0 else " " + w})
            except OSError:  # the client closed the stream (stopped the generation)
                self.server.owner.cut.append(i)
                return
            if broken and i == 1:
                return  # cut: the connection closes mid-body (no final chunk, no finish_reason, no [DONE])
        for index, call in enumerate(tool_calls or []):
            fn = call["function"]
            chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                   "function": {"name": fn["name"], "arguments": ""}}]})
            args = fn["arguments"]
            third = -(-len(args) // 3) or 1
            for piece in (args[j:j + third] for j in range(0, len(args), third)):
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        chunk({}, finish)
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk(None, usage=_tool_usage(body, answer, tool_calls) if tool_calls else _usage(body, answer))
        write(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: FakeLLMServer

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
        self._files: dict[str, bytes] = {}  # GET /files/<name> (url-* image models)
        self._stopping = threading.Event()
        self.cut: list[int] = []  # drip-* streams the client closed early: content chunks written before
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> FakeLLMServer:
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

    def __enter__(self) -> FakeLLMServer:
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
