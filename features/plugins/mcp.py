"""MCP servers as plugins: the tools of the servers the host lists in kith.yaml (``plugins.mcp``),
offered to the model as Kith ``Tool``s, through the official MCP SDK (``mcp``).

Usage::

    async with McpHub(settings.plugins.mcp, output_chars=settings.plugins.tool_output_chars) as hub:
        tools = {**builtin_tools(settings.plugins), **hub.tools()}     # name → Tool, as of now
        ...
        for s in hub.status():                                         # kith plugins, /plugins
            print(s.name, s.state, s.tools, s.error, s.next_retry)

``McpHub`` owns one task group with one supervised connection task per server. A connection starts
the server (``command``: a subprocess spoken to over stdin/stdout, ``mcp.client.stdio``) or reaches it
(``url``: streamable HTTP, ``mcp.client.streamable_http``), initializes the session, lists the tools
and keeps those of the server's allow-list (``tools:``; all when absent). Each becomes a ``McpTool``
named ``<server>__<tool>`` (``[A-Za-z0-9_-]``, at most 64 characters), plugin ``mcp:<server>``.

While connected, the connection watches its server: the end of the stream (a subprocess that died),
a ping every ``ping_interval_s`` (a server that hangs, an HTTP server gone), and a probe after any
call that failed for want of the connection. A server lost is restarted (reconnected) after 1 s,
2 s, 4 s … up to 60 s (back to 1 s after a connection that lasted that long); meanwhile its tools
stay listed but a call returns at once an error outcome saying so ("the MCP server 'files' is not
connected (restarting: …)"), never a wait. ``status()`` tells each server's state, its tools, its
last error and its next try.

Only the host adds a server, in kith.yaml: the hub takes its servers when built and has no way to
add one, and nothing a tool call carries (the model's arguments) reaches a server's command, URL or
environment. Secrets: a server's ``env`` may name the host's variables as ``${VAR}``, read when the
hub starts; their values (and the query and password of a URL) are cut out of every error text,
log line and status this module writes. Calls are logged at INFO with the server, the tool and
the names of the arguments, never their values.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TextIO, cast
from urllib.parse import urlsplit

import anyio
import mcp.types as mcp_types
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from config.models import McpServer
from features.plugins.base import ToolContext, ToolOutcome, ToolSpec, cut, short
from features.plugins.errors import PluginError
from i18n import _

__all__ = ["McpConfigError", "McpHub", "McpServerStatus", "McpTool", "expand_env", "result_text", "tool_name"]

log = logging.getLogger(__name__)

State = Literal["connecting", "connected", "failed"]

MAX_NAME = 64  # OpenAI's limit on a function's name
MAX_DESCRIPTION = 1024  # a tool's description for the model, characters
MIN_START_S = 30.0  # starting a server (spawn, initialize, list its tools) may take this long, or its timeout_s if longer
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REDACTED = "[redacted]"
_CLIENT = mcp_types.Implementation(name="kith", version="0.1.0")


class McpConfigError(PluginError):
    """An MCP server that cannot start as configured: its ``env`` names a variable that is not set.
    The message names the server, the key and the variable, never a value."""


class _Lost(Exception):
    """A connection that ended or stopped answering; the message says how, for the status."""


# ---------------------------------------------------------------- names, env, results


def tool_name(server: str, tool: str, taken: Iterable[str] = ()) -> str:
    """The Kith name of MCP ``tool`` of ``server``: ``<server>__<tool>`` with every character outside
    ``[A-Za-z0-9_-]`` replaced by ``_``; when that is longer than 64 characters or already in
    ``taken``, its first 55 characters, ``_`` and 8 hex digits of a hash of the exact names (stable
    across restarts)."""
    raw = f"{server}__{tool}"
    name = _UNSAFE.sub("_", raw)
    if len(name) > MAX_NAME or name in set(taken):
        name = f"{name[:MAX_NAME - 9]}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"
    return name


def expand_env(server: str, config: McpServer, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``config.env`` with every ``${VAR}`` replaced by ``environ[VAR]`` (``os.environ`` by default);
    other text is kept as written. Raises ``McpConfigError`` naming ``server``, the key and the
    variable when a variable is not set (an empty value counts as set)."""
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for key, value in config.env.items():
        for var in _ENV_REF.findall(value):
            if var not in environ:
                raise McpConfigError(f"MCP server {server!r}: env {key} refers to ${{{var}}}, "
                                     f"which is not set in the bot's environment")
        out[key] = _ENV_REF.sub(lambda m: environ[m.group(1)], value)
    return out


def _secrets(config: McpServer, env: Mapping[str, str], environ: Mapping[str, str]) -> list[str]:
    """Texts to cut out of anything written about this server: the values of the host's variables
    its env names, the env values themselves (when longer than a word such as "true"), and a URL's
    password and query."""
    found = {environ[v] for v in config.env_refs() if v in environ and len(environ[v]) >= 3}
    found |= {value for value in env.values() if len(value) >= 8}
    if config.url:
        parts = urlsplit(config.url)
        found |= {s for s in (parts.password, parts.query) if s and len(s) >= 3}
    return sorted(found, key=len, reverse=True)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    return text


def result_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as plain text for the model: the text parts, one after another (a newline
    between), an embedded text resource with its URI; other content summarised as ``[image:
    image/png]``, ``[audio: audio/wav]``, ``[resource link: name uri]``, ``[resource uri:
    mime, binary]``. Only when there is no content at all, the structured content as JSON; when
    there is nothing, ``(no output)``."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent):
            parts.append(f"[image: {block.mime_type}]")
        elif isinstance(block, mcp_types.AudioContent):
            parts.append(f"[audio: {block.mime_type}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.name} {block.uri}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            res = block.resource
            if isinstance(res, mcp_types.TextResourceContents):
                parts.append(f"[resource {res.uri}]\n{res.text}")
            else:
                parts.append(f"[resource {res.uri}: {res.mime_type or 'unknown type'}, binary]")
        else:  # a content type newer than this module
            parts.append(f"[{getattr(block, 'type', 'content')}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts) if parts else "(no output)"


def _describe(exc: BaseException) -> str:
    """One line for an exception (the first real one of a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        real = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (real or list(exc.exceptions))[0]
    if isinstance(exc, _Lost):
        return str(exc)
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return "the server closed the connection"
        return f"the server answered with an error: {exc.message}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _wall(monotonic_at: float) -> datetime:
    """A ``time.monotonic()`` instant as a UTC date-time (to the second)."""
    return (datetime.now(UTC) + timedelta(seconds=monotonic_at - time.monotonic())).replace(microsecond=0)


# ---------------------------------------------------------------- status and tools


@dataclass(frozen=True)
class McpServerStatus:
    """One server as ``McpHub.status()`` tells it.

    name: its key in ``plugins.mcp``; label: as members see it (``label`` or the key); transport:
    ``"stdio"`` (a command) or ``"http"``; state: ``"connecting"`` (starting, or restarting after
    ``error``: closing the lost connection, making a new one), ``"connected"`` or ``"failed"``
    (waiting to try again at ``next_retry``; for good when ``next_retry`` is None: a
    configuration error, or the hub is closed). tools: the Kith names of its tools
    as last listed (offered even while it is down; a call then says it is not connected).
    error: the last failure, one line without secrets; None before any. next_retry: when it is
    tried again (UTC). connected_since: since when it answers (UTC); None unless connected.
    failures: failed attempts and lost connections since it last stayed connected for the hub's
    ``backoff_max_s`` (the wait before the next try is ``backoff_initial_s`` doubled ``failures - 1``
    times, at most ``backoff_max_s``).
    """

    name: str
    label: str
    transport: Literal["stdio", "http"]
    state: State
    tools: tuple[str, ...]
    error: str | None
    next_retry: datetime | None
    connected_since: datetime | None
    failures: int


class McpTool:
    """One tool of an MCP server as a Kith ``Tool``: ``spec.name`` ``<server>__<tool>``, the server's
    description and input schema; ``plugin`` ``mcp:<server>``. ``run`` calls it through the hub
    (see ``McpHub.call``)."""

    def __init__(self, hub: McpHub, server: str, label: str, remote: str, spec: ToolSpec) -> None:
        self.hub = hub
        self.server = server
        self.label = label
        self.remote = remote  # the tool's name on its server
        self.spec = spec
        self.plugin = f"mcp:{server}"

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """The call's outcome: the result's text (``result_text``, cut to the hub's ``output_chars``);
        an error outcome for an error result, a server not connected, a timeout or a lost connection."""
        return await self.hub.call(self.server, self.remote, args)

    def notice(self, args: dict[str, Any]) -> str:
        return _("🔌 used {tool} ({server})", tool=short(self.remote, 40), server=short(self.label, 40))


class _Watched:
    """The transport's read stream as the session reads it, telling the server's connection when it
    ends (a subprocess gone, a connection closed)."""

    def __init__(self, inner: Any, server: _Server) -> None:
        self._inner = inner
        self._server = server
        self._epoch = server.epoch

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._server.lose("the server closed the connection", self._epoch)
            raise

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _Watched:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Server:
    """One configured server's state, owned by its connection task."""

    def __init__(self, name: str, config: McpServer) -> None:
        self.name = name
        self.config = config
        self.label = config.label or name
        self.transport: Literal["stdio", "http"] = "stdio" if config.command is not None else "http"
        self.env: dict[str, str] = {}
        self.secrets: list[str] = []
        self.fatal: str | None = None  # a configuration error: never tried
        self.state: State = "connecting"
        self.session: ClientSession | None = None
        self.tools: dict[str, McpTool] = {}  # Kith name → tool, as last listed
        self.remote: set[str] = set()  # tool names offered now (allowed ones)
        self.error: str | None = None
        self.next_retry: float | None = None  # monotonic
        self.next_retry_utc: datetime | None = None
        self.connected_at: float | None = None  # monotonic
        self.connected_utc: datetime | None = None
        self.failures = 0
        self.settled = anyio.Event()  # the first attempt is over (connected or failed)
        self.epoch = 0  # which connection: a late word from an earlier one is ignored
        self.wake = anyio.Event()
        self.lost: str | None = None
        self.relist = False
        self.stderr: deque[str] = deque(maxlen=20)

    def lose(self, why: str, epoch: int) -> None:
        """Connection ``epoch`` is gone (``why``): no call uses it from now on; its task restarts it.
        A word about an earlier connection is ignored."""
        if epoch != self.epoch:
            return
        if self.lost is None:
            self.lost = why
        if self.state == "connected":
            self.state, self.session = "connecting", None  # restarting: the old connection closes first
            self.error = _redact(why, self.secrets)
        self.wake.set()

    def probe(self) -> None:
        self.wake.set()

    def status(self) -> McpServerStatus:
        return McpServerStatus(
            name=self.name, label=self.label, transport=self.transport, state=self.state,
            tools=tuple(sorted(self.tools)), error=self.error,
            next_retry=self.next_retry_utc if self.next_retry is not None and self.state == "failed" else None,
            connected_since=self.connected_utc if self.connected_at is not None and self.state == "connected" else None,
            failures=self.failures,
        )

    def unavailable(self) -> str:
        """Why a call cannot be made now, for the model."""
        head = f"the MCP server {self.label!r} is not connected"
        if self.fatal:
            return f"the MCP server {self.label!r} is not available: {self.fatal}"
        if self.error is None:
            return f"{head} yet (it is starting)"
        if self.state == "connecting":
            return f"{head} (restarting: {self.error}; trying now)"
        if self.next_retry is not None:
            wait = max(0.0, self.next_retry - time.monotonic())
            return f"{head} (restarting: {self.error}; next try in {wait:.0f} s)"
        return f"{head} (restarting: {self.error})"


# ---------------------------------------------------------------- the hub


class McpHub:
    """The configured MCP servers, connected and supervised (see the module's docstring).

    servers: ``plugins.mcp`` of kith.yaml, key → ``McpServer`` (copied: the set of servers never
    changes). output_chars: a result's text is cut to this many characters. environ: where
    ``${VAR}`` in ``env`` is looked up (``os.environ``), read when the hub starts.
    backoff_initial_s / backoff_max_s: the wait after a failure, doubling from the first to the
    second. ping_interval_s: how often a connected server is pinged (a ping waits its
    ``timeout_s``). A server gets its ``timeout_s`` for each call and ping, and at least
    ``MIN_START_S`` (30 s) to start. ready_timeout_s: how long entering waits for every server's
    first attempt (default: the longest start time plus 5 s); a server still connecting then goes
    on in the background.

    An async context manager, entered and left in one task: entering starts the connections and
    returns once each has connected or failed once (or ``ready_timeout_s`` ran out); leaving closes
    every session and stops every subprocess (stdin closed, then SIGTERM, then SIGKILL; a few
    seconds at most). Entering twice raises ``RuntimeError``.
    """

    def __init__(self, servers: Mapping[str, McpServer], *, output_chars: int = 8000,
                 environ: Mapping[str, str] | None = None, backoff_initial_s: float = 1.0,
                 backoff_max_s: float = 60.0, ping_interval_s: float = 30.0,
                 ready_timeout_s: float | None = None) -> None:
        self._servers = {name: _Server(name, config) for name, config in dict(servers).items()}
        self.output_chars = output_chars
        self._environ = environ
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.ping_interval_s = ping_interval_s
        timeouts = [max(s.config.timeout_s, MIN_START_S) for s in self._servers.values()]
        self.ready_timeout_s = ready_timeout_s if ready_timeout_s is not None else max(timeouts, default=0.0) + 5.0
        self._stack: AsyncExitStack | None = None
        self._entered = False

    # ------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("an McpHub is entered once")
        self._entered = True
        environ = os.environ if self._environ is None else self._environ
        for server in self._servers.values():
            try:
                server.env = expand_env(server.name, server.config, environ)
            except McpConfigError as exc:
                server.fatal = server.error = str(exc)
                server.state = "failed"
                log.error("%s; its tools are off until the bot restarts with it set", exc)
            server.secrets = _secrets(server.config, server.env, environ)
        stack = AsyncExitStack()  # owned by the hub until __aexit__ closes it
        try:
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # leaving stops the connections (before joining them)
            for server in self._servers.values():
                if server.fatal is None:
                    tg.start_soon(self._supervise, server, name=f"mcp:{server.name}")
            with anyio.move_on_after(self.ready_timeout_s):
                for server in self._servers.values():
                    if server.fatal is None:
                        await server.settled.wait()
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            # closed without the body's exception: the stack cancels the connections first, and an
            # error of the body leaves as itself (fed into the task group it would come out wrapped
            # in an ExceptionGroup)
            await stack.aclose()
        for server in self._servers.values():
            server.session = None
            if server.fatal is None:
                server.state, server.connected_at, server.next_retry = "failed", None, None
                server.error = "the hub is closed"

    # ------------------------------------------------------------ what others see

    def tools(self) -> dict[str, McpTool]:
        """Kith tool name → tool, for every server's tools as last listed (a server down keeps its
        tools here; a call then says it is not connected). A fresh dict; empty before entering."""
        return {name: tool for server in self._servers.values() for name, tool in server.tools.items()}

    def status(self) -> list[McpServerStatus]:
        """Every configured server's status, in the order of kith.yaml."""
        return [server.status() for server in self._servers.values()]

    # ------------------------------------------------------------ calls

    async def call(self, server: str, tool: str, args: dict[str, Any]) -> ToolOutcome:
        """Call MCP tool ``tool`` (its name on the server) of ``server`` (its key) with ``args``,
        within the server's ``timeout_s``. Returns the result as a ``ToolOutcome``: its text
        (``result_text``, cut to ``output_chars``), ``error=True`` for an ``isError`` result. Never
        waits for a server that is not connected: that, a tool the server no longer offers, a
        timeout, an error answer and a lost connection are error outcomes saying so (in English,
        for the model, without secrets). Logs at INFO the server, the tool, the argument names
        and how it ended. Cancellation propagates."""
        srv = self._servers.get(server)
        if srv is None:
            return ToolOutcome(f"there is no MCP server {server!r}", error=True)
        session, epoch = srv.session, srv.epoch
        if session is None or srv.state != "connected":
            return ToolOutcome(srv.unavailable(), error=True)
        if tool not in srv.remote:
            return ToolOutcome(f"the MCP server {srv.label!r} does not offer the tool {tool!r} (any more)", error=True)
        timeout = srv.config.timeout_s
        label = srv.label
        started = time.monotonic()
        how = "cancelled"
        try:
            with anyio.fail_after(timeout + 1.0):  # a guard: the request's own timeout comes first
                result = await session.call_tool(tool, args, read_timeout_seconds=timeout)
        except TimeoutError:
            srv.probe()
            how = "timed out"
            return ToolOutcome(f"the MCP server {label!r} did not answer within {timeout:g} s", error=True)
        except MCPError as exc:
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                srv.probe()
                how = "timed out"
                return ToolOutcome(f"the MCP server {label!r} did not answer within {timeout:g} s", error=True)
            if exc.code == mcp_types.CONNECTION_CLOSED:
                srv.lose("the server closed the connection during a call", epoch)
                how = "connection lost"
                return ToolOutcome(f"the connection to the MCP server {label!r} was lost during the call; "
                                   "it is being restarted", error=True)
            how = "refused"
            return ToolOutcome(_redact(f"the MCP server {label!r} refused the call: {exc.message}", srv.secrets),
                               error=True)
        except Exception as exc:  # a malformed answer, a transport error
            srv.probe()
            how = "failed"
            return ToolOutcome(_redact(f"the call to the MCP server {label!r} failed: {_describe(exc)}", srv.secrets),
                               error=True)
        else:
            how = "error result" if result.is_error else "ok"
            text = result_text(result)
            if result.is_error:
                text = _redact(text, srv.secrets)
            return ToolOutcome(cut(text, self.output_chars), error=result.is_error)
        finally:
            names = ", ".join(short(str(k), 40) for k in list(args)[:20]) if isinstance(args, dict) else ""
            log.info("MCP call %s/%s (arguments: %s): %s in %.2f s", srv.name, tool, names or "none", how,
                     time.monotonic() - started)

    # ------------------------------------------------------------ connections

    async def _supervise(self, server: _Server) -> None:
        """Connect ``server``, and whenever the connection fails or ends, wait and connect again
        (cancelled when the hub closes)."""
        while True:
            server.state, server.next_retry = "connecting", None
            try:
                await self._connect(server)
                why = "the connection ended"
            except Exception as exc:
                why = _describe(exc)
            connected_at, server.connected_at = server.connected_at, None
            if connected_at is not None and time.monotonic() - connected_at >= self.backoff_max_s:
                server.failures = 0
            delay = min(self.backoff_initial_s * 2 ** min(server.failures, 30), self.backoff_max_s)
            server.failures += 1
            if connected_at is None and server.stderr:  # it did not start: what it said may be why
                why += f" (its last line on stderr: {short(server.stderr[-1], 200)!r})"
            server.error = _redact(why, server.secrets)
            server.state, server.session = "failed", None
            server.next_retry = time.monotonic() + delay
            server.next_retry_utc = _wall(server.next_retry)
            server.settled.set()
            log.warning("MCP server %s: %s; next try in %g s", server.name, server.error, delay)
            await anyio.sleep(delay)

    async def _connect(self, server: _Server) -> None:
        """One connection of ``server``: start or reach it, initialize, list its tools, then watch
        it until it is lost (raises ``_Lost``, or the transport's error)."""
        server.epoch += 1
        server.lost, server.wake, server.relist = None, anyio.Event(), False
        server.stderr.clear()
        config = server.config
        async with AsyncExitStack() as stack:
            if config.command is not None:
                errlog = await stack.enter_async_context(self._stderr(server))
                params = StdioServerParameters(command=config.command[0], args=list(config.command[1:]), env=server.env)
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
                errlog.close()  # the child holds its own copy: the pipe ends when the child does
            else:
                assert config.url is not None
                read, write = await stack.enter_async_context(streamable_http_client(config.url))

            async def on_message(message: Any) -> None:
                if isinstance(message, mcp_types.ToolListChangedNotification):
                    server.relist = True
                    server.wake.set()
                elif isinstance(message, Exception):
                    log.debug("MCP server %s: transport: %s", server.name, _redact(_describe(message), server.secrets))

            session = await stack.enter_async_context(
                ClientSession(_Watched(read, server), write, client_info=_CLIENT, message_handler=on_message))
            start_s = max(config.timeout_s, MIN_START_S)
            try:
                with anyio.fail_after(start_s):
                    await session.initialize()
                    capabilities = session.server_capabilities
                    listed = await _list_tools(session) if capabilities is None or capabilities.tools is not None else []
            except TimeoutError:
                raise _Lost(f"the server did not start (initialize, list its tools) within {start_s:g} s") from None
            self._offer(server, listed)
            server.session = session
            server.state, server.connected_at, server.error = "connected", time.monotonic(), None
            server.connected_utc = _wall(server.connected_at)
            server.settled.set()
            log.info("MCP server %s connected (%s): %d tools: %s", server.name, server.transport, len(server.tools),
                     ", ".join(sorted(server.remote)) or "none")
            try:
                await self._watch(server, session)
            except _Lost as exc:
                server.lose(str(exc), server.epoch)  # no call waits on it while it closes
                raise
            finally:
                server.session = None
                if server.state == "connected":
                    server.state = "connecting"

    async def _watch(self, server: _Server, session: ClientSession) -> None:
        """Until the connection is lost: wait for a sign (the stream ended, a call failed, the tool
        list changed) or the ping interval, then ping (or list the tools again). Raises ``_Lost``."""
        timeout = server.config.timeout_s
        while True:
            with anyio.move_on_after(self.ping_interval_s):
                await server.wake.wait()
            if server.lost is not None:
                raise _Lost(server.lost)
            server.wake = anyio.Event()
            try:
                with anyio.fail_after(timeout):
                    if server.relist:
                        server.relist = False
                        self._offer(server, await _list_tools(session))
                    else:
                        await session.send_ping()
            except TimeoutError:
                raise _Lost(f"the server did not answer a ping within {timeout:g} s") from None
            except MCPError as exc:
                raise _Lost(server.lost or f"a ping failed: {exc.message}") from None

    def _offer(self, server: _Server, listed: list[mcp_types.Tool]) -> None:
        """Make ``listed`` (less what the allow-list leaves out) the server's tools."""
        allowed = server.config.tools
        if allowed is not None:
            missing = sorted(set(allowed) - {t.name for t in listed})
            if missing:
                log.warning("MCP server %s does not offer %s (named in its tools: list)", server.name, ", ".join(missing))
            listed = [t for t in listed if t.name in set(allowed)]
        others = {name for other in self._servers.values() if other is not server for name in other.tools}
        tools: dict[str, McpTool] = {}
        for t in sorted(listed, key=lambda t: (_UNSAFE.search(t.name) is not None, t.name)):
            name = tool_name(server.name, t.name, others | tools.keys())
            description = t.description or t.title or f"The tool {t.name} of the MCP server {server.label}."
            tools[name] = McpTool(self, server.name, server.label, t.name,
                                  ToolSpec(name, cut(description, MAX_DESCRIPTION), _object_schema(t.input_schema)))
        server.tools = tools
        server.remote = {t.remote for t in tools.values()}

    @asynccontextmanager
    async def _stderr(self, server: _Server) -> AsyncIterator[TextIO]:
        """A pipe for a subprocess's stderr (yields its write end): what the server writes there is
        logged at DEBUG, and its last lines kept for the status, without secrets."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        errlog = cast(TextIO, os.fdopen(w, "w"))
        buffer = bytearray()

        def take(data: bytes) -> None:
            buffer.extend(data)
            *lines, rest = buffer.split(b"\n")
            if len(rest) > 4096:
                lines, rest = [*lines, rest], bytearray()
            buffer[:] = rest
            for raw in lines:
                line = _redact(raw.decode("utf-8", "replace").strip(), server.secrets)
                if line:
                    server.stderr.append(line[:500])
                    log.debug("MCP server %s: %s", server.name, line[:500])

        def drain(limit: int = 1 << 20) -> bool:
            """Read what is there (at most ``limit`` bytes); False at the end of the pipe."""
            for _chunk in range(max(1, limit >> 16)):
                try:
                    data = os.read(r, 65536)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                if not data:
                    return False
                take(data)
            return True

        async def pump() -> None:
            try:
                while drain():
                    await anyio.wait_readable(r)
            finally:
                drain()
                if buffer:
                    take(b"\n")

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                try:
                    yield errlog
                finally:
                    tg.cancel_scope.cancel()
        finally:
            errlog.close()
            os.close(r)


async def _list_tools(session: ClientSession) -> list[mcp_types.Tool]:
    """Every tool the server lists, following its pages (at most 100)."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _page in range(100):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        result = await session.list_tools(params=params)
        tools.extend(result.tools)
        cursor = result.next_cursor
        if not cursor:
            break
    return tools


def _object_schema(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """A tool's input schema as an ``object`` schema with ``properties`` (what function calling wants)."""
    out = dict(schema or {})
    out.setdefault("type", "object")
    if out.get("type") == "object":
        out.setdefault("properties", {})
    return out
