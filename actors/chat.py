"""ChatActor: one per chat; handles that chat's events strictly in order (DESIGN §2–3).

The actor owns its chat's state (settings, recent windows per thread) and needs no locks: only its
own ``run`` loop touches it. It speaks only through the ``Outbox`` and never imports a transport.
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from datetime import datetime, timedelta
from collections.abc import AsyncIterator, Callable
from typing import Any
from dataclasses import replace

import anyio

import i18n
from i18n import _
from memory.errors import DiskFull, MemoryStoreError
from memory.language import NAMES
from memory.service import Recall
from memory.types import ROLE_ASSISTANT, StoredMessage, UsageRecord
from providers.errors import ProviderError

from .context import build_prompt
from .errors import ActorError
from .events import (PRIVATE, ButtonPress, Call, CapacityCleaned, ChatEvent, CommandEvent, ConfigChanged, Deleted, Edited, Incoming, Migrated,
                     PaymentEvent, PreCheckout)
from .outbox import Outbox
from .services import ALREADY_ANSWERED, Services, TurnReport
from .triggers import should_respond, strip_mention

log = logging.getLogger(__name__)

REPLY_CHAIN_DEPTH = 3
_MARKER = re.compile(r"^\[[^\]\n]*\]\s*")  # the leading media marker of a stored text ("[voice 0:42] ")


class ChatActor:
    """The actor of chat ``chat_id``. Create, ``await start()``, then ``await run(inbox)``.

    ``run`` returns when the inbox is closed and drained; an exception from a handler propagates
    (the supervisor restarts the actor with the same inbox, so queued events are kept).
    """

    def __init__(self, chat_id: int, services: Services, outbox: Outbox) -> None:
        self.chat_id = chat_id
        self.svc = services
        self.outbox = outbox
        self.settings: dict = {}
        self._windows: dict[int | None, deque[StoredMessage]] = {}
        self._known_chat = False
        self._user_settings: dict[int, dict] = {}
        self.awaiting_role: set[int] = set()  # users whose next message becomes their persona (/role)
        self._whole_chat_in_window: set[int | None] = set()
        self._refused_until: dict[tuple[int, str | None], datetime] = {}  # refusals said recently, by (user, reason)
        self._answered: set[int] | None = None  # ids of messages already replied to (loaded on first need)
        self._member_languages: dict[int, str] = {}  # user -> interface language, of the senders seen (interface_language)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the chat's settings from the dialogue store."""
        self.settings = await self.svc.memory.store.chat_settings(self.chat_id)

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
            await self._handle(event)

    async def interface_language(self, event: ChatEvent) -> str:
        """The language the bot speaks in answer to ``event`` (DESIGN §8):

        1. in a group, the group's ``/settings language`` (its admins chose);
        2. the sender's ``/language`` (user setting ``language``), else the language of their
           Telegram app (``Sender.language_code``) — a reply is addressed to its sender, so in a
           group without a language each member is answered in their own;
        3. else (no sender, or an unknown language) the language most members of this chat use,
           counted from the senders seen since the actor started;
        4. else ``bot.language`` (kith.yaml), else English.
        Only languages with a catalog count (``i18n.available``)."""
        if self.chat_id < 0 and (lang := i18n.normalize(self.settings.get("language"))):
            return lang
        sender = getattr(event, "sender", None)
        if sender is not None and not sender.is_bot:
            chosen = i18n.normalize((await self._user(sender.user_id)).get("language"))
            own = chosen or i18n.normalize(sender.language_code)
            if own is not None:
                self._member_languages[sender.user_id] = own
                return own
        if self._member_languages:
            return Counter(self._member_languages.values()).most_common(1)[0][0]
        return i18n.normalize(self.svc.config.settings.bot.language) or i18n.DEFAULT

    async def _handle(self, event: ChatEvent) -> None:
        match event:
            case Incoming():
                await self._on_incoming(event)
            case CommandEvent():
                await self._on_command(event)
            case ButtonPress():
                from .commands import handle_button

                await handle_button(self, event)
            case PreCheckout():
                from .billing import handle_pre_checkout

                await handle_pre_checkout(self, event)
            case PaymentEvent():
                from .billing import handle_payment

                await handle_payment(self, event)
            case Edited():
                await self._on_edited(event)
            case Deleted():
                await self._on_deleted(event)
            case ConfigChanged():
                await self.start()
                self._windows.clear()
                self._whole_chat_in_window.clear()
                self._user_settings.clear()
                self._answered = None
            case Migrated():
                await self._on_migrated(event)
            case Call():
                await event.result.run(event.work, self)
            case CapacityCleaned():
                from .capacity import on_capacity_cleaned

                await on_capacity_cleaned(self, event)
            case _:
                log.warning("chat %s: unknown event %r", self.chat_id, type(event).__name__)

    # ------------------------------------------------------------------ state

    async def _window(self, thread_id: int | None) -> deque[StoredMessage]:
        win = self._windows.get(thread_id)
        if win is None:
            size = self.svc.config.settings.memory.recent_window
            store = self.svc.memory.store
            recent = await store.recent(self.chat_id, size, thread_id=thread_id)
            whole = thread_id is None and len(recent) < size and not store.has_documents(self.chat_id)
            if thread_id is None and any(m.thread_id is not None for m in recent):
                # a forum: the General window holds only messages outside topics (the topics have their own)
                recent = await store.recent(self.chat_id, size, general_only=True)
                whole = False
            since = self.settings.get("context_from")  # set by /reset: older messages leave the context
            if since is not None:
                recent = [m for m in recent if m.message_id > since]
            elif whole:
                self._whole_chat_in_window.add(thread_id)
            win = self._windows[thread_id] = deque(recent, maxlen=size)
        return win

    async def _api_keys(self, ev: Incoming) -> dict[str, str]:
        """The member's own API keys, then the group's (``/key``); empty when none or /key is off."""
        vault = self.svc.keys
        if vault is None or not vault.enabled:
            return {}
        from providers.keys import KeysUnavailable

        try:
            return await vault.keys_for(ev.sender.user_id, self.chat_id)
        except KeysUnavailable as exc:  # the host's key changed: answer with the host's keys
            log.error("chat %s: users' keys unusable: %s", self.chat_id, exc)
            return {}

    async def _note_delivery(self, message_id: int) -> None:
        """Commit that ``message_id`` is being answered, before the answer's first byte leaves: a
        crash from then on never answers it twice (``DialogueStore.note_delivery``). When that
        cannot be written (a full disk), the answer is sent anyway — a lost reply is worse than a
        rare second one — and the reply itself, kept in the store's reserve, marks the message
        answered once it is stored (at the latest at the next start)."""
        (await self.answered()).add(message_id)
        try:
            await self.svc.memory.store.note_delivery(self.chat_id, message_id)
        except MemoryStoreError as exc:  # answer anyway: a lost reply is worse than a rare second one
            log.error("chat %s: cannot record the reply to %s before sending it: %s", self.chat_id, message_id, exc)

    async def answered(self) -> set[int]:
        """Ids of this chat's messages the bot has replied to (from the store once, then kept)."""
        if self._answered is None:
            self._answered = await self.svc.memory.store.answered_ids(self.chat_id)
        return self._answered

    def note_new_memories(self) -> None:
        """Memories were added that no window holds (a document's chunks): recall from now on."""
        self._whole_chat_in_window.clear()

    def _nothing_to_recall(self, thread_id: int | None, window: deque) -> bool:
        """True while the window still holds every message this chat ever stored: recall would find
        nothing outside it (this spares a new chat the query embedding and the search)."""
        return thread_id in self._whole_chat_in_window and len(window) < (window.maxlen or 0)

    async def save_chat_settings(self, settings: dict) -> None:
        """Persist the chat's settings (a JSON object) and use them from now on."""
        await self.svc.memory.store.set_chat_settings(self.chat_id, settings)
        self.settings = settings

    async def save_user_settings(self, user_id: int, settings: dict) -> None:
        """Persist a user's settings (model, persona, ...), shared by every chat of that user."""
        await self.svc.memory.store.set_user_settings(user_id, settings)
        self._user_settings[user_id] = settings

    async def reset_context(self) -> None:
        """Forget the conversation context (recent windows); stored history stays searchable.

        Flushes memory first: what leaves the context must already be recallable.
        """
        await self.svc.memory.flush()
        last = max((m.message_id for w in self._windows.values() for m in w), default=None)
        if last is None:
            last = await self.svc.memory.store.max_message_id(self.chat_id)
        self._windows.clear()
        self._whole_chat_in_window.clear()
        if last is not None:
            await self.save_chat_settings({**self.settings, "context_from": last})

    async def forget_user(self, user_id: int) -> int:
        """Erase ``user_id``'s messages in this chat from both stores and from the context."""
        n = await self.svc.memory.forget(self.chat_id, user_id=user_id)
        for win in self._windows.values():
            kept = [m for m in win if m.user_id != user_id]
            win.clear()
            win.extend(kept)
        return n

    async def delete_history(self) -> int:
        """Delete every stored message and memory of this chat (``/reset all`` after confirmation)."""
        n = await self.svc.memory.forget(self.chat_id)
        self._windows.clear()
        self._whole_chat_in_window.clear()
        self.settings = {k: v for k, v in self.settings.items() if k != "context_from"}
        await self.svc.memory.store.set_chat_settings(self.chat_id, self.settings)
        return n

    async def _user(self, user_id: int) -> dict:
        s = self._user_settings.get(user_id)
        if s is None:
            s = self._user_settings[user_id] = await self.svc.memory.store.user_settings(user_id)
        return s

    @property
    def persist(self) -> bool:
        return bool(self.settings.get("persist", True))

    def _model_for(self, user_settings: dict) -> str:
        models = self.svc.config.settings.models
        for alias in (user_settings.get("model"), self.settings.get("model")):
            if alias in models:
                return alias
        return self.svc.config.settings.default_model

    def _system_prompt(self, ev: Incoming, user_settings: dict, answer_language: str | None = None) -> str:
        bot = self.svc.config.settings.bot
        parts = [bot.system_prompt.replace("{name}", self.svc.bot.name)]
        if ev.chat_type == PRIVATE:
            parts.append(f"This is a private chat with {ev.sender.name}.")
            persona = user_settings.get("role")
        else:
            title = ev.chat_title or self.settings.get("title")
            parts.append(f"This is a group chat{f' titled {title!r}' if title else ''}; messages are prefixed with the speaker's name.")
            persona = self.settings.get("persona")
        if persona:
            parts.append(f"Persona and instructions for this chat: {persona}")
        parts.append(f"Current date: {ev.date:%Y-%m-%d %H:%M} UTC.")
        if answer_language is not None:
            name = NAMES.get(answer_language, answer_language)
            parts.append(f"Answer in {name} unless the user asks for another language.")
        return "\n".join(parts)

    async def _answer_language(self, ev: Incoming, text: str) -> str | None:
        """The language to answer ``text`` in: a group's ``/settings language`` (its admins chose),
        else the language the member wrote in, else the member's ``language`` setting; None when
        nothing tells (the model picks)."""
        from memory.language import detect_or_none, would_load

        if ev.chat_type != PRIVATE and self.settings.get("language"):
            return str(self.settings["language"])
        if would_load(text):  # the detector's first load (~1 s) stays off the event loop
            lang = await anyio.to_thread.run_sync(detect_or_none, text)
        else:
            lang = detect_or_none(text)
        return lang or (await self._user(ev.sender.user_id)).get("language")

    # ------------------------------------------------------------------ a turn

    async def _on_incoming(self, ev: Incoming) -> None:
        t0 = time.perf_counter()
        store = self.svc.memory.store
        if not self._known_chat:
            await store.upsert_chat(self.chat_id, ev.chat_type, ev.chat_title)
            self._known_chat = True
        if ev.sender.user_id in self.awaiting_role:
            # /role: this message is the sender's new persona, not conversation
            self.awaiting_role.discard(ev.sender.user_id)
            from .commands import _save_role

            await _save_role(self, ev.sender.user_id, ev.text.strip() or None)
            await self.outbox.send(self.chat_id, _("Persona saved."), reply_to=ev.message_id, thread_id=ev.thread_id)
            self.svc.report(TurnReport(self.chat_id, ev.message_id, False, _ms(t0)))
            return
        window = await self._window(ev.thread_id)
        if ev.message_id in await self.answered():  # re-delivered, replayed or restarted: answered exactly once
            self.svc.report(TurnReport(self.chat_id, ev.message_id, False, _ms(t0), error=ALREADY_ANSWERED))
            return
        understood = None
        if ev.media is not None:
            if any(m.message_id == ev.message_id for m in window):  # re-delivered: never download twice
                self.svc.report(TurnReport(self.chat_id, ev.message_id, False, _ms(t0)))
                return
            understood = await self._understand(ev)
            caption = ev.text
            ev = replace(ev, text=understood.text)
        msg = StoredMessage(
            chat_id=ev.chat_id,
            message_id=ev.message_id,
            user_id=ev.sender.user_id,
            user_name=ev.sender.name,
            text=ev.text,
            date=ev.date,
            reply_to=ev.reply_to,
            thread_id=ev.thread_id,
        )
        # 1. store — always, before anything can fail
        if self.persist:
            self.svc.memory.remember(msg)
            if self.svc.janitor is not None:
                self.svc.janitor.note_stored(self.chat_id, ev.sender.user_id)
        if any(m.message_id == msg.message_id for m in window):
            log.info("chat %s: message %s re-delivered; already handled", self.chat_id, ev.message_id)
            self.svc.report(TurnReport(self.chat_id, ev.message_id, False, _ms(t0)))
            return
        window.append(msg)

        # 2. decide
        if ev.reply_to is not None and not ev.reply_to_bot and await self._is_bot_message(ev.reply_to, window):
            ev = replace(ev, reply_to_bot=True)
        bot = self.svc.config.settings.bot
        keywords = tuple(self.settings.get("keywords", bot.keywords))
        always_on = bool(self.settings.get("always_on", bot.always_on))
        addressed = should_respond(ev if understood is None else replace(ev, text=ev.text.split("\n", 1)[0]),
                                   bot_username=self.svc.bot.username, keywords=keywords, always_on=always_on)
        addressed = addressed and self.may_trigger(ev.sender.user_id)
        if understood is not None and addressed and understood.note:
            await self._say_note(ev, understood.note, understood.billing)
        if not ev.text.strip() or not addressed or (understood is not None and not understood.answerable):
            self.svc.report(TurnReport(self.chat_id, ev.message_id, False, _ms(t0)))
            return
        from . import media

        prompt_text = media.image_prompt(ev.text, self.svc.config.settings.media.image_patterns) if understood is None else None
        if prompt_text:
            await media.generate_image(self, chat_id=self.chat_id, message_id=ev.message_id, user_id=ev.sender.user_id,
                                       thread_id=ev.thread_id, prompt=prompt_text)
            self.svc.report(TurnReport(self.chat_id, ev.message_id, True, _ms(t0)))
            return

        # 3. admit: the member's tier, quotas and rate pick the model, or refuse (costing nothing)
        user_settings = await self._user(ev.sender.user_id)
        alias = self._model_for(user_settings)
        note = tier = None
        if self.svc.admission is not None:
            adm = await self.svc.admission.admit(self.chat_id, ev.chat_type, ev.sender.user_id, alias)
            if not adm.allowed:
                await self._refuse(ev, adm)
                self.svc.report(TurnReport(self.chat_id, ev.message_id, False, _ms(t0), error=f"refused: {adm.reason}"))
                return
            alias, tier = adm.alias, adm.tier
            note = adm.note if adm.downgraded else None

        # 4. assemble context: recalled memories of this chat only, reply chain, recent window
        k = self.svc.config.settings.memory.recall_k
        said = ev.text  # ask with what the member said, not a media marker and file summary
        if understood is not None:
            said = caption if understood.indexed else _MARKER.sub("", ev.text)
            if understood.indexed:
                await self.svc.memory.flush()  # the document's chunks must be recallable for this very answer
        query = strip_mention(said, self.svc.bot.username)
        if query and not self._nothing_to_recall(ev.thread_id, window):
            recall = await self.svc.memory.recall(self.chat_id, query, k, exclude_ids={m.message_id for m in window})
        else:
            recall = Recall([])
        chain = await self._reply_chain(ev, window)
        llm = self.svc.llm
        spec = self.svc.config.settings.models[alias]
        prompt = build_prompt(
            system=self._system_prompt(ev, user_settings, await self._answer_language(ev, query or said)),
            window=list(window),
            memories=recall.hits,
            reply_chain=chain,
            budget_tokens=max(256, llm.context_tokens(alias) - spec.max_output_tokens),
        )
        if understood is not None and understood.image is not None and prompt.messages[-1]["role"] == "user":
            from providers.vision import image_part, supports_vision

            if supports_vision(spec):  # the model sees the photo itself, with its caption
                text = prompt.messages[-1]["content"]
                prompt.messages[-1] = {"role": "user", "content": [{"type": "text", "text": text}, image_part(*understood.image)]}

        # 5. generate, streaming progress through the outbox
        try:
            await self._generate(ev, window, alias, prompt, recall, note, t0, tier)
        except ActorError as exc:  # the transport gave up for good (e.g. the user blocked the bot)
            log.warning("chat %s: reply to %s not delivered: %s", self.chat_id, ev.message_id, exc)
            self.svc.report(TurnReport(self.chat_id, ev.message_id, True, _ms(t0), error=f"undelivered: {exc}"))

    async def _generate(self, ev: Incoming, window, alias: str, prompt, recall: Recall, note: str | None, t0: float,
                        tier: str | None = None) -> None:
        """Steps 5–6 of a turn: stream the model's answer through the outbox, then record it."""
        store = self.svc.memory.store
        llm = self.svc.llm
        stream = await self.outbox.stream(self.chat_id, reply_to=ev.message_id, thread_id=ev.thread_id)
        so_far: list[str] = []
        noted = False
        ttft_ms: float | None = None

        async def note_delivery() -> None:
            nonlocal noted
            if not noted:
                noted = True
                await self._note_delivery(ev.message_id)

        async def on_delta(delta: str) -> None:
            nonlocal ttft_ms
            if ttft_ms is None:
                ttft_ms = _ms(t0)
            so_far.append(delta)
            await note_delivery()
            await stream.update("".join(so_far))

        t_llm = time.perf_counter()
        try:
            keys = await self._api_keys(ev)
            extra: dict[str, Any] = {"api_keys": keys} if keys else {}  # (fakes of the LLM need not take it)
            completion = await llm.complete(alias, prompt.messages, on_delta=on_delta, **extra)
        except ProviderError as exc:
            llm_ms = _ms(t_llm)
            log.warning("chat %s: LLM %s failed: %s", self.chat_id, alias, exc)
            await stream.finish(exc.user_message)
            self.svc.report(
                TurnReport(self.chat_id, ev.message_id, True, _ms(t0), llm_ms, recall.embed_ms, recall.search_ms, alias, error=str(exc),
                           tier=tier, ttft_ms=ttft_ms)
            )
            return
        llm_ms = _ms(t_llm)
        if ttft_ms is None:  # not streamed: the whole answer is the first token
            ttft_ms = _ms(t0)
        await note_delivery()
        shown = f"_{note}_\n\n{completion.text}" if note else completion.text
        try:
            shown = await self._with_offline_intro(shown, getattr(completion, "litellm_model", completion.model))
        except MemoryStoreError as exc:  # a full disk: the answer still leaves (its delivery is noted)
            log.error("chat %s: the offline model's introduction is not saved: %s", self.chat_id, exc)
        sent = await stream.finish(shown)

        # 6. record the reply, the usage and the memories used. Accepted even while intake is stopped
        # (a full disk): they record what was already sent and billed, and the store's reserve keeps
        # them until they are committed (at the latest at the next start).
        reply = StoredMessage(
            chat_id=self.chat_id,
            message_id=sent.message_id,
            user_id=self.svc.bot.user_id,
            user_name=self.svc.bot.name,
            text=completion.text,
            date=sent.date,
            role=ROLE_ASSISTANT,
            reply_to=ev.message_id,
            thread_id=ev.thread_id,
        )
        window.append(reply)
        (await self.answered()).add(ev.message_id)
        if self.persist:
            store.add(reply)  # a reply is never embedded (Memory.remember would refuse it while vector memory is full)
            if self.svc.janitor is not None:
                self.svc.janitor.note_stored(self.chat_id, None)
            if prompt.memories:
                store.record_recall(self.chat_id, sent.message_id, prompt.memories)
        usage = UsageRecord(
            ts=self.svc.clock(),
            chat_id=self.chat_id,
            user_id=ev.sender.user_id,
            kind="chat",
            model=completion.model,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cost_usd=completion.cost_usd,
            latency_ms=completion.latency_ms,
        )
        self.svc.record_usage(usage)
        # the reply, its usage and recalls are committed before the next update of this chat is handled
        try:
            await store.flush()
        except DiskFull as exc:  # kept in the reserve (the next start stores it); new messages are refused from now
            log.error("chat %s: the reply to %s is kept in the reserve, not committed: %s", self.chat_id, ev.message_id, exc)
        except MemoryStoreError as exc:  # kept queued and retried by the writer; the reply was sent
            log.error("chat %s: the reply to %s is not committed yet: %s", self.chat_id, ev.message_id, exc)
        self.svc.report(
            TurnReport(
                self.chat_id,
                ev.message_id,
                True,
                _ms(t0),
                llm_ms,
                recall.embed_ms,
                recall.search_ms,
                completion.model,
                completion.prompt_tokens,
                completion.completion_tokens,
                completion.cost_usd,
                prompt.memories,
                completion.text,
                sent.message_id,
                tier=tier,
                ttft_ms=ttft_ms,
            )
        )

    async def _with_offline_intro(self, text: str, model: str) -> str:
        """``text`` with, the first time the offline model answers in this chat, a line saying what it
        is and how the host connects an LLM (``providers.recall_model.intro``); said once per chat
        (chat setting ``offline_intro``), and not after a reply that already is the intro."""
        if self.settings.get("offline_intro"):
            return text
        from providers.recall_model import MODEL, intro  # deferred: imports litellm, loaded by the LLM already

        if model != MODEL:
            return text
        await self.save_chat_settings({**self.settings, "offline_intro": True})
        said = intro()
        return text if said in text else f"{text}\n\nℹ️ {said}"

    async def _on_edited(self, ev: Edited) -> None:
        """An edit changes the stored text and the memory; a media message keeps its marker."""
        if not self.persist:
            return
        old = next((m for w in self._windows.values() for m in w if m.message_id == ev.message_id), None)
        if old is None:
            found = await self.svc.memory.store.get_messages(self.chat_id, [ev.message_id])
            old = found[0] if found else None
        if old is None or old.role == ROLE_ASSISTANT:
            return
        mark = _MARKER.match(old.text)
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
        self._windows.clear()
        self._whole_chat_in_window.clear()
        self._answered = None
        self.settings = {}
        log.info("chat %s: upgraded to supergroup %s; %d messages moved there", self.chat_id, ev.to_chat_id, moved)

    async def _on_deleted(self, ev: Deleted) -> None:
        """Deleted messages leave both stores and the context."""
        n = await self.svc.memory.forget_messages(self.chat_id, ev.message_ids)
        gone = set(ev.message_ids)
        for w in self._windows.values():
            kept = [m for m in w if m.message_id not in gone]
            w.clear()
            w.extend(kept)
        log.info("chat %s: %d deleted message(s) forgotten", self.chat_id, n)

    async def _understand(self, ev: Incoming):
        """``actors.media.understand``; a failure there never loses the message (marker + caption)."""
        from . import media

        assert ev.media is not None
        try:
            return await media.understand(self, ev, await self._user(ev.sender.user_id))
        except Exception:  # noqa: BLE001 - the message is stored whatever happens to its file
            log.exception("chat %s: reading the media of message %s failed", self.chat_id, ev.message_id)
            return media.Understood(media.with_caption(ev.media, ev.text), answerable=bool(ev.text.strip()),
                                    note=_("Sorry, something went wrong reading that file."))

    async def _say_note(self, ev: Incoming, text: str, billing: bool) -> None:
        """A one-line notice about a media message (with a /billing button for a tier refusal). A
        tier refusal is said once per member per hour, so a stream of photos gets one answer."""
        from .billing import plans_button

        if billing:
            now = self.svc.clock()
            key = (ev.sender.user_id, text)
            until = self._refused_until.get(key)
            if until is not None and now < until:
                return
            self._refused_until[key] = now + timedelta(hours=1)
        rows = plans_button(self) if billing else None
        if rows:
            await self.outbox.send_buttons(self.chat_id, text, rows, reply_to=ev.message_id, thread_id=ev.thread_id)
        else:
            await self.outbox.send(self.chat_id, text, reply_to=ev.message_id, thread_id=ev.thread_id)

    async def _is_bot_message(self, message_id: int, window) -> bool:
        """Whether ``message_id`` of this chat was sent by the bot (window first, then the store)."""
        for m in window:
            if m.message_id == message_id:
                return m.user_id == self.svc.bot.user_id and m.role == ROLE_ASSISTANT
        found = await self.svc.memory.store.get_messages(self.chat_id, [message_id])
        return bool(found) and found[0].role == ROLE_ASSISTANT

    async def _refuse(self, ev: Incoming, adm) -> None:
        """Tell the member once why they are not served; repeated refusals stay silent until the
        quota resets (or the rate window passes), so a flood does not get a flood of replies."""
        now = self.svc.clock()
        key = (ev.sender.user_id, adm.reason)
        until = self._refused_until.get(key)
        if until is not None and now < until:
            return
        if adm.reason == "rate" and adm.retry_after:
            self._refused_until[key] = now + timedelta(seconds=adm.retry_after)
        elif adm.quota is not None and adm.quota.resets_at is not None:
            self._refused_until[key] = adm.quota.resets_at
        await self._note_delivery(ev.message_id)  # a refusal is the answer: not repeated after a restart
        await self.outbox.send(self.chat_id, adm.refusal or _("Sorry, I can't answer right now."), reply_to=ev.message_id, thread_id=ev.thread_id)

    async def _reply_chain(self, ev: Incoming, window) -> list[StoredMessage]:
        """The messages ``ev`` replies to (up to 3 levels), oldest first, that are not in the window."""
        in_window = {m.message_id: m for m in window}
        chain: list[StoredMessage] = []
        target = ev.reply_to
        for _depth in range(REPLY_CHAIN_DEPTH):
            if target is None:
                break
            m = in_window.get(target)
            if m is None:
                found = await self.svc.memory.store.get_messages(self.chat_id, [target])
                if not found:
                    break
                m = found[0]
                chain.append(m)
            target = m.reply_to
        chain.reverse()
        return chain

    # ------------------------------------------------------------------ commands

    def may_trigger(self, user_id: int) -> bool:
        """``telegram.allowed_users`` (global) and the chat's ``allowed_users`` setting (admins): when
        either is set, only the ids it lists make the bot answer; everyone is still remembered."""
        for allowed in (self.svc.config.settings.telegram.allowed_users, self.settings.get("allowed_users")):
            if allowed and user_id not in allowed:
                return False
        return True

    async def _on_command(self, ev: CommandEvent) -> None:
        """Commands are handled by ``actors.commands``; unknown ones get help. A user the chat's
        ``allowed_users`` leaves out is not answered (a group's admins can still change settings)."""
        from .commands import handle_command

        if not self.may_trigger(ev.sender.user_id) and not (ev.command == "settings" and ev.chat_type != "private"):
            return
        await handle_command(self, ev)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
