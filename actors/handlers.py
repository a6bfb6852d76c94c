"""What the actor runtime asks of the chat features, and what it gives them (``docs/design.md`` §3).

The runtime (``actors``) never imports a feature (commands, billing, media, keys, admin, plugins…):
the features sit above it and are handed to it as a ``Handlers`` table when the runtime opens
(``features.HANDLERS``; ``actors.runtime.open_runtime(handlers=…)``). A handler gets a ``ChatContext`` —
the narrow, typed view of one chat that its actor offers — never the actor itself.

- ``ChatContext``: the chat's id, settings and outbox, the shared services, and the few changes a
  feature may make to the chat's state (settings, context, history).
- ``Handlers``: the events a feature handles (a command, a button, a payment, a capacity notice)
  and the hooks a turn calls into (understanding a file, a drawing request, a persona being set,
  the buttons under a refusal).
- ``Understood``: what the media feature made of a file, for the turn to store and answer.
- ``Plugins`` and ``TurnTools``: the tools a turn may offer the model (``features.plugins.host``
  opens the one implementation through ``Handlers.open_plugins``; the runtime owns it).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from providers.tools import ToolCall, ToolRunner, ToolSpec

from .events import ButtonPress, CapacityCleaned, CommandEvent, Incoming, PaymentEvent, PreCheckout
from .outbox import Button, Outbox
from .services import Services
from .settings import ChatSettings, UserSettings

__all__ = ["NO_HANDLERS", "ChatContext", "Handlers", "Plugins", "TurnTools", "Understood"]


class ChatContext(Protocol):
    """One chat as a feature sees it (a ``ChatActor`` is one; features import only this).

    chat_id: Telegram's chat id (negative for groups). svc: the shared services (config, memory,
    LLM, tiers…). outbox: how the chat is spoken to. settings: the chat's settings (read from the
    store once; a change is a new model, ``settings.with_(…)``, given to ``save_chat_settings``). awaiting_role: members whose next message becomes their persona (``/role``).
    """

    chat_id: int
    svc: Services
    outbox: Outbox
    settings: ChatSettings
    awaiting_role: set[int]
    plugins: Plugins | None  # the runtime's plugins (None: no tools at all)

    @property
    def persist(self) -> bool:
        """Whether this chat stores new messages (``/settings persist``)."""
        ...

    async def user_settings(self, user_id: int) -> UserSettings:
        """A member's settings (model, role, language…), shared by every chat of theirs."""
        ...

    async def save_user_settings(self, user_id: int, settings: UserSettings) -> None:
        """Store a member's settings and use them from now on."""
        ...

    async def save_chat_settings(self, settings: ChatSettings) -> None:
        """Store this chat's settings and use them from now on."""
        ...

    def model_for(self, user_settings: UserSettings) -> str:
        """The model alias that answers a member here: theirs, else the chat's, else the default."""
        ...

    async def reset_context(self) -> None:
        """Forget the conversation context (recent windows); history stays searchable."""
        ...

    def note_new_memories(self) -> None:
        """Memories were added that no recent window holds (a document's parts): recall from now on."""
        ...

    async def forget_user(self, user_id: int) -> int:
        """Erase a member's messages in this chat from both stores and the context; how many."""
        ...

    async def delete_history(self) -> int:
        """Delete every stored message and memory of this chat; how many messages."""
        ...


@dataclass(frozen=True, slots=True)
class Understood:
    """What the media feature made of a message that carries a file.

    text: to store as the message's text (a marker, the caption, what was extracted). answerable:
    the text is something to answer (a caption, a transcript that asks, a photo a model can see).
    note: a one-line notice for the member (what was read, a transcript, a refusal); billing: show
    the upgrade buttons with it. image: ``(bytes, mime)`` for a model that sees images. indexed:
    document parts were queued for memory (recall waits for them).
    """

    text: str
    answerable: bool = False
    note: str | None = None
    billing: bool = False
    image: tuple[bytes, str] | None = None
    indexed: bool = False


Rows = Sequence[Sequence[Button]]


@dataclass(frozen=True, slots=True)
class TurnTools:
    """The tools one turn offers the model, and how their calls run (``providers.llm.LLM.complete``).

    specs: the tools offered (names unique). run: runs one call (``providers.tools.ToolRunner``; it
    sees only offered tools with JSON-object arguments, and records the call's usage). notice: the
    one line the chat shows for a call before the answer ("🔎 searched this chat's memory for
    'backup'"), in the current interface language; never raises. max_steps: tool rounds (≥ 1).
    timeout_s: one call's time limit (s). output_chars: a call's output is cut to this many characters.
    """

    specs: Sequence[ToolSpec]
    run: ToolRunner
    notice: Callable[[ToolCall], str]
    max_steps: int = 4
    timeout_s: float = 20.0
    output_chars: int = 8000


class Plugins(Protocol):
    """The plugins of a running bot, as a turn sees them (``features.plugins.host.PluginHost``)."""

    async def tools_for(self, ctx: ChatContext, user_id: int, tier: str | None,
                        user_settings: UserSettings, thread_id: int | None = None) -> TurnTools | None:
        """The tools member ``user_id`` may have the model call in ``ctx``'s chat now: those their
        ``tier`` allows (None: no tiers, every plugin), the chat enabled, that are configured and
        within today's ``tool_calls_per_day``. None when there are none (the model answers without
        tools). thread_id: the forum topic the turn is in (None: the chat outside topics), where a
        tool's later message (a reminder) goes."""
        ...


async def _ignore(ctx: ChatContext, ev: Any) -> None:
    return None


async def _unknown_command(ctx: ChatContext, ev: CommandEvent) -> None:
    await ctx.outbox.send(ctx.chat_id, f"/{ev.command}?", reply_to=ev.message_id, thread_id=ev.thread_id)


async def _no_file(ctx: ChatContext, ev: Incoming, user_settings: UserSettings) -> Understood:
    return Understood(ev.text, answerable=bool(ev.text.strip()))


async def _not_a_drawing(ctx: ChatContext, ev: Incoming) -> bool:
    return False


async def _keep_role(ctx: ChatContext, user_id: int, role: str | None) -> None:
    await ctx.save_user_settings(user_id, (await ctx.user_settings(user_id)).with_(role=role))


@asynccontextmanager
async def _no_plugins(svc: Services) -> AsyncIterator[Plugins | None]:
    yield None


@asynccontextmanager
async def _no_background(svc: Services) -> AsyncIterator[object]:
    yield None


@dataclass(frozen=True, slots=True)
class Handlers:
    """The chat features, as the runtime calls them (``features.HANDLERS`` is the full table).

    Events: ``command`` (``/name args``), ``button`` (an inline button pressed), ``pre_checkout`` and
    ``payment`` (Telegram payments), ``capacity_cleaned`` (tell the chat what a cleanup removed).
    Turn hooks: ``understand`` (a message with a file: decide, download, extract; never raises for a
    bad file), ``draw`` (a plain-language drawing request: True when it was one and was handled),
    ``save_role`` (``/role``: the member's next message is their persona), ``upgrade_buttons`` (the
    buttons under a tier refusal; None for none).
    Plugins: ``open_plugins(services)`` opens the bot's plugins (MCP connections, the reminders'
    scheduler, which reaches the chats through ``services.supervisor`` once it is set); the runtime
    enters it around the supervisor and hands what it yields to every actor (None: no tools).
    Background: ``open_background(services)`` runs the features' own background work (the memory
    entries' learning, ``features.fact_learning``) while the runtime runs; what it yields is the
    runtime's ``background`` (None: nothing runs).
    """

    command: Callable[[ChatContext, CommandEvent], Awaitable[None]] = _unknown_command
    button: Callable[[ChatContext, ButtonPress], Awaitable[None]] = _ignore
    pre_checkout: Callable[[ChatContext, PreCheckout], Awaitable[None]] = _ignore
    payment: Callable[[ChatContext, PaymentEvent], Awaitable[None]] = _ignore
    capacity_cleaned: Callable[[ChatContext, CapacityCleaned], Awaitable[None]] = _ignore
    understand: Callable[[ChatContext, Incoming, UserSettings], Awaitable[Understood]] = _no_file
    draw: Callable[[ChatContext, Incoming], Awaitable[bool]] = _not_a_drawing
    save_role: Callable[[ChatContext, int, str | None], Awaitable[None]] = _keep_role
    upgrade_buttons: Callable[[ChatContext], Rows | None] = lambda ctx: None
    open_plugins: Callable[[Services], AbstractAsyncContextManager[Plugins | None]] = _no_plugins
    open_background: Callable[[Services], AbstractAsyncContextManager[object]] = _no_background


NO_HANDLERS = Handlers()  # the bare runtime: messages answered, commands and files not understood
