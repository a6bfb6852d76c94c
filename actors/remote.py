"""The CLI's side of the control server: find the bot running on a data dir and run an operation
in it (``POST /admin/op``, see ``actors.control``), streaming its output to our own consoles.

Standard library only (``urllib``): nothing heavy to import for ``kith sub list`` and friends.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ControlServerError

CONTROL_FILE = "control.json"  # same as actors.control.TOKEN_FILE (not imported: that pulls aiohttp)
STARTING_WAIT_S = 120.0  # how long to wait for a starting bot to open its stores


class RemoteError(ControlServerError):
    """The running bot could not run the operation (it said why, or could not be reached)."""


@dataclass(frozen=True)
class RunningBot:
    """A bot serving a data dir: its control server's ``url``, admin ``token`` and ``pid``."""

    url: str
    token: str
    pid: int


def find_bot(data_dir: Path) -> RunningBot | None:
    """The bot running on ``data_dir``, from ``<data dir>/control.json``; None when there is none
    (no file, or a file left by a bot that is gone: its pid no longer runs)."""
    try:
        info = json.loads((data_dir / CONTROL_FILE).read_text(encoding="ascii"))
        bot = RunningBot(str(info["url"]), str(info["token"]), int(info["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(bot.pid, 0)
    except ProcessLookupError:
        return None  # killed without cleaning up (kill -9): its lock is gone too
    except PermissionError:
        pass  # runs as another user: the token file would not have been readable
    return bot


def run_operation(bot: RunningBot, name: str, args: dict[str, Any], console: dict[str, Any],
                  write: Callable[[str, str], None], *, on_wait: Callable[[str], None] = lambda why: None,
                  timeout_s: float = 3600.0) -> int:
    """Run operation ``name`` with ``args`` in ``bot``; ``write(stream, text)`` receives its output
    ("out" / "err") as it comes; returns its exit code. ``console`` describes our consoles (width,
    terminal, colours, encoding) so the bot renders as we would. A bot still opening its stores is
    waited for (``on_wait(reason)`` once), up to ``STARTING_WAIT_S``.
    raises RemoteError (the bot could not be reached, refused, or the operation failed: its message)."""
    body = json.dumps({"op": name, "args": args, "console": console}).encode()
    deadline = time.monotonic() + STARTING_WAIT_S
    waited = False
    while True:
        request = urllib.request.Request(f"{bot.url}/admin/op", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {bot.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return _relay(resp, write)
        except urllib.error.HTTPError as exc:
            answer = _json(exc.read())
            if exc.code == 503 and answer.get("retry") and time.monotonic() < deadline:
                if not waited:
                    on_wait(str(answer.get("error", "starting")))
                    waited = True
                time.sleep(0.5)
                continue
            raise RemoteError(f"the running bot (pid {bot.pid}) refused: {answer.get('error') or f'HTTP {exc.code}'}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"a bot (pid {bot.pid}) runs on this data dir but its control server does not answer "
                              f"at {bot.url} ({getattr(exc, 'reason', exc)})") from None


def _relay(resp, write: Callable[[str, str], None]) -> int:
    for raw in resp:
        frame = _json(raw)
        for stream in ("out", "err"):
            if stream in frame:
                write(stream, frame[stream])
        if "exit" in frame:
            if frame.get("error"):
                raise RemoteError(str(frame["error"]))
            return int(frame["exit"])
    raise RemoteError("the bot closed the connection before the operation finished (did it stop?)")


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
