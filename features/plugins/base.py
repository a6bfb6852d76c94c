"""What a built-in tool is: the ``Tool`` protocol and the ``ToolContext`` each call gets.

A tool is offered to the model as a ``ToolSpec`` (name, description, JSON-schema parameters) and
run by the tool-calling loop (``providers.llm``) with the arguments the model gave, already parsed
into a dict. ``run`` never raises for a failure of the tool's own (bad arguments, a refused URL, an
engine down): it returns ``ToolOutcome(text, error=True)`` saying what went wrong, in English, for
the model. Only cancellation, and a bug, propagate. Outcome texts are for the model, not shown to
members; ``notice`` is the one line a member sees per call, in their language (``i18n``).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from features.plugins.errors import BadArguments
from providers.tools import ToolOutcome, ToolSpec

__all__ = ["Tool", "ToolContext", "ToolOutcome", "ToolSpec", "cut", "short", "text_arg"]


@dataclass(frozen=True)
class ToolContext:
    """Who a tool call is for. ``timezone``: the member's IANA zone (``"Europe/Berlin"``);
    ``now``: the turn's time, tz-aware (UTC), so one turn sees one clock; ``language``: the
    member's interface language (ISO 639-1); ``thread_id``: the forum topic of the turn (None: the
    chat outside topics)."""

    chat_id: int
    user_id: int
    timezone: str
    now: datetime
    language: str
    thread_id: int | None = None


@runtime_checkable
class Tool(Protocol):
    """A tool the model may call. ``plugin``: the plugin it belongs to (``"web"``, ``"calculator"``,
    ``"time"``), the unit a tier or a chat switches on and off."""

    @property
    def spec(self) -> ToolSpec: ...

    @property
    def plugin(self) -> str: ...

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """Run one call with the model's ``args``; an error outcome (never an exception) on failure."""
        ...

    def notice(self, args: dict[str, Any]) -> str:
        """The short line the chat shows for this call ("🧮 calculated 2*(3+4)"), translated into
        the current ``i18n`` language; never raises, whatever ``args`` hold."""
        ...


def text_arg(args: dict[str, Any], name: str, *, required: bool = True, max_chars: int = 2000) -> str | None:
    """The string argument ``name`` of ``args``, stripped; None when absent and not ``required``.
    Raises ``BadArguments`` when it is missing (and required), not a string, empty or longer than
    ``max_chars``."""
    value = args.get(name) if isinstance(args, dict) else None
    if value is None:
        if required:
            raise BadArguments(f"missing argument {name!r}")
        return None
    if not isinstance(value, str):
        raise BadArguments(f"argument {name!r} must be a string, not {type(value).__name__}")
    value = value.strip()
    if not value:
        if required:
            raise BadArguments(f"argument {name!r} is empty")
        return None
    if len(value) > max_chars:
        raise BadArguments(f"argument {name!r} is longer than {max_chars} characters")
    return value


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (at a line or word end when one is near), with a
    note of the cut for the model; ``text`` itself when it fits."""
    if len(text) <= limit:
        return text
    note = f"\n[… cut here: {len(text)} characters in all]"
    keep = max(0, limit - len(note))
    head = text[:keep]
    for sep in ("\n", " "):
        at = head.rfind(sep)
        if at >= keep * 0.8:
            head = head[:at]
            break
    return head.rstrip() + note


def short(text: str, limit: int = 60) -> str:
    """``text`` on one line, at most ``limit`` characters (an ellipsis when cut): for notices."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"
