"""The replay transport: feed a transcript through the full pipeline and report (docs/design.md §9).

Nobody in a real log addresses the bot, so a policy decides which messages do:
``questions`` (messages ending with "?"), ``all``, ``none`` or ``nick:NAME`` (that speaker's messages).
Every message is stored and remembered, as in a real group.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from actors.events import PRIVATE, Incoming, Sender
from actors.runtime import Runtime
from actors.services import ALREADY_ANSWERED, TurnReport
from memory.errors import TranscriptLineError
from memory.transcripts import read_transcript
from memory.types import StoredMessage

__all__ = ["ReplayReport", "TranscriptClock", "percentile", "replay", "respond_policy"]


class TranscriptClock:
    """A clock that follows the transcript: the date of the latest message fed in (UTC).

    Pass it to ``open_runtime(clock=...)`` so quotas, rate limits and usage rows count transcript
    time, not the wall clock of a replay that runs a day of chat in seconds.
    """

    def __init__(self, start: datetime = datetime(1970, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def respond_policy(spec: str) -> Callable[[StoredMessage], bool]:
    """Parse a policy: ``questions`` | ``all`` | ``none`` | ``nick:NAME``. raises ValueError."""
    if spec == "questions":
        return lambda m: m.text.rstrip().endswith("?")
    if spec == "all":
        return lambda m: bool(m.text.strip())
    if spec == "none":
        return lambda m: False
    if spec.startswith("nick:") and len(spec) > 5:
        nick = spec[5:]
        return lambda m: m.user_name == nick
    raise ValueError(f"unknown respond policy {spec!r}: use questions, all, none or nick:NAME")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0–100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


@dataclass
class ReplayReport:
    """What a replay did. Latencies in ms; cost in USD (None when a model has no known price)."""

    messages: int = 0
    replies: int = 0
    line_errors: list[TranscriptLineError] = field(default_factory=list)
    turns: list[TurnReport] = field(default_factory=list)

    @property
    def answered(self) -> list[TurnReport]:
        return [t for t in self.turns if t.responded]

    def latency(self, q: float) -> float:
        return percentile([t.total_ms for t in self.answered], q)

    def overhead(self, q: float) -> float:
        return percentile([t.overhead_ms for t in self.turns], q)

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def completion_tokens(self) -> int:
        return sum(t.completion_tokens for t in self.turns)

    @property
    def cost_usd(self) -> float | None:
        costs = [t.cost_usd for t in self.answered if t.error is None]
        return None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]

    @property
    def memories_used(self) -> int:
        return sum(len(t.hits) for t in self.turns)

    @property
    def errors(self) -> int:
        """Turns the model failed to answer (refusals and messages answered before are not errors)."""
        return sum(1 for t in self.turns if t.responded and t.error)

    @property
    def refused(self) -> int:
        """Turns refused by the tier (quota, member rate)."""
        return sum(1 for t in self.turns if not t.responded and (t.error or "").startswith("refused"))

    @property
    def already_answered(self) -> int:
        """Messages the bot had answered before (an earlier run on the same data dir): not answered again."""
        return sum(1 for t in self.turns if t.error == ALREADY_ANSWERED)

    def as_dict(self) -> dict:
        return {
            "messages": self.messages,
            "replies": self.replies,
            "line_errors": len(self.line_errors),
            "llm_errors": self.errors,
            "refused": self.refused,
            "already_answered": self.already_answered,
            "latency_ms": {"p50": round(self.latency(50), 2), "p99": round(self.latency(99), 2)},
            "overhead_ms": {"p50": round(self.overhead(50), 3), "p99": round(self.overhead(99), 3)},
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "memories_used": self.memories_used,
        }


async def replay(
    rt: Runtime,
    path: Path,
    *,
    policy: Callable[[StoredMessage], bool],
    limit: int | None = None,
    on_error: Callable[[TranscriptLineError], None] = lambda e: None,
    on_message: Callable[[StoredMessage], None] = lambda m: None,
    clock: TranscriptClock | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ReplayReport:
    """Feed ``path`` (transcript JSONL or Telegram export) through ``rt``; wait for every turn.

    should_stop: checked before each message; once True no more is fed, and what was fed is still
    handled, stored and embedded before this returns (``kith replay`` on SIGTERM).

    Turn reports arrive through ``rt.services.on_turn``; the caller's hook is kept and chained.
    A malformed line is reported through ``on_error`` (with its line number) and skipped.
    """
    report = ReplayReport()
    previous = rt.services.on_turn

    def collect(t: TurnReport) -> None:
        report.turns.append(t)
        if t.responded and t.error is None:
            report.replies += 1
        if previous is not None:
            previous(t)

    rt.services.on_turn = collect
    try:
        reader = read_transcript(path)
        for item in reader:
            if isinstance(item, TranscriptLineError):
                report.line_errors.append(item)
                on_error(item)
                continue
            if (limit is not None and report.messages >= limit) or should_stop():
                break
            m = item
            if clock is not None:
                clock.now = max(clock.now, m.date)
            report.messages += 1
            on_message(m)
            meta = reader.chats.get(m.chat_id)
            ev = Incoming(
                chat_id=m.chat_id,
                chat_type=meta.type if meta else (PRIVATE if m.chat_id > 0 else "supergroup"),
                chat_title=meta.title if meta else None,
                message_id=m.message_id,
                sender=Sender(m.user_id, m.user_name),
                text=m.text,
                date=m.date,
                reply_to=m.reply_to,
                thread_id=m.thread_id,
                respond=policy(m),
            )
            await rt.supervisor.tell(m.chat_id, ev)
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
    finally:
        rt.services.on_turn = previous
    return report
