"""The reply a turn is streaming (``actors.turn`` step 5): what the model said so far and a line per
tool call it made, shown as they arrive, with the delivery noted once, before the first byte.

::

    live = AnswerStream(stream, elapsed_ms, first_byte=note_delivery, notice=tools.notice)
    await llm.complete(alias, messages, on_delta=live.on_delta, on_tool_call=live.on_tool_call)
    sent = await live.finish(answer)  # the notices head the final text
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from providers.tools import ToolCall

from .outbox import ReplyStream, Sent

__all__ = ["AnswerStream"]


class AnswerStream:
    """``stream`` fed by the model's callbacks. ``first_byte`` runs once, before anything is shown
    (``note_delivery``); ``elapsed_ms`` gives the turn's age, kept as ``ttft_ms`` at the first delta;
    ``notice`` is the line shown for a tool call (required when the model is offered tools)."""

    def __init__(self, stream: ReplyStream, elapsed_ms: Callable[[], float], first_byte: Callable[[], Awaitable[None]],
                 notice: Callable[[ToolCall], str] | None = None) -> None:
        self.stream = stream
        self.so_far: list[str] = []
        self.notices: list[str] = []
        self.ttft_ms: float | None = None
        self._elapsed_ms, self._first_byte, self._notice = elapsed_ms, first_byte, notice
        self._noted = False

    def head(self) -> str:
        """The tool-call notices, one a line, and a blank line after them; "" when there were none."""
        return "\n".join(self.notices) + "\n\n" if self.notices else ""

    async def note_delivery(self) -> None:
        """Run ``first_byte`` the first time only."""
        if not self._noted:
            self._noted = True
            await self._first_byte()

    async def on_delta(self, delta: str) -> None:
        """The model's next chunk: shown after the notices."""
        if self.ttft_ms is None:
            self.ttft_ms = self._elapsed_ms()
        self.so_far.append(delta)
        await self.note_delivery()
        await self.stream.update(self.head() + "".join(self.so_far))

    async def on_tool_call(self, call: ToolCall) -> None:
        """A tool call the model makes: its notice is shown as the call is made."""
        assert self._notice is not None
        self.notices.append(self._notice(call))
        await self.note_delivery()
        await self.stream.update(self.head().rstrip("\n") + ("\n\n" + "".join(self.so_far) if self.so_far else ""))

    async def finish(self, text: str) -> Sent:
        """Show the final ``text`` under the notices; the first message sent."""
        return await self.stream.finish(self.head() + text)
