"""The ``time`` tool: what time it is now, in the member's time zone or another one (zoneinfo, the
IANA tz database: the system's, else the pinned ``tzdata`` package)."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import anyio

from features.plugins.base import ToolContext, ToolOutcome, ToolSpec, short, text_arg
from features.plugins.errors import PluginError, UnknownTimeZone
from i18n import _

__all__ = ["Clock", "describe", "zone"]


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``"Europe/Berlin"``, ``"UTC"``). Raises ``UnknownTimeZone``."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; "../x" a ValueError
        raise UnknownTimeZone(f"unknown time zone {short(name, 60)!r}: use an IANA name such as Europe/Berlin, "
                              "America/New_York or UTC") from None


def describe(now: datetime, tz_name: str) -> str:
    """``now`` (tz-aware; naive is taken as UTC) in zone ``tz_name``, for the model:
    ``"2026-03-29T03:30:00+02:00, Sunday, in Europe/Berlin (CEST, UTC+02:00)"``.
    Raises ``UnknownTimeZone``."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    local = now.astimezone(zone(tz_name)).replace(microsecond=0)
    offset = local.strftime("%z")  # +0200
    utc = f"UTC{offset[:3]}:{offset[3:]}"
    abbreviation = local.tzname() or ""
    named = f"{abbreviation}, {utc}" if abbreviation and not abbreviation.startswith(("+", "-")) and abbreviation != "UTC" else utc
    return f"{local.isoformat()}, {local.strftime('%A')}, in {tz_name} ({named})"


class Clock:
    """The ``time`` tool (plugin ``time``): args ``{}`` → now in ``ctx.timezone``; ``{"timezone":
    "Asia/Tokyo"}`` → now there. Uses ``ctx.now``, so a turn sees one time. An unknown zone is an
    error outcome."""

    plugin = "time"
    spec = ToolSpec(
        name="time",
        description=("The current date and time (ISO 8601), weekday and UTC offset, in the user's time zone "
                     "or in the IANA time zone given."),
        parameters={
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "an IANA time zone such as Europe/Berlin; "
                                                                          "omit it for the user's own"}},
            "required": [],
        },
    )

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """See the class. In a worker thread: zoneinfo reads a zone's file on its first use."""
        try:
            name = text_arg(args, "timezone", required=False, max_chars=100) or ctx.timezone
            return ToolOutcome(await anyio.to_thread.run_sync(describe, ctx.now, name, abandon_on_cancel=True))
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)

    def notice(self, args: dict[str, Any]) -> str:
        tz = args.get("timezone") if isinstance(args, dict) else None
        if isinstance(tz, str) and tz.strip():
            return _("🕒 looked at the time in {zone}", zone=short(tz, 40))
        return _("🕒 looked at the time")
