"""What every chat actor shares: config, memory, the LLM, the bot's identity, the clock, metrics."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from config.models import Config
from memory.service import Memory
from memory.types import MemoryHit, UsageRecord

from .events import ChatEvent

if TYPE_CHECKING:  # (types only: none of these imports the actor runtime)
    from memory.cleanup import Janitor
    from providers.images import ImageGenerator
    from providers.keys import KeyVault
    from providers.llm import LLM
    from providers.transcription import Transcriber
    from tiers.admission import Admission

__all__ = ["ALREADY_ANSWERED", "Actors", "BotIdentity", "Services", "SupervisorStats", "TurnReport", "utc_now"]

T = TypeVar("T")


ALREADY_ANSWERED = "already answered"  # TurnReport.error of a message the bot answered before (exactly once)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class SupervisorStats:
    """Counters of the chat actors since start (``/admin``, ``/metrics``)."""

    spawned: int = 0
    evicted: int = 0
    restarted: int = 0
    handled: int = 0
    overflowed: int = 0  # messages stored without an answer because their chat's inbox was full


class Actors(Protocol):
    """The chat actors as the shared services see them (the runtime's ``Supervisor``)."""

    stats: SupervisorStats

    @property
    def active(self) -> int:
        """Live chat actors."""
        ...

    @property
    def inbox_depth(self) -> int:
        """Events told to live actors and not handled yet."""
        ...

    async def offer(self, chat_id: int, event: ChatEvent) -> bool:
        """Queue ``event`` for the chat unless its inbox is full (then False)."""
        ...

    async def call(self, chat_id: int, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(actor)`` in the chat's actor, between its events."""
        ...

    async def refresh(self, chat_ids: Iterable[int]) -> None:
        """Make the live actors of these chats read their settings again."""
        ...


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """The bot as a chat member: its user id (Telegram's, or 0 offline), display name, @username."""

    user_id: int
    name: str
    username: str | None = None


@dataclass(frozen=True, slots=True)
class TurnReport:
    """One handled message, for replay reports and benchmarks. Times in milliseconds.

    overhead_ms = total_ms − llm_ms − embed_ms: what Kith itself spent (store, recall search, prompt).
    """

    chat_id: int
    message_id: int
    responded: bool
    total_ms: float
    llm_ms: float = 0.0
    embed_ms: float = 0.0
    search_ms: float = 0.0
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    hits: tuple[MemoryHit, ...] = ()
    reply_text: str | None = None
    reply_id: int | None = None
    error: str | None = None
    tier: str | None = None  # the member's effective tier (None without tiers)
    ttft_ms: float | None = None  # delivery to the actor → the model's first token (streamed) or its answer

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.total_ms - self.llm_ms - self.embed_ms)


@dataclass
class Services:
    """Shared services; owned by the runtime's task group (see ``actors.runtime``)."""

    config: Config
    memory: Memory
    llm: LLM  # tests may pass a fake with the same methods at the outermost boundary
    bot: BotIdentity
    clock: Callable[[], datetime] = utc_now
    admission: Admission | None = None  # None = no tiers (every request admitted)
    janitor: Janitor | None = None  # None = no capacity cleanup
    on_turn: Callable[[TurnReport], None] | None = None
    transcriber: Transcriber | None = None  # None = voice notes are not transcribed
    images: ImageGenerator | None = None  # None = no /image
    keys: KeyVault | None = None  # users' own API keys; None = /key is off
    retired_llms: list[LLM] = field(default_factory=list)  # replaced by a reload; closed when the runtime stops
    supervisor: Actors | None = None  # set by the runtime once it runs (operations, /admin's health line)
    owners: frozenset[int] = frozenset()  # the bot's owners: telegram.owners and the host at the terminal (/admin, owner_tier)

    def record_usage(self, rec: UsageRecord) -> None:
        """Store one billed call (queued) and count it against today's quotas."""
        self.memory.store.record_usage(rec)
        if self.admission is not None:
            self.admission.record(rec)

    def report(self, rep: TurnReport) -> None:
        if self.on_turn is not None:
            self.on_turn(rep)
