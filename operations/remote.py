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

from actors.errors import ControlServerError

__all__ = ["CONTROL_FILE", "STARTING_WAIT_S", "RemoteError", "RunningBot", "find_bot", "reload_config", "run_operation"]

CONTROL_FILE = "control.json"  # url, pid and token of the running bot (written by actors.control)
STARTING_WAIT_S = 120.0  # how long to wait for a starting bot to open its stores
_OP_TIMEOUT_S = 3600.0  # socket timeout of an operation's stream (a long import may say nothing for minutes)


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


def _post(bot: RunningBot, path: str, body: bytes | None = None):
    """POST to the bot's admin API with its token; the open response (a context manager).
    raises urllib.error.HTTPError (an answer that is not 2xx), URLError / OSError (no answer)."""
    headers = {"Authorization": f"Bearer {bot.token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return urllib.request.urlopen(urllib.request.Request(f"{bot.url}{path}", data=body, method="POST", headers=headers),
                                  timeout=30 if body is None else _OP_TIMEOUT_S)


def reload_config(bot: RunningBot) -> str:
    """Ask ``bot`` to re-read and apply its config (``POST /admin/reload``); returns its summary.
    raises RemoteError (a broken file: the bot's summary names file, line and key; or no answer)."""
    try:
        with _post(bot, "/admin/reload") as resp:
            return str(json.loads(resp.read())["summary"])
    except urllib.error.HTTPError as exc:
        body = _json(exc.read())
        raise RemoteError(body.get("summary") or body.get("error") or f"the bot answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RemoteError(f"the bot's control server (pid {bot.pid}) does not answer at {bot.url}/admin/reload "
                          f"({getattr(exc, 'reason', exc)})") from None


def run_operation(bot: RunningBot, name: str, args: dict[str, Any], console: dict[str, Any],
                  write: Callable[[str, str], None], *, on_wait: Callable[[str], None] = lambda why: None) -> int:
    """Run operation ``name`` with ``args`` in ``bot``; ``write(stream, text)`` receives its output
    ("out" / "err") as it comes; returns its exit code. ``console`` describes our consoles (width,
    terminal, colours, encoding) so the bot renders as we would. A bot still opening its stores is
    waited for (``on_wait(reason)`` once), up to ``STARTING_WAIT_S``.
    raises RemoteError (the bot could not be reached, refused, or the operation failed: its message)."""
    body = json.dumps({"op": name, "args": args, "console": console}).encode()
    deadline = time.monotonic() + STARTING_WAIT_S
    waited = False
    while True:
        try:
            with _post(bot, "/admin/op", body) as resp:
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
