"""A tiny MCP server for the tests of ``features.plugins.mcp``, built with the official SDK's own
server (``mcp.server.mcpserver.MCPServer``, FastMCP before mcp 2).

Run: ``python tests/mcp_server.py`` serves over stdio; ``python tests/mcp_server.py --http PORT``
serves streamable HTTP on ``http://127.0.0.1:PORT/mcp``.

Tools: ``add(a, b)`` → the sum; ``echo(text)`` → the text; ``fail(reason)`` → an error result
(``isError``) saying ``reason``; ``picture()`` → a text part and an image; ``getenv(name)`` → an
environment variable of the server's process ("" when unset); ``pid()`` → the process id;
``nap(seconds)`` sleeps, then says so; ``crash()`` ends the process at once (exit status 3), without
answering.
"""
from __future__ import annotations

import argparse
import base64
import os

import anyio
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("kith-test")

# a 1×1 transparent PNG
_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    total = a + b
    return str(int(total) if float(total).is_integer() else total)


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return text


@server.tool()
def fail(reason: str) -> str:
    """Fail with the reason given (an error result)."""
    raise ToolError(reason)


@server.tool(structured_output=False)
def picture():  # type: ignore[no-untyped-def]
    """A caption and a tiny image."""
    return ["a tiny picture:", Image(data=_PNG, format="png")]


@server.tool()
def getenv(name: str) -> str:
    """An environment variable of this server's process, "" when unset."""
    return os.environ.get(name, "")


@server.tool()
def pid() -> str:
    """This server's process id."""
    return str(os.getpid())


@server.tool()
async def nap(seconds: float) -> str:
    """Sleep, then say so."""
    await anyio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
def crash() -> str:
    """End the server's process at once, answering nothing."""
    os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()


if __name__ == "__main__":
    main()
