"""A turn: what a chat's actor does with one incoming message (``docs/design.md`` §3).

1. **store** the message (always, unless the chat turned persistence off); a file is understood
   first (``Handlers.understand``: decided, downloaded, extracted) and stored with what was read;
2. **decide** whether it addresses the bot (private chat, mention, reply, keyword, always-on);
3. **admit**: the member's tier, quotas and rate pick the model, or refuse once, politely;
4. **recall and assemble**: this chat's memories, the reply chain, the recent window, within the
   model's token budget;
5. **generate**, streaming through the outbox — the delivery is noted before the first byte (an answer
   paid with credits is debited right after it, into the same reserve);
6. **record** the reply, its usage and the memories it used.

A stream may offer ``stopped`` (an ``anyio.Event``: Telegram's Stop button on a draft); when it is
set, the generation ends at the model's next chunk and what was generated so far is the reply (none
when nothing was), its usage counted as generated.

``take(host, ev)`` runs it on a ``TurnHost`` — the chat's actor, seen through the few members a turn
needs — so that this module never imports the actor (``actors.chat`` imports it).
"""
from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Protocol

import anyio

from i18n import _
from memory.errors import DiskFull, MemoryStoreError
from memory.service import Recall
from memory.types import ROLE_ASSISTANT, StoredMessage, UsageRecord
from providers.errors import ProviderError
from providers.keys import KeysUnavailable
from providers.language import detect_or_none, would_load
from providers.memory_block import render_profile

from .answer_stream import AnswerStream
from .context import Prompt, build_prompt, system_prompt
from .errors import ActorError
from .events import PRIVATE, Incoming, with_caption
from .handlers import ChatContext, Handlers, TurnTools, Understood
from .query_plan import plan_queries, planning_model
from .services import ALREADY_ANSWERED, TurnReport
from .settings import UserSettings
from .support import with_support
from .triggers import should_respond, strip_mention

__all__ = ["MARKER", "TurnHost", "take"]

log = logging.getLogger(__name__)

REPLY_CHAIN_DEPTH = 3
PROFILE_SPEAKERS = 10  # the members whose facts a turn's profile block holds: the asker, then the latest speakers
PROFILE_FACTS = 30  # facts in the profile block at most (the budget may keep fewer)
MARKER = re.compile(r"^\[[^\]\n]*\]\s*")  # the leading media marker of a stored text ("[voice 0:42] ")


class TurnHost(ChatContext, Protocol):
    """What a turn needs of its chat's actor, beyond a feature's ``ChatContext``."""

    handlers: Handlers
    refused_until: dict[tuple[int, str | None], datetime]  # refusals said recently, by (member, reason)

    async def window(self, thread_id: int | None) -> deque[StoredMessage]:
        """The recent messages of a thread (None: the chat outside topics), loaded once, then kept."""
        ...

    async def answered(self) -> set[int]:
        """Ids of this chat's messages the bot replied to."""
        ...

    async def note_delivery(self, message_id: int) -> None:
        """Durably note that ``message_id`` is being answered, before the first byte leaves."""
        ...

    def nothing_to_recall(self, thread_id: int | None, window: deque[StoredMessage]) -> bool:
        """Whether the window still holds every message this chat stored (recall is skipped)."""
        ...

    def may_trigger(self, user_id: int) -> bool:
        """Whether this member may make the bot answer here (``allowed_users``)."""
        ...

    async def know_chat(self, ev: Incoming) -> None:
        """Store the chat's row (type, title) once per actor."""
        ...


async def take(host: TurnHost, ev: Incoming) -> None:
    """Handle one incoming message of ``host``'s chat: the six steps of the module docstring."""
    await _Turn(host, ev).run()


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class _Turn:
    """One message's way through the six steps; ``report`` tells the services how it ended."""

    def __init__(self, host: TurnHost, ev: Incoming) -> None:
        self.host, self.ev, self.svc = host, ev, host.svc
        self.chat_id = host.chat_id
        self.t0 = time.perf_counter()
        self.understood: Understood | None = None
        self.caption = ev.text
        self.adm: Any = None  # the admission's answer (an answer paid with credits is debited: ``_charge``)
        self.keys: dict[str, str] = {}  # the member's own API keys, then the group's (/key)
        self.own_key: frozenset[str] = frozenset()  # the aliases those keys pay for (not the host)
        self.name: str | None = None  # the bot's name in this chat (``/settings name``), when the member's tier has it

    def report(self, responded: bool, **kw: Any) -> None:
        self.svc.report(TurnReport(self.chat_id, self.ev.message_id, responded, _ms(self.t0), **kw))

    async def run(self) -> None:
        host, ev = self.host, self.ev
        await host.know_chat(ev)
        if ev.sender.user_id in host.awaiting_role:  # /role: this message is the sender's persona, not conversation
            host.awaiting_role.discard(ev.sender.user_id)
            await host.handlers.save_role(host, ev.sender.user_id, ev.text.strip() or None)
            await host.outbox.send(self.chat_id, _("Persona saved."), reply_to=ev.message_id, thread_id=ev.thread_id)
            self.report(False)
            return
        window = await host.window(ev.thread_id)
        if ev.message_id in await host.answered():  # re-delivered, replayed or restarted: answered exactly once
            self.report(False, error=ALREADY_ANSWERED)
            return
        if ev.media is not None and any(m.message_id == ev.message_id for m in window):
            self.report(False)  # re-delivered: never download twice
            return
        if not await self._store(window):
            return
        if not await self._decide(window):
            return
        if self.understood is None and await host.handlers.draw(host, self.ev):  # "draw a cat on a bike"
            self.report(True)
            return
        await self._answer(window)

    # ------------------------------------------------------------------ 1. store

    async def _store(self, window: deque[StoredMessage]) -> bool:
        """Understand a file, store the message, add it to the window. False when it was handled
        before (a re-delivery): nothing more to do."""
        host, ev = self.host, self.ev
        if ev.media is not None:
            self.understood = await self._understand()
            self.ev = ev = replace(ev, text=self.understood.text)
        msg = StoredMessage(chat_id=ev.chat_id, message_id=ev.message_id, user_id=ev.sender.user_id, user_name=ev.sender.name,
                            text=ev.text, date=ev.date, reply_to=ev.reply_to, thread_id=ev.thread_id)
        if host.persist:
            self.svc.memory.remember(msg)
            if self.svc.janitor is not None:
                self.svc.janitor.note_stored(self.chat_id, ev.sender.user_id)
        if any(m.message_id == msg.message_id for m in window):
            log.info("chat %s: message %s re-delivered; already handled", self.chat_id, ev.message_id)
            self.report(False)
            return False
        window.append(msg)
        return True

    async def _understand(self) -> Understood:
        """``Handlers.understand``; a failure there never loses the message (its marker and caption)."""
        ev = self.ev
        assert ev.media is not None
        try:
            return await self.host.handlers.understand(self.host, ev, await self.host.user_settings(ev.sender.user_id))
        except Exception:
            log.exception("chat %s: reading the media of message %s failed", self.chat_id, ev.message_id)
            return Understood(with_caption(ev.media, ev.text),
                              note=with_support(self.svc, _("Sorry, something went wrong reading that file.")))

    # ------------------------------------------------------------------ 2. decide

    async def _decide(self, window: deque[StoredMessage]) -> bool:
        """Whether the message addresses the bot and is something to answer; says a file's note."""
        host, ev, understood = self.host, self.ev, self.understood
        if ev.reply_to is not None and not ev.reply_to_bot and await self._is_bot_message(ev.reply_to, window):
            self.ev = ev = replace(ev, reply_to_bot=True)
        bot = self.svc.config.settings.bot
        chat = host.settings
        self.name = await self._chat_name()
        keywords = tuple(bot.keywords if chat.keywords is None else chat.keywords) + ((self.name,) if self.name else ())
        always_on = bot.always_on if chat.always_on is None else chat.always_on
        first_line = ev if understood is None else replace(ev, text=ev.text.split("\n", 1)[0])
        addressed = should_respond(first_line, bot_username=self.svc.bot.username, keywords=keywords, always_on=always_on)
        addressed = addressed and host.may_trigger(ev.sender.user_id)
        if understood is not None and addressed and understood.note:
            await self._say_note(understood.note, understood.billing)
        if not ev.text.strip() or not addressed or (understood is not None and not understood.answerable):
            self.report(False)
            return False
        return True

    async def _chat_name(self) -> str | None:
        """The name this chat's admins gave the bot (``/settings name``; answered to like a keyword, and
        said in the system prompt), when the member's tier here has ``custom_name`` (their own or the
        group's subscription); else None."""
        name = self.host.settings.name
        if not name:
            return None
        adm = self.svc.admission
        if adm is not None and not adm.features(await adm.tier_of(self.chat_id, self.ev.sender.user_id)).custom_name:
            return None
        return name

    async def _is_bot_message(self, message_id: int, window: deque[StoredMessage]) -> bool:
        """Whether ``message_id`` of this chat was sent by the bot (window first, then the store)."""
        for m in window:
            if m.message_id == message_id:
                return m.user_id == self.svc.bot.user_id and m.role == ROLE_ASSISTANT
        found = await self.svc.memory.store.messages.get(self.chat_id, [message_id])
        return bool(found) and found[0].role == ROLE_ASSISTANT

    async def _say_note(self, text: str, billing: bool) -> None:
        """A one-line notice about a file (with the upgrade buttons for a tier refusal). A tier
        refusal is said once per member per hour, so a stream of photos gets one answer."""
        host, ev = self.host, self.ev
        if billing:
            now, key = self.svc.clock(), (ev.sender.user_id, text)
            until = host.refused_until.get(key)
            if until is not None and now < until:
                return
            host.refused_until[key] = now + timedelta(hours=1)
        rows = host.handlers.upgrade_buttons(host) if billing else None
        if rows:
            await host.outbox.send_buttons(self.chat_id, text, rows, reply_to=ev.message_id, thread_id=ev.thread_id)
        else:
            await host.outbox.send(self.chat_id, text, reply_to=ev.message_id, thread_id=ev.thread_id)

    # ------------------------------------------------------------------ 3. admit, 4. assemble

    async def _answer(self, window: deque[StoredMessage]) -> None:
        host, ev = self.host, self.ev
        user_settings = await host.user_settings(ev.sender.user_id)
        alias, note, tier = host.model_for(user_settings), None, None
        self.keys = await self._api_keys()
        own_key_aliases = getattr(self.svc.llm, "own_key_aliases", None)  # (fakes of the LLM need not have it)
        self.own_key = own_key_aliases(self.keys) if self.keys and own_key_aliases is not None else frozenset()
        if self.svc.admission is not None:
            adm = await self.svc.admission.admit(self.chat_id, ev.chat_type, ev.sender.user_id, alias, own_key=self.own_key)
            if not adm.allowed:
                await self._refuse(adm)
                self.report(False, error=f"refused: {adm.reason}")
                return
            alias, tier, self.adm = adm.alias, adm.tier, adm
            note = adm.note if adm.downgraded else None
        recall, query = await self._recall(window, tier)
        prompt = await self._prompt(window, alias, user_settings, recall, query)
        tools = await self._tools(alias, tier, user_settings)
        try:
            await self._generate(window, alias, prompt, recall, note, tier, tools)
        except ActorError as exc:  # the transport gave up for good (e.g. the user blocked the bot)
            log.warning("chat %s: reply to %s not delivered: %s", self.chat_id, ev.message_id, exc)
            self.report(True, error=f"undelivered: {exc}")

    async def _tools(self, alias: str, tier: str | None, user_settings: UserSettings) -> TurnTools | None:
        """The tools this turn offers: the plugins' (``Plugins.tools_for``) when the model can call
        tools (``LLM.supports_tools``), else None."""
        plugins = self.host.plugins
        if plugins is None:
            return None
        supports = getattr(self.svc.llm, "supports_tools", None)  # (fakes of the LLM need not have it)
        if supports is None or not supports(alias):
            return None
        return await plugins.tools_for(self.host, self.ev.sender.user_id, tier, user_settings, self.ev.thread_id)

    async def _recall(self, window: deque[StoredMessage], tier: str | None = None) -> tuple[Recall, str]:
        """This chat's memories for what the member said (not a media marker and file summary); with
        query planning (``actors.query_plan``: ``memory.query_model``, the tier's ``query_planning``),
        those of the search queries the planner wrote for it too."""
        ev, understood = self.ev, self.understood
        said = ev.text
        if understood is not None:
            said = self.caption if understood.indexed else MARKER.sub("", ev.text)
            if understood.indexed:
                await self.svc.memory.flush()  # the document's parts must be recallable for this very answer
        query = strip_mention(said, self.svc.bot.username)
        if not query or self.host.nothing_to_recall(ev.thread_id, window):
            return Recall([]), query or said
        k = self.svc.config.settings.memory.recall_k
        exclude = {m.message_id for m in window}
        plan = await self._plan(query, tier)
        if plan:
            return await self.svc.memory.recall_many(self.chat_id, query, plan, k, exclude_ids=exclude), query
        return await self.svc.memory.recall(self.chat_id, query, k, exclude_ids=exclude), query

    async def _plan(self, query: str, tier: str | None) -> tuple[str, ...]:
        """The planner's search queries for ``query`` (``actors.query_plan``); none when planning is
        off (no ``memory.query_model``, an offline one, the tier lacks ``query_planning``, the
        host's spending cap holds paid models back) or the planner gave none."""
        alias = planning_model(self.svc.config.settings)
        adm = self.svc.admission
        if alias is None or adm is None or tier is None or not adm.features(tier).query_planning:
            return ()
        if adm.budget is not None and adm.budget.holds_back(alias):
            return ()
        plan = await plan_queries(self.svc, alias, query, chat_id=self.chat_id, user_id=self.ev.sender.user_id)
        return plan.queries

    async def _prompt(self, window: deque[StoredMessage], alias: str, user_settings: UserSettings, recall: Recall,
                      query: str) -> Prompt:
        spec = self.svc.config.settings.models[alias]
        prompt = build_prompt(
            system=self._system_prompt(user_settings, await self._answer_language(query)),
            window=list(window),
            memories=recall.hits,
            reply_chain=await self._reply_chain(window),
            budget_tokens=max(256, self.svc.llm.context_tokens(alias) - spec.max_output_tokens),
            profile=await self._profile(window),
        )
        image = self.understood.image if self.understood is not None else None
        if image is not None and prompt.messages[-1]["role"] == "user":
            from providers.vision import image_part, supports_vision  # deferred: imports litellm's model map

            if supports_vision(spec):  # the model sees the photo itself, with its caption
                text = prompt.messages[-1]["content"]
                prompt.messages[-1] = {"role": "user", "content": [{"type": "text", "text": text}, image_part(*image)]}
        return prompt

    async def _profile(self, window: deque[StoredMessage]) -> str:
        """The ``<profile>`` block: the current memory entries about this chat, the member asking and
        the others who spoke in the recent window (at most ``PROFILE_FACTS``, newest kept)."""
        facts = self.svc.memory.facts
        if facts is None:
            return ""
        speakers = [self.ev.sender.user_id]
        speakers += [m.user_id for m in reversed(window) if m.role != ROLE_ASSISTANT and m.user_id not in speakers]
        entries = await facts.current(self.chat_id, speakers[:PROFILE_SPEAKERS])
        return render_profile(entries[-PROFILE_FACTS:])

    def _system_prompt(self, user_settings: UserSettings, answer_language: str | None) -> str:
        ev, settings = self.ev, self.host.settings
        private = ev.chat_type == PRIVATE
        return system_prompt(self.svc.config.settings.bot.system_prompt.replace("{name}", self.svc.bot.name), ev,
                             chat_name=self.name, chat_title=None if private else ev.chat_title or settings.title,
                             persona=user_settings.role if private else settings.persona, answer_language=answer_language)

    async def _answer_language(self, text: str) -> str | None:
        """A group's ``/settings language``, else the language the member wrote in, else their
        ``language`` setting; None when nothing tells (the model picks)."""
        ev, settings = self.ev, self.host.settings
        if ev.chat_type != PRIVATE and settings.language:
            return settings.language
        if would_load(text):  # the detector's first load (~1 s) stays off the event loop
            lang = await anyio.to_thread.run_sync(detect_or_none, text)
        else:
            lang = detect_or_none(text)
        return lang or (await self.host.user_settings(ev.sender.user_id)).language

    async def _reply_chain(self, window: deque[StoredMessage]) -> list[StoredMessage]:
        """The messages ``ev`` replies to (up to 3 levels), oldest first, that are not in the window."""
        in_window = {m.message_id: m for m in window}
        chain: list[StoredMessage] = []
        target = self.ev.reply_to
        for _depth in range(REPLY_CHAIN_DEPTH):
            if target is None:
                break
            m = in_window.get(target)
            if m is None:
                found = await self.svc.memory.store.messages.get(self.chat_id, [target])
                if not found:
                    break
                m = found[0]
                chain.append(m)
            target = m.reply_to
        chain.reverse()
        return chain

    async def _refuse(self, adm: Any) -> None:
        """Tell the member once why they are not served (in a group, seen by them only where Telegram
        allows: ``send_ephemeral``); repeated refusals stay silent until the quota resets (or the rate
        window passes), so a flood does not get a flood of replies."""
        host, ev = self.host, self.ev
        now, key = self.svc.clock(), (ev.sender.user_id, adm.reason)
        until = host.refused_until.get(key)
        if until is not None and now < until:
            return
        if adm.reason == "rate" and adm.retry_after:
            host.refused_until[key] = now + timedelta(seconds=adm.retry_after)
        elif adm.quota is not None and adm.quota.resets_at is not None:
            host.refused_until[key] = adm.quota.resets_at
        await host.note_delivery(ev.message_id)  # a refusal is the answer: not repeated after a restart
        text = with_support(self.svc, adm.refusal or _("Sorry, I can't answer right now."))
        rows = host.handlers.upgrade_buttons(host) if adm.reason == "credits" else None  # /buy, /billing
        if rows:
            await host.outbox.send_buttons(self.chat_id, text, rows, reply_to=ev.message_id, thread_id=ev.thread_id)
            return
        # in a group, seen by the refused member only where the transport can (a normal reply otherwise)
        await host.outbox.send_ephemeral(self.chat_id, ev.sender.user_id, text, reply_to=ev.message_id, thread_id=ev.thread_id)

    async def _charge(self, tokens: int | None = None, model: str | None = None, undo: bool = False) -> None:
        """Debit an answer paid with credits (``Admission.charge``, journaled): its price right after its
        delivery is noted and before the first byte, both into the store's reserve in that order (a
        crash finds both or only the delivery — then nothing was sent — and the delivery keeps the
        turn from being handled again, so nothing is taken twice); the tokens' price after the
        answer; ``undo``: give the price back (the model failed). A database failure is logged: the
        answer is not held back for it."""
        adm, admission = self.adm, self.svc.admission
        if adm is None or adm.paid_by is None or admission is None:
            return
        try:
            if undo:
                await admission.uncharge(adm, self.chat_id, self.ev.message_id)
            else:
                await admission.charge(adm, self.chat_id, self.ev.message_id, self.ev.sender.user_id, tokens=tokens, model=model,
                                       journaled=True)
        except MemoryStoreError as exc:
            log.error("chat %s: the credits for the answer to %s are not recorded: %s", self.chat_id, self.ev.message_id, exc)

    # ------------------------------------------------------------------ 5. generate, 6. record

    async def _generate(self, window: deque[StoredMessage], alias: str, prompt: Prompt, recall: Recall, note: str | None,
                        tier: str | None, tools: TurnTools | None = None) -> None:
        """Stream the model's answer through the outbox (the delivery noted before its first byte),
        then record it. With ``tools``, a line per tool call the model makes ("🔎 searched …") heads
        the reply, shown as the call is made; the stored reply is the answer alone. When the user stops
        the generation (the stream's ``stopped``), the reply is what was generated until then."""
        ev = self.ev
        stream = await self.host.outbox.stream(self.chat_id, reply_to=ev.message_id, thread_id=ev.thread_id)
        live = AnswerStream(stream, partial(_ms, self.t0), self._first_byte, tools.notice if tools is not None else None)
        t_llm = time.perf_counter()
        try:
            completion = await self.svc.llm.complete(alias, prompt.messages, on_delta=live.on_delta, **self._llm_options(live, tools))
        except ProviderError as exc:
            log.warning("chat %s: LLM %s failed: %s", self.chat_id, alias, exc)
            await self._charge(undo=True)
            await live.finish(with_support(self.svc, exc.user_message))
            self.report(True, llm_ms=_ms(t_llm), embed_ms=recall.embed_ms, search_ms=recall.search_ms, model=alias,
                        error=str(exc), tier=tier, ttft_ms=live.ttft_ms)
            return
        llm_ms = _ms(t_llm)
        if live.ttft_ms is None:  # not streamed: the whole answer is the first token
            live.ttft_ms = _ms(self.t0)
        answered = partial(self.report, True, llm_ms=llm_ms, embed_ms=recall.embed_ms, search_ms=recall.search_ms,
                           model=completion.model, prompt_tokens=completion.prompt_tokens,
                           completion_tokens=completion.completion_tokens, cost_usd=completion.cost_usd,
                           hits=prompt.memories, tier=tier, ttft_ms=live.ttft_ms)
        if getattr(completion, "stopped", False) and not completion.text.strip() and not live.notices:
            log.info("chat %s: the user stopped the answer to %s before it said anything", self.chat_id, ev.message_id)
            await self._record_usage(completion)  # the prompt was read: its tokens count
            answered()
            return
        await live.note_delivery()
        sent = await live.finish(await self._shown(completion, note))
        await self._record(window, completion, prompt, sent)
        answered(reply_text=completion.text, reply_id=sent.message_id)

    async def _first_byte(self) -> None:
        """Before the answer's first byte: its delivery noted, then its price debited (``_charge``)."""
        await self.host.note_delivery(self.ev.message_id)
        await self._charge()

    def _llm_options(self, live: AnswerStream, tools: TurnTools | None) -> dict[str, Any]:
        """``LLM.complete``'s options for this turn: the member's keys, the tools, the stream's stop event."""
        keys = self.keys
        extra: dict[str, Any] = {"api_keys": keys} if keys else {}  # (fakes of the LLM need not take it)
        if tools is not None:
            extra.update(tools=tools.specs, run_tool=tools.run, max_steps=tools.max_steps,
                         tool_timeout_s=tools.timeout_s, tool_output_chars=tools.output_chars,
                         on_tool_call=live.on_tool_call)
        stop = getattr(live.stream, "stopped", None)  # a transport whose streams can be stopped by the user
        if stop is not None:
            extra["stop"] = stop
        return extra

    async def _shown(self, completion: Any, note: str | None) -> str:
        """The answer as shown: under the downgrade ``note``, with the offline model's introduction."""
        shown = f"_{note}_\n\n{completion.text}" if note else completion.text
        try:
            shown = await self._with_offline_intro(shown, getattr(completion, "litellm_model", completion.model))
        except MemoryStoreError as exc:  # a full disk: the answer still leaves (its delivery is noted)
            log.error("chat %s: the offline model's introduction is not saved: %s", self.chat_id, exc)
        return shown

    async def _api_keys(self) -> dict[str, str]:
        """The member's own API keys, then the group's (``/key``); empty when none or /key is off."""
        vault = self.svc.keys
        if vault is None or not vault.enabled:
            return {}

        try:
            return await vault.keys_for(self.ev.sender.user_id, self.chat_id)
        except KeysUnavailable as exc:  # the host's key changed: answer with the host's keys
            log.error("chat %s: users' keys unusable: %s", self.chat_id, exc)
            return {}

    async def _with_offline_intro(self, text: str, model: str) -> str:
        """``text`` with, the first time the offline model answers in this chat, a line saying what it
        is and how the host connects an LLM (``providers.recall_model.intro``); said once per chat
        (chat setting ``offline_intro``), and not after a reply that already is the intro."""
        host = self.host
        if host.settings.offline_intro:
            return text
        from providers.recall_model import MODEL, intro  # deferred: imports litellm (loaded by the LLM already)

        if model != MODEL:
            return text
        await host.save_chat_settings(host.settings.with_(offline_intro=True))
        said = intro()
        return text if said in text else f"{text}\n\nℹ️ {said}"

    async def _record(self, window: deque[StoredMessage], completion: Any, prompt: Prompt, sent: Any) -> None:
        """Record the reply, the usage and the memories used. Accepted even while intake is stopped
        (a full disk): they record what was already sent and billed, and the store's reserve keeps
        them until they are committed (at the latest at the next start)."""
        host, ev, store = self.host, self.ev, self.svc.memory.store
        reply = StoredMessage(chat_id=self.chat_id, message_id=sent.message_id, user_id=self.svc.bot.user_id,
                              user_name=self.svc.bot.name, text=completion.text, date=sent.date, role=ROLE_ASSISTANT,
                              reply_to=ev.message_id, thread_id=ev.thread_id)
        window.append(reply)
        (await host.answered()).add(ev.message_id)
        if host.persist:
            store.add(reply)  # a reply is never embedded (Memory.remember would refuse it while vector memory is full)
            if self.svc.janitor is not None:
                self.svc.janitor.note_stored(self.chat_id, None)
            if prompt.memories:
                store.record_recall(self.chat_id, sent.message_id, prompt.memories)
        await self._record_usage(completion)

    async def _record_usage(self, completion: Any) -> None:
        """Record the completion's usage, debit its tokens when paid with credits, and settle the store."""
        ev, store = self.ev, self.svc.memory.store
        own_key = completion.model in self.own_key  # the member's (or group's) key paid: the host's cost is 0
        self.svc.record_usage(UsageRecord(
            ts=self.svc.clock(), chat_id=self.chat_id, user_id=ev.sender.user_id, kind="chat", model=completion.model,
            prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
            cost_usd=0.0 if own_key else completion.cost_usd, latency_ms=completion.latency_ms))
        await self._charge(tokens=completion.prompt_tokens + completion.completion_tokens, model=completion.model)
        try:  # the reply, its usage and recalls survive a crash before the next update of this chat is handled:
            await store.settle()  # in the store's reserve (committed by the writer soon after), else committed
        except DiskFull as exc:  # kept in the reserve (the next start stores it); new messages are refused from now
            log.error("chat %s: the reply to %s is kept in the reserve, not committed: %s", self.chat_id, ev.message_id, exc)
        except MemoryStoreError as exc:  # kept queued and retried by the writer; the reply was sent
            log.error("chat %s: the reply to %s is not committed yet: %s", self.chat_id, ev.message_id, exc)
