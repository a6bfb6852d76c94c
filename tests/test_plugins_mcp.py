"""MCP servers as plugins (features.plugins.mcp) against a real MCP server: tests/mcp_server.py,
built with the official SDK's own server, started by the hub over stdio (``sys.executable
tests/mcp_server.py``) and by these tests over streamable HTTP on 127.0.0.1."""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import mcp.types as mcp_types
import psutil
import pydantic
import pytest

import i18n
from config import ConfigError, load_config
from config.models import McpServer, PluginsSettings
from features.plugins import Tool, ToolContext
from features.plugins.mcp import McpConfigError, McpHub, McpTool, expand_env, result_text, tool_name

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SERVER = str(ROOT / "tests" / "mcp_server.py")
STDIO = [sys.executable, SERVER]
CTX = ToolContext(chat_id=1, user_id=2, timezone="UTC", now=datetime(2026, 7, 1, 12, 0, tzinfo=UTC), language="en")
ALL = ["add", "crash", "echo", "fail", "getenv", "nap", "picture", "pid"]


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_http_server(port: int) -> subprocess.Popen:
    """tests/mcp_server.py over streamable HTTP on 127.0.0.1:port, once it accepts connections."""
    proc = subprocess.Popen([*STDIO, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            assert proc.poll() is None, "the HTTP MCP server exited at start"
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the HTTP MCP server did not start within 30 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def until(hub: McpHub, name: str, state: str, timeout: float = 20.0):
    """The status of ``name`` once it is ``state`` (fails after ``timeout`` seconds)."""
    with anyio.fail_after(timeout):
        while True:
            status = {s.name: s for s in hub.status()}[name]
            if status.state == state:
                return status
            await anyio.sleep(0.05)


async def call(hub: McpHub, tool: str, **args):
    return await hub.tools()[tool].run(args, CTX)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    port = free_port()
    proc = start_http_server(port)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
async def hub(http_url):
    """One hub for the read-only tests: ``files`` (stdio, every tool), ``picky`` (stdio, an
    allow-list, a label) and ``web`` (streamable HTTP)."""
    servers = {
        "files": McpServer(command=STDIO, env={"KITH_GREETING": "hello ${KITH_MCP_TEST_NAME}!"}),
        "picky": McpServer(command=STDIO, tools=["add", "echo", "no_such_tool"], label="Picky"),
        "web": McpServer(url=http_url),
    }
    async with McpHub(servers, environ={**os.environ, "KITH_MCP_TEST_NAME": "world"}, output_chars=500) as h:
        yield h


# ---------------------------------------------------------------- listing and calling


async def test_lists_each_servers_tools_as_kith_tools(hub):
    status = {s.name: s for s in hub.status()}
    assert [s.name for s in hub.status()] == ["files", "picky", "web"]
    assert {s.state for s in status.values()} == {"connected"}
    assert status["files"].transport == "stdio" and status["web"].transport == "http"
    assert status["files"].tools == tuple(f"files__{t}" for t in ALL)
    assert status["web"].tools == tuple(f"web__{t}" for t in ALL)
    assert status["files"].error is None and status["files"].next_retry is None and status["files"].connected_since

    add = hub.tools()["files__add"]
    assert isinstance(add, Tool) and isinstance(add, McpTool)
    assert add.plugin == "mcp:files" and add.spec.name == "files__add"
    assert add.spec.description == "Add two numbers."
    params = add.spec.parameters
    assert params["type"] == "object" and set(params["properties"]) == {"a", "b"} and params["required"] == ["a", "b"]
    assert add.spec.as_openai()["function"]["name"] == "files__add"


async def test_the_allow_list_keeps_only_the_tools_it_names(hub):
    picky = {s.name: s for s in hub.status()}["picky"]
    assert picky.tools == ("picky__add", "picky__echo") and picky.label == "Picky"
    assert "picky__crash" not in hub.tools()
    assert (await hub.call("picky", "crash", {})).text == "the MCP server 'Picky' does not offer the tool 'crash' (any more)"


@pytest.mark.parametrize("server", ["files", "web"])
async def test_calls_both_tools(hub, server):
    out = await call(hub, f"{server}__add", a=2, b=3.5)
    assert (out.text, out.error) == ("5.5", False)
    out = await call(hub, f"{server}__echo", text="Привет, <b>world</b>")
    assert (out.text, out.error) == ("Привет, <b>world</b>", False)


@pytest.mark.parametrize("server", ["files", "web"])
async def test_other_content_is_summarised(hub, server):
    out = await call(hub, f"{server}__picture")
    assert (out.text, out.error) == ("a tiny picture:\n[image: image/png]", False)


@pytest.mark.parametrize("server", ["files", "web"])
async def test_an_error_result_is_an_error_outcome(hub, server):
    out = await call(hub, f"{server}__fail", reason="the disk is on fire")
    assert out.error and "the disk is on fire" in out.text
    bad = await call(hub, f"{server}__add", a="two")  # the server refuses the arguments: an error result too
    assert bad.error and "validation error" in bad.text
    assert {s.name: s.state for s in hub.status()}[server] == "connected"


async def test_output_is_cut_to_output_chars(hub):
    out = await call(hub, "files__echo", text="word " * 400)
    assert not out.error and len(out.text) <= 500 and "cut here: 2000 characters" in out.text


async def test_calls_are_logged_with_argument_names_not_values(hub, caplog):
    caplog.set_level(logging.DEBUG, logger="features.plugins.mcp")
    await call(hub, "files__echo", text="my private words")
    lines = [r.getMessage() for r in caplog.records if r.name == "features.plugins.mcp" and r.levelno == logging.INFO]
    assert any(line.startswith("MCP call files/echo (arguments: text): ok in ") for line in lines), lines
    assert "my private words" not in caplog.text


async def test_a_call_that_overruns_timeout_s_is_an_error_outcome(tmp_path):
    async with McpHub({"slow": McpServer(command=STDIO, timeout_s=1.0)}) as hub:
        started = time.monotonic()
        out = await call(hub, "slow__nap", seconds=30)
        assert time.monotonic() - started < 3
        assert out.error and out.text == "the MCP server 'slow' did not answer within 1 s"
        assert (await call(hub, "slow__add", a=1, b=1)).text == "2"  # still connected
        assert hub.status()[0].state == "connected"


async def test_notice_names_the_tool_and_the_server(hub):
    add, echo = hub.tools()["files__add"], hub.tools()["picky__echo"]
    assert add.notice({"a": 1}) == "🔌 used add (files)"
    assert echo.notice({}) == "🔌 used echo (Picky)"
    with i18n.use("ru"):
        assert echo.notice({}) == "🔌 вызвал echo (Picky)"


# ---------------------------------------------------------------- failures and restarts


async def test_a_server_that_dies_is_restarted_and_its_tools_come_back():
    async with McpHub({"files": McpServer(command=STDIO)}) as hub:
        first = (await call(hub, "files__pid")).text
        crashed = await call(hub, "files__crash")
        assert crashed.error and "lost during the call" in crashed.text

        started = time.monotonic()
        meanwhile = await call(hub, "files__add", a=1, b=2)
        assert time.monotonic() - started < 0.5  # said at once, no waiting for the restart
        assert meanwhile.error and meanwhile.text.startswith("the MCP server 'files' is not connected (restarting: ")
        assert "the server closed the connection" in meanwhile.text

        down = hub.status()[0]
        assert down.state in ("failed", "connecting") and down.error.startswith("the server closed the connection")
        assert down.tools == tuple(f"files__{t}" for t in ALL)  # still listed while it is down
        with anyio.fail_after(2):
            while (failed := hub.status()[0]).next_retry is None:
                await anyio.sleep(0.01)
        assert failed.state == "failed" and failed.failures == 1
        assert datetime.now(UTC) - timedelta(seconds=1) <= failed.next_retry <= datetime.now(UTC) + timedelta(seconds=2)

        back = await until(hub, "files", "connected")
        assert back.error is None and back.tools == tuple(f"files__{t}" for t in ALL)
        second = (await call(hub, "files__pid")).text
        assert second != first and not psutil.pid_exists(int(first))
        assert (await call(hub, "files__add", a=1, b=2)).text == "3"


async def test_a_server_killed_between_calls_is_noticed_and_restarted():
    async with McpHub({"files": McpServer(command=STDIO)}) as hub:
        pid = int((await call(hub, "files__pid")).text)
        os.kill(pid, signal.SIGKILL)
        failed = await until(hub, "files", "failed", timeout=5)  # the end of its stdout, no call needed
        assert failed.error == "the server closed the connection"
        await until(hub, "files", "connected")
        assert int((await call(hub, "files__pid")).text) != pid


async def test_a_server_that_hangs_is_noticed_by_its_ping_and_replaced():
    async with McpHub({"files": McpServer(command=STDIO, timeout_s=1.0)}, ping_interval_s=0.5) as hub:
        pid = int((await call(hub, "files__pid")).text)
        os.kill(pid, signal.SIGSTOP)  # alive, answering nothing
        try:
            started = time.monotonic()
            out = await call(hub, "files__add", a=1, b=1)
            assert out.error and time.monotonic() - started < 2.5
            with anyio.fail_after(5):
                while hub.status()[0].error != "the server did not answer a ping within 1 s":
                    await anyio.sleep(0.05)
            await until(hub, "files", "connected", timeout=20)
            assert int((await call(hub, "files__pid")).text) != pid
            assert not psutil.pid_exists(pid)
        finally:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


async def test_backoff_doubles_up_to_its_limit(caplog):
    caplog.set_level(logging.WARNING, logger="features.plugins.mcp")
    hub = McpHub({"gone": McpServer(command=["kith-no-such-mcp-server", "--stdio"])}, backoff_initial_s=0.1, backoff_max_s=0.4)
    async with hub:
        with anyio.fail_after(10):
            while hub.status()[0].failures < 5:
                await anyio.sleep(0.01)
    waits = [re.search(r"next try in (\S+) s$", r.getMessage())[1] for r in caplog.records if "MCP server gone" in r.getMessage()]
    assert waits[:5] == ["0.1", "0.2", "0.4", "0.4", "0.4"]


async def test_a_command_that_does_not_exist_is_failed_with_the_reason():
    async with McpHub({"gone": McpServer(command=["kith-no-such-mcp-server", "--stdio"])}) as hub:
        status = hub.status()[0]
        assert status.state == "failed" and status.tools == () and status.failures == 1
        assert status.error == "FileNotFoundError: [Errno 2] No such file or directory: 'kith-no-such-mcp-server'"
        assert status.next_retry is not None and status.next_retry > datetime.now(UTC) - timedelta(seconds=1)
        assert hub.tools() == {}
        started = time.monotonic()
        out = await hub.call("gone", "anything", {})
        assert time.monotonic() - started < 0.1
        assert out.error and out.text.startswith("the MCP server 'gone' is not connected (restarting: FileNotFoundError")


async def test_a_server_that_exits_at_start_says_what_it_printed(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import sys\nprint('config file /etc/x.toml is missing', file=sys.stderr)\nsys.exit(2)\n")
    async with McpHub({"broken": McpServer(command=[sys.executable, str(script)], timeout_s=5)}) as hub:
        status = hub.status()[0]
        assert status.state == "failed"
        assert status.error == "the server closed the connection (its last line on stderr: 'config file /etc/x.toml is missing')"


async def test_http_server_gone_and_back(tmp_path):
    port = free_port()
    proc = start_http_server(port)
    try:
        async with McpHub({"web": McpServer(url=f"http://127.0.0.1:{port}/mcp")}, ping_interval_s=1.0) as hub:
            assert (await call(hub, "web__add", a=1, b=1)).text == "2"
            stop(proc)
            down = await until(hub, "web", "failed", timeout=10)
            assert down.error
            out = await call(hub, "web__add", a=1, b=1)
            assert out.error and out.text.startswith("the MCP server 'web' is not connected (restarting: ")
            proc = start_http_server(port)
            await until(hub, "web", "connected", timeout=30)
            assert (await call(hub, "web__add", a=2, b=2)).text == "4"
    finally:
        stop(proc)


# ---------------------------------------------------------------- env and secrets


async def test_env_values_take_the_hosts_variables(hub):
    assert (await call(hub, "files__getenv", name="KITH_GREETING")).text == "hello world!"
    assert (await call(hub, "files__getenv", name="KITH_MCP_TEST_NAME")).text == ""  # only what env names reaches it


async def test_an_unset_variable_keeps_the_server_off_and_names_the_key():
    config = McpServer(command=STDIO, env={"API_TOKEN": "Bearer ${KITH_MCP_UNSET_TOKEN}"})
    with pytest.raises(McpConfigError, match=r"MCP server 'vault': env API_TOKEN refers to \$\{KITH_MCP_UNSET_TOKEN\}, "
                                             r"which is not set in the bot's environment"):
        expand_env("vault", config, {})
    assert expand_env("vault", config, {"KITH_MCP_UNSET_TOKEN": ""}) == {"API_TOKEN": "Bearer "}
    async with McpHub({"vault": config}, environ={}) as hub:
        status = hub.status()[0]
        assert status.state == "failed" and status.next_retry is None and status.tools == ()
        assert "env API_TOKEN refers to ${KITH_MCP_UNSET_TOKEN}" in status.error
        out = await hub.call("vault", "add", {})
        assert out.error and out.text.startswith("the MCP server 'vault' is not available: MCP server 'vault': env API_TOKEN")


async def test_secrets_are_cut_out_of_errors_and_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="features.plugins.mcp")
    secret = "s3cr3t-t0ken-value"
    async with McpHub({"vault": McpServer(command=STDIO, env={"TOKEN": "${KITH_MCP_SECRET}"})},
                      environ={**os.environ, "KITH_MCP_SECRET": secret}) as hub:
        assert (await call(hub, "vault__getenv", name="TOKEN")).text == secret  # a result is the server's data
        out = await call(hub, "vault__fail", reason=f"token {secret} was refused")
        assert out.error and secret not in out.text and "token [redacted] was refused" in out.text
    port = free_port()  # nothing listens there
    async with McpHub({"remote": McpServer(url=f"http://127.0.0.1:{port}/mcp?key={secret}", timeout_s=3)}) as hub:
        status = hub.status()[0]
        assert status.state == "failed" and secret not in status.error
    assert secret not in caplog.text


# ---------------------------------------------------------------- only the host, shutdown


async def test_only_the_configured_servers_exist():
    servers = {"files": McpServer(command=["kith-no-such-mcp-server"])}
    hub = McpHub(servers)
    servers["evil"] = McpServer(command=[sys.executable, "-c", "print('pwned')"])
    async with hub:
        assert [s.name for s in hub.status()] == ["files"]
        out = await hub.call("evil", "x", {"command": ["sh"], "url": "http://example.org"})
        assert out.error and out.text == "there is no MCP server 'evil'"
    assert not any(hasattr(hub, verb) for verb in ("add", "add_server", "connect", "register"))


async def test_leaving_the_hub_closes_every_session_and_subprocess(http_url):
    hub = McpHub({"a": McpServer(command=STDIO), "b": McpServer(command=STDIO), "web": McpServer(url=http_url)})
    before = set(psutil.Process().children(recursive=True))
    async with hub:
        pids = [int((await call(hub, f"{name}__pid")).text) for name in ("a", "b")]
        assert all(psutil.pid_exists(pid) for pid in pids)
        nap = hub.tools()["a__nap"]
        async with anyio.create_task_group() as tg:  # a call in flight when the hub closes
            tg.start_soon(nap.run, {"seconds": 30}, CTX)
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert set(psutil.Process().children(recursive=True)) <= before
    assert {s.state for s in hub.status()} == {"failed"} and all(s.error for s in hub.status())
    out = await hub.call("a", "add", {"a": 1, "b": 1})
    assert out.error and "not connected" in out.text
    with pytest.raises(RuntimeError):
        async with hub:
            pass


# ---------------------------------------------------------------- names, results, config


def test_tool_names_are_safe_and_short():
    assert tool_name("files", "read_file") == "files__read_file"
    assert tool_name("files", "read.file v2") == "files__read_file_v2"
    long = tool_name("files", "x" * 80)
    assert len(long) == 64 and long.startswith("files__xxx") and long == tool_name("files", "x" * 80)
    clash = tool_name("files", "a.b", taken={"files__a_b"})
    assert clash != "files__a_b" and clash.startswith("files__a_b_") and len(clash) == len("files__a_b") + 9
    for name in (long, clash, tool_name("srv", "ünïcode/tool")):
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


def test_result_text_joins_text_and_summarises_the_rest():
    result = mcp_types.CallToolResult(content=[
        mcp_types.TextContent(text="first"),
        mcp_types.ImageContent(data="AAAA", mime_type="image/jpeg"),
        mcp_types.AudioContent(data="AAAA", mime_type="audio/wav"),
        mcp_types.ResourceLink(name="report", uri="file:///srv/report.pdf"),
        mcp_types.EmbeddedResource(resource=mcp_types.TextResourceContents(uri="file:///a.txt", text="inside")),
        mcp_types.EmbeddedResource(resource=mcp_types.BlobResourceContents(uri="file:///b.bin", blob="AAAA",
                                                                           mime_type="application/zip")),
    ])
    assert result_text(result).split("\n") == [
        "first", "[image: image/jpeg]", "[audio: audio/wav]", "[resource link: report file:///srv/report.pdf]",
        "[resource file:///a.txt]", "inside", "[resource file:///b.bin: application/zip, binary]"]
    assert result_text(mcp_types.CallToolResult(content=[], structured_content={"n": 1})) == '{"n": 1}'
    assert result_text(mcp_types.CallToolResult(content=[])) == "(no output)"


def test_mcp_server_config_needs_exactly_one_transport():
    assert McpServer(command=["srv"]).timeout_s == 20 and McpServer(url="https://x/mcp").tools is None
    for bad in ({}, {"command": ["srv"], "url": "http://x/mcp"}):
        with pytest.raises(pydantic.ValidationError, match="exactly one of command"):
            McpServer(**bad)
    with pytest.raises(pydantic.ValidationError, match="env is for a command"):
        McpServer(url="http://x/mcp", env={"A": "b"})
    with pytest.raises(pydantic.ValidationError, match="must name a program"):
        McpServer(command=[])
    with pytest.raises(pydantic.ValidationError, match="http:// or https://"):
        McpServer(url="ftp://x")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        McpServer(command=["srv"]).timeout_s = 3  # type: ignore[misc]
    assert McpServer(command=["srv"], env={"A": "${X}-${Y}", "B": "plain"}).env_refs() == {"X", "Y"}
    assert PluginsSettings().mcp == {}


def test_kith_yaml_errors_name_the_server(tmp_path):
    def error(text: str) -> ConfigError:
        path = tmp_path / "kith.yaml"
        path.write_text(textwrap.dedent(text))
        with pytest.raises(ConfigError) as info:
            load_config(path, env={})
        return info.value

    err = error("""\
        plugins:
          mcp:
            files:
              command: [srv]
              url: http://127.0.0.1:1/mcp
        """)
    assert (err.line, err.key) == (3, "plugins.mcp.files") and "exactly one of command" in str(err)
    err = error("""\
        plugins:
          mcp:
            gh:
              command: [srv]
              env: {TOKEN: "${GH_TOKEN"}
        """)
    assert err.key == "plugins.mcp.gh.env.TOKEN" and "${NAME}" in str(err)
    err = error("""\
        plugins:
          mcp:
            "two words": {command: [srv]}
        """)
    assert err.key == "plugins.mcp.two words" and "letters, digits" in str(err)
    path = tmp_path / "kith.yaml"
    path.write_text("plugins:\n  mcp:\n    files: {command: [srv, --root, /srv], tools: [read], label: Files}\n")
    server = load_config(path, env={}).settings.plugins.mcp["files"]
    assert server == McpServer(command=["srv", "--root", "/srv"], tools=["read"], label="Files")


async def test_an_error_in_the_hubs_body_leaves_as_itself_and_the_server_stops():
    hub = McpHub({"files": McpServer(command=STDIO)})
    with pytest.raises(LookupError, match="the body's own"):
        async with hub:
            assert (await call(hub, "files__add", a=1, b=2)).text == "3"
            raise LookupError("the body's own error")  # not wrapped in an ExceptionGroup
    closed = await call(hub, "files__add", a=1, b=2)
    assert closed.error and hub.status()[0].state == "failed"
