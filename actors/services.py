"""What every chat actor shares: config, memory, the LLM, the bot's identity, the clock, metrics."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from typing import TYPE_CHECKING

from config.models import Config
from memory.service import Memory
from memory.types import MemoryHit, UsageRecord

if TYPE_CHECKING:
    from memory.cleanup import Janitor

    from .supervisor import Supervisor
    from providers.images import ImageGenerator
    from providers.keys import KeyVault
    from providers.llm import LLM
    from providers.transcription import Transcriber
    from tiers.admission import Admission


ALREADY_ANSWERED = "already answered"  # TurnReport.error of a message the bot answered before (exactly once)


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    supervisor: "Supervisor | None" = None  # set by the runtime once it runs (for /admin's health line)
    owners: frozenset[int] = frozenset()  # the bot's owners: telegram.owners and the host at the terminal (/admin, owner_tier)

    def record_usage(self, rec: UsageRecord) -> None:
        """Store one billed call (queued) and count it against today's quotas."""
        self.memory.store.record_usage(rec)
        if self.admission is not None:
            self.admission.record(rec)

    def report(self, rep: TurnReport) -> None:
        if self.on_turn is not None:
            self.on_turn(rep)
