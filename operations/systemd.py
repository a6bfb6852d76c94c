"""Tell systemd how ``kith run`` is doing (``sd_notify``), for a ``Type=notify`` unit (deploy/kith.service).

systemd passes ``$NOTIFY_SOCKET``: the path of an AF_UNIX datagram socket (``@name`` for one in the
abstract namespace). Each notification is one datagram of ``KEY=value`` lines: ``READY=1`` once the
bot serves (stores open, model loaded, Telegram connected), ``STATUS=...`` while it starts (shown by
``systemctl status``), ``STOPPING=1`` when the shutdown (the drain) begins. Without the variable —
not under systemd, or in a container — every call does nothing. The protocol is ~10 lines of socket
code, so no package is needed for it (the ``sdnotify`` package is that code, unmaintained since 2019).
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["NOTIFY_ENV", "notify"]

NOTIFY_ENV = "NOTIFY_SOCKET"

log = logging.getLogger(__name__)


def notify(*lines: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=connecting"``) as one datagram to ``$NOTIFY_SOCKET``
    (``env`` defaults to ``os.environ``). Returns True when sent, False when the variable is unset or
    the socket cannot be reached (logged once per call at warning: systemd then sees no readiness and
    the unit's start times out, which says what went wrong). Never raises for a socket error."""
    address = (os.environ if env is None else env).get(NOTIFY_ENV, "")
    if not address or not lines:
        return False
    if address.startswith("@"):  # the abstract namespace: a leading NUL byte instead of '@'
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(lines).encode("utf-8"), address)
    except OSError as exc:
        log.warning("systemd notify (%s) failed: %s", ", ".join(line.split("=", 1)[0] for line in lines), exc)
        return False
    return True
