"""ChatActor: one per chat; handles that chat's events strictly in order (``docs/design.md`` §2).

The actor owns its chat's state — settings, the recent window of each thread, the members' settings
it has read, what it has answered — and needs no locks: only its own ``run`` loop touches it. It
speaks only through the ``Outbox``, never imports a transport or a feature: a message is a turn
(``actors.turn``), and the features' events go to the ``Handlers`` it was given, which see the chat
through the ``ChatContext`` it implements.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import assert_never

import i18n
from memory.errors import MemoryStoreError
from memory.types import ROLE_ASSISTANT, StoredMessage

from .events import (
    PRIVATE,
    ButtonPress,
    Call,
    CapacityCleaned,
    ChatEvent,
    CommandEvent,
    ConfigChanged,
    Deleted,
    Edited,
    Incoming,
    Migrated,
    PaymentEvent,
    PreCheckout,
)
from .handlers import NO_HANDLERS, Handlers, Plugins
from .outbox import Outbox
from .services import Services
from .settings import ChatSettings, UserSettings
from .turn import MARKER, take

__all__ = ["ChatActor"]

log = logging.getLogger(__name__)


class ChatActor:
    """The actor of chat ``chat_id`` (a ``ChatContext`` and a ``turn.TurnHost``). Create, ``await
    start()``, then ``await run(inbox)``.

    ``run`` returns when the inbox is closed and drained; an exception from a handler propagates
    (the supervisor restarts the actor with the same inbox, so queued events are kept).
    """

    def __init__(self, chat_id: int, services: Services, outbox: Outbox, handlers: Handlers = NO_HANDLERS,
                 plugins: Plugins | None = None) -> None:
        self.chat_id = chat_id
        self.svc = services
        self.outbox = outbox
        self.handlers = handlers
        self.plugins = plugins
        self.settings = ChatSettings()
        self.awaiting_role: set[int] = set()  # members whose next message becomes their persona (/role)
        self.refused_until: dict[tuple[int, str | None], datetime] = {}  # refusals said recently, by (member, reason)
        self._windows: dict[int | None, deque[StoredMessage]] = {}
        self._known_chat = False
        self._user_settings: dict[int, UserSettings] = {}
        self._whole_chat_in_window: set[int | None] = set()
        self._answered: set[int] | None = None  # ids of messages already replied to (loaded on first need)
        self._member_languages: dict[int, str] = {}  # member -> interface language, of the senders seen

    # ------------------------------------------------------------------ lifecycle and dispatch

    async def start(self) -> None:
        """Load the chat's settings from the dialogue store (a stored value that does not fit is
        logged and its default applies: ``ChatSettings.load``)."""
        self.settings = ChatSettings.load(await self.svc.memory.store.settings.chat(self.chat_id), where=f"chat {self.chat_id}")

    async def run(self, inbox: AsyncIterator[ChatEvent], on_handled: Callable[[], None] = lambda: None) -> None:
        """Handle events from ``inbox`` in order until it is closed. ``on_handled`` after each."""
        async for event in inbox:
            try:
                await self.handle(event)
            finally:
                on_handled()

    async def handle(self, event: ChatEvent) -> None:
        """Handle one event, speaking the language ``interface_language`` picks for it."""
        with i18n.use(await self.interface_language(event)):
            await self._dispatch(event)

    async def _dispatch(self, event: ChatEvent) -> None:
        h = self.handlers
        match event:
            case Incoming():
                await take(self, event)
            case CommandEvent():
                # a member ``allowed_users`` leaves out is not answered (a group's admins can still change settings)
                if self.may_trigger(event.sender.user_id) or (event.command == "settings" and event.chat_type != PRIVATE):
                    await h.command(self, event)
            case ButtonPress():
                await h.button(self, event)
            case PreCheckout():
                await h.pre_checkout(self, event)
            case PaymentEvent():
                await h.payment(self, event)
            case CapacityCleaned():
                await h.capacity_cleaned(self, event)
            case Edited():
                await self._on_edited(event)
            case Deleted():
                await self._on_deleted(event)
            case ConfigChanged():
                await self.start()
                self._forget_context()
                self._user_settings.clear()
            case Migrated():
                await self._on_migrated(event)
            case Call():
                await event.result.run(event.work, self)
            case _:
                assert_never(event)

    async def interface_language(self, event: ChatEvent) -> str:
        """The language the bot speaks in answer to ``event``:

        1. in a group, the group's ``/settings language`` (its admins chose);
        2. the sender's ``/language`` (user setting ``language``), else the language of their
           Telegram app (``Sender.language_code``) — a reply is addressed to its sender, so in a
           group without a language each member is answered in their own;
        3. else (no sender, or an unknown language) the language most members of this chat use,
           counted from the senders seen since the actor started;
        4. else ``bot.language`` (kith.yaml), else English.
        Only languages with a catalog count (``i18n.available``)."""
        if self.chat_id < 0 and (lang := i18n.normalize(self.settings.language)):
            return lang
        sender = getattr(event, "sender", None)
        if sender is not None and not sender.is_bot:
            chosen = i18n.normalize((await self.user_settings(sender.user_id)).language)
            own = chosen or i18n.normalize(sender.language_code)
            if own is not None:
                self._member_languages[sender.user_id] = own
                return own
        if self._member_languages:
            return Counter(self._member_languages.values()).most_common(1)[0][0]
        return i18n.normalize(self.svc.config.settings.bot.language) or i18n.DEFAULT

    # ------------------------------------------------------------------ what a turn needs (TurnHost)

    async def know_chat(self, ev: Incoming) -> None:
        """Store the chat's row (type, title) once per actor."""
        if not self._known_chat:
            await self.svc.memory.store.upsert_chat(self.chat_id, ev.chat_type, ev.chat_title)
            self._known_chat = True

    async def window(self, thread_id: int | None) -> deque[StoredMessage]:
        """The recent window of a thread (None: the chat outside topics), read once, then kept."""
        win = self._windows.get(thread_id)
        if win is None:
            size = self.svc.config.settings.memory.recent_window
            store = self.svc.memory.store
            recent = await store.messages.recent(self.chat_id, size, thread_id=thread_id)
            whole = thread_id is None and len(recent) < size and not store.documents.has(self.chat_id)
            if thread_id is None and any(m.thread_id is not None for m in recent):
                # a forum: the General window holds only messages outside topics (the topics have their own)
                recent = await store.messages.recent(self.chat_id, size, general_only=True)
                whole = False
            since = self.settings.context_from  # set by /reset: older messages leave the context
            if since is not None:
                recent = [m for m in recent if m.message_id > since]
            elif whole:
                self._whole_chat_in_window.add(thread_id)
            win = self._windows[thread_id] = deque(recent, maxlen=size)
        return win

    async def answered(self) -> set[int]:
        """Ids of this chat's messages the bot has replied to (from the store once, then kept)."""
        if self._answered is None:
            self._answered = await self.svc.memory.store.messages.answered_ids(self.chat_id)
        return self._answered

    async def note_delivery(self, message_id: int) -> None:
        """Record durably that ``message_id`` is being answered, before the answer's first byte
        leaves: a crash from then on never answers it twice (``DialogueStore.note_delivery``: the
        store's reserve, no database round trip; a commit in a store without one). A full disk
        does not stop it (the reserve keeps room for what is sent). When it cannot be kept at all
        (no reserve and a failing database), the answer is sent anyway — a lost reply is worse than
        a rare second one — and the reply itself, kept in the store's reserve, marks the message
        answered once it is stored (at the latest at the next start)."""
        (await self.answered()).add(message_id)
        try:
            await self.svc.memory.store.note_delivery(self.chat_id, message_id)
        except MemoryStoreError as exc:  # answer anyway: a lost reply is worse than a rare second one
            log.error("chat %s: cannot record the reply to %s before sending it: %s", self.chat_id, message_id, exc)

    def nothing_to_recall(self, thread_id: int | None, window: deque[StoredMessage]) -> bool:
        """True while the window still holds every message this chat ever stored: recall would find
        nothing outside it (this spares a new chat the query embedding and the search)."""
        return thread_id in self._whole_chat_in_window and len(window) < (window.maxlen or 0)

    def may_trigger(self, user_id: int) -> bool:
        """``telegram.allowed_users`` (global) and the chat's ``allowed_users`` setting (admins): when
        either is set, only the ids it lists make the bot answer; everyone is still remembered."""
        for allowed in (self.svc.config.settings.telegram.allowed_users, self.settings.allowed_users):
            if allowed and user_id not in allowed:
                return False
        return True

    # ------------------------------------------------------------------ what a feature may change (ChatContext)

    @property
    def persist(self) -> bool:
        return self.settings.persist

    async def user_settings(self, user_id: int) -> UserSettings:
        """A member's settings (model, role, language…), read once per actor, then kept."""
        s = self._user_settings.get(user_id)
        if s is None:
            raw = await self.svc.memory.store.settings.user(user_id)
            s = self._user_settings[user_id] = UserSettings.load(raw, where=f"user {user_id}")
        return s

    def model_for(self, user_settings: UserSettings) -> str:
        """The member's model, else the chat's (``/settings model``), else ``default_model``."""
        models = self.svc.config.settings.models
        for alias in (user_settings.model, self.settings.model):
            if alias is not None and alias in models:
                return alias
        return self.svc.config.settings.default_model

    def note_new_memories(self) -> None:
        """Memories were added that no window holds (a document's parts): recall from now on."""
        self._whole_chat_in_window.clear()

    async def save_chat_settings(self, settings: ChatSettings) -> None:
        """Persist the chat's settings (``settings.stored()``, a JSON object) and use them from now on."""
        await self.svc.memory.store.settings.set_chat(self.chat_id, settings.stored())
        self.settings = settings

    async def save_user_settings(self, user_id: int, settings: UserSettings) -> None:
        """Persist a member's settings (model, persona, ...; ``settings.stored()``), shared by every
        chat of that member."""
        await self.svc.memory.store.settings.set_user(user_id, settings.stored())
        self._user_settings[user_id] = settings

    async def reset_context(self) -> None:
        """Forget the conversation context (recent windows); stored history stays searchable.
        Flushes memory first: what leaves the context must already be recallable."""
        await self.svc.memory.flush()
        last = max((m.message_id for w in self._windows.values() for m in w), default=None)
        if last is None:
            last = await self.svc.memory.store.messages.max_id(self.chat_id)
        self._windows.clear()
        self._whole_chat_in_window.clear()
        if last is not None:
            await self.save_chat_settings(self.settings.with_(context_from=last))

    async def forget_user(self, user_id: int) -> int:
        """Erase ``user_id``'s messages in this chat from both stores and from the context."""
        n = await self.svc.memory.forget(self.chat_id, user_id=user_id)
        self._drop_from_windows(lambda m: m.user_id == user_id)
        return n

    async def delete_history(self) -> int:
        """Delete every stored message and memory of this chat (``/reset all`` after confirmation)."""
        n = await self.svc.memory.forget(self.chat_id)
        self._windows.clear()
        self._whole_chat_in_window.clear()
        await self.save_chat_settings(self.settings.with_(context_from=None))
        return n

    # ------------------------------------------------------------------ edits, deletions, migration

    def _forget_context(self) -> None:
        self._windows.clear()
        self._whole_chat_in_window.clear()
        self._answered = None

    def _drop_from_windows(self, gone: Callable[[StoredMessage], bool]) -> None:
        for win in self._windows.values():
            kept = [m for m in win if not gone(m)]
            win.clear()
            win.extend(kept)

    async def _on_edited(self, ev: Edited) -> None:
        """An edit changes the stored text and the memory; a media message keeps its marker."""
        if not self.persist:
            return
        old = next((m for w in self._windows.values() for m in w if m.message_id == ev.message_id), None)
        if old is None:
            found = await self.svc.memory.store.messages.get(self.chat_id, [ev.message_id])
            old = found[0] if found else None
        if old is None or old.role == ROLE_ASSISTANT:
            return
        mark = MARKER.match(old.text)
        text = f"{mark.group(0).strip()} {ev.text}".strip() if mark else ev.text
        if text == old.text:  # Telegram also reports reactions and link previews as edits
            return
        msg = await self.svc.memory.edit(self.chat_id, ev.message_id, text)
        if msg is not None:
            for w in self._windows.values():
                for i, m in enumerate(w):
                    if m.message_id == ev.message_id:
                        w[i] = msg

    async def _on_migrated(self, ev: Migrated) -> None:
        """This basic group became a supergroup: move its memory there (the transport then tells the
        supergroup's actor to reload)."""
        moved = await self.svc.memory.migrate_chat(self.chat_id, ev.to_chat_id, title=ev.title)
        if self.svc.admission is not None:
            self.svc.admission.subs.reload()  # the group's subscription moved with it
        self._forget_context()
        self.settings = ChatSettings()
        log.info("chat %s: upgraded to supergroup %s; %d messages moved there", self.chat_id, ev.to_chat_id, moved)

    async def _on_deleted(self, ev: Deleted) -> None:
        """Deleted messages leave both stores and the context."""
        n = await self.svc.memory.forget_messages(self.chat_id, ev.message_ids)
        gone = set(ev.message_ids)
        self._drop_from_windows(lambda m: m.message_id in gone)
        log.info("chat %s: %d deleted message(s) forgotten", self.chat_id, n)
