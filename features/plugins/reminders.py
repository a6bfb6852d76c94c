"""The ``reminders`` plugin: "remind me tomorrow at 9 to call Anna", «напомни в пятницу в 10 про созвон».

- ``Reminders(services)``: the plugin as the ``PluginHost`` opens it (an async context manager that
  owns the scheduler's task group): ``tools`` for the model, and what ``/remind``, ``/reminders`` and
  their Cancel buttons use (``add``, ``pending``, ``cancel``).
- The scheduler sleeps until the next due reminder (woken early when one is added), claims the due
  ones in batches and delivers each *through its chat's actor* (``services.supervisor.call``): in
  order within a chat, concurrently across chats. At start it finishes what a previous run left
  (``memory.reminders``: exactly once, and what a crash in the middle of a send does) and sends the
  ones missed while the bot was down, marked late ("⏰ (late, was due Thu 10:00) call Anna").
- Tools: ``set_reminder`` (text, when, optional repeat), ``list_reminders``, ``cancel_reminder``. The
  chat and the member come from the ``ToolContext``, never from the model's arguments, so a
  reminder of another chat can be neither listed nor cancelled.
- Commands (registered in ``features.commands``): ``/remind 10m stretch`` (no model),
  ``/reminders`` (the member's, with a Cancel button each; a group's admins see everyone's) and
  ``/settings timezone Europe/Berlin`` (the member's zone; default ``plugins.timezone``).

Times are read and shown in the member's zone (``features.plugins.reminder_times``); the store
keeps UTC. The scheduler's ``clock`` is ``services.clock`` (tests control it and call ``wake()``).
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

import i18n
from actors.errors import SupervisorClosed
from actors.events import ButtonPress, CommandEvent, is_group
from actors.handlers import ChatContext
from actors.outbox import Button
from actors.settings import UserSettings
from features.replies import reply
from i18n import _, ngettext
from memory.errors import MemoryStoreError
from memory.reminders import Confirmation, DeliveryJournal, Reminder, ReminderStore
from memory.sql_domain import SqlBackend

from .base import ToolContext, ToolOutcome, ToolSpec, short, text_arg
from .clock import zone
from .errors import PluginError
from .reminder_times import BadTime, check_due, describe_when, next_occurrence, parse_repeat, parse_when, split_when

if TYPE_CHECKING:
    from actors.services import Actors, Services

__all__ = [
    "BUTTON",
    "JOURNAL_FILE",
    "CancelReminder",
    "ListReminders",
    "Reminders",
    "SetReminder",
    "cmd_remind",
    "cmd_reminders",
    "member_timezone",
    "press",
    "set_timezone",
]

log = logging.getLogger(__name__)

PLUGIN = "reminders"
JOURNAL_FILE = "kith.reminders.journal"  # next to the dialogue store (its ``local_dir``)
BUTTON = "rem"  # the callback data's kind: ``rem:cancel:<id>``
MAX_PER_MEMBER = 100  # pending reminders of one member in one chat
MAX_TEXT = 1000
BATCH = 500  # reminders claimed per commit
MAX_IN_FLIGHT = 5000  # claimed and not yet confirmed: the claimer waits beyond this
LANES = 256  # chats delivered to at once
LATE_AFTER = timedelta(seconds=60)  # delivered later than this after its time: marked late
IDLE_CHECK_S = 60.0  # the longest sleep (a clock that jumps is noticed within it)
SEND_ATTEMPTS = 3


@dataclass(slots=True)
class _Job:
    """One occurrence to deliver: ``uncertain`` when a crash interrupted its earlier send."""

    reminder: Reminder
    uncertain: bool = False


def member_timezone(user_settings: UserSettings, default: str) -> str:
    """The member's IANA zone: their ``/settings timezone`` (when still a known zone), else
    ``default`` (``plugins.timezone``)."""
    tz = user_settings.timezone
    if tz:
        try:
            zone(tz)
            return tz
        except PluginError:
            pass
    return default


class Reminders:
    """The reminders plugin of a running bot (see the module docstring).

    services: the runtime's services (``memory.store`` must be a ``SqlBackend``: the DuckDB or
    PostgreSQL dialogue store; ``clock``; ``supervisor``, set once the runtime runs). Keyword
    arguments are for tests and benchmarks: ``actors`` (what delivers: default
    ``services.supervisor``), ``clock``, ``journal`` (path), ``late_after``, ``batch``.
    """

    plugin = PLUGIN

    def __init__(self, services: Services, *, actors: Callable[[], Actors | None] | None = None,
                 clock: Callable[[], datetime] | None = None, journal: Path | None = None,
                 late_after: timedelta = LATE_AFTER, batch: int = BATCH, store: SqlBackend | None = None) -> None:
        self.svc = services
        backend = store if store is not None else services.memory.store
        self.store = ReminderStore(backend)  # type: ignore[arg-type]
        self._actors = actors or (lambda: services.supervisor)
        self.clock = clock or services.clock
        self.journal = DeliveryJournal(journal or Path(getattr(backend, "local_dir", Path.cwd())) / JOURNAL_FILE)
        self.late_after = late_after
        self.batch = batch
        self.tools = [SetReminder(self), ListReminders(self), CancelReminder(self)]
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        self._lanes: dict[int, deque[_Job]] = {}
        self._lane_slots = anyio.CapacityLimiter(LANES)
        self._confirms: list[Confirmation] = []
        self._confirm_wanted = anyio.Event()
        self._room = anyio.Event()
        self._in_flight = 0  # claimed and not yet confirmed (or released)
        self._closing = False
        self.ready = anyio.Event()  # set once the start-up recovery is done
        # counters (stats, benchmarks)
        self.delivered = 0
        self.failed = 0
        self.late = 0
        self.repeated = 0

    @classmethod
    def offline_tools(cls) -> list[SetReminder | ListReminders | CancelReminder]:
        """The tools as a catalog lists them without a running bot (``kith plugins``): their specs
        only; a call of one is an error outcome."""
        return [SetReminder(None), ListReminders(None), CancelReminder(None)]

    @property
    def default_timezone(self) -> str:
        return self.svc.config.settings.plugins.timezone

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Reminders:
        stack = AsyncExitStack()
        try:
            await self.store.open()
            self.journal.open()
            stack.callback(self.journal.close)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._tg.start_soon(self._main, name="reminders-scheduler")
        self._tg.start_soon(self._confirmer, name="reminders-confirmer")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._stack is not None and self._tg is not None
        self._closing = True
        self._tg.cancel_scope.cancel()
        try:
            await self._stack.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle()

    async def _settle(self) -> None:
        """At exit: commit what was delivered, put back what was claimed and not begun."""
        queued = [job.reminder.key for lane in self._lanes.values() for job in lane]
        self._lanes.clear()
        try:
            await self._commit_confirms()
            if queued:
                await self.store.release(queued)
        except MemoryStoreError as exc:  # the journal and the claims let the next start finish it
            log.warning("reminders: could not settle at exit (%s); the next start finishes it", exc)

    def wake(self) -> None:
        """Look at the due reminders now (one was added; a test moved its clock)."""
        self._wake.set()

    # ------------------------------------------------------------ what the tools and commands use

    async def add(self, chat_id: int, user_id: int, text: str, due: datetime, *, tz: str, recurrence: str | None = None,
                  thread_id: int | None = None, language: str | None = None) -> Reminder:
        """Store a reminder (committed) and wake the scheduler. raises BadTime for a time not in the
        future (or too far), PluginError when the member has ``MAX_PER_MEMBER`` waiting here."""
        now = self.clock()
        check_due(due, now, tz)
        if await self.store.count_pending(chat_id, user_id) >= MAX_PER_MEMBER:
            raise PluginError(f"this member already has {MAX_PER_MEMBER} reminders waiting in this chat; cancel some first")
        r = await self.store.add(Reminder(chat_id, user_id, text[:MAX_TEXT], due, tz, recurrence, thread_id, language), now=now)
        self.wake()
        return r

    async def pending(self, chat_id: int, user_id: int | None = None) -> list[Reminder]:
        """The chat's reminders still to come (only ``user_id``'s when given), soonest first."""
        return await self.store.pending(chat_id, user_id=user_id)

    async def cancel(self, chat_id: int, reminder_id: int, user_id: int | None = None) -> Reminder | None:
        """Cancel a reminder of this chat (``user_id``'s only, when given); None when none such waits."""
        return await self.store.cancel(chat_id, reminder_id, user_id=user_id)

    # ------------------------------------------------------------ the scheduler

    async def _main(self) -> None:
        again = await self._recover()
        while self._actors() is None:  # noqa: ASYNC110 - a plain attribute the runtime sets once the supervisor runs
            await anyio.sleep(0.02)
        self._dispatch(again)
        self.ready.set()
        while True:
            if self._closing:
                await anyio.sleep_forever()
            while self._in_flight >= MAX_IN_FLIGHT:
                self._room = anyio.Event()
                await self._room.wait()
            self._wake = anyio.Event()
            now = self.clock()
            try:
                due = await self.store.next_due()
                if due is not None and due <= now:
                    jobs = await self.store.claim_due(now, self.batch)
                    self._in_flight += len(jobs)
                    self._dispatch([_Job(r) for r in jobs])
                    continue
            except MemoryStoreError as exc:
                log.warning("reminders: the database failed (%s); retrying in 5 s", exc)
                due = now + timedelta(seconds=5)
            wait = IDLE_CHECK_S if due is None else min(IDLE_CHECK_S, max(0.0, (due - now).total_seconds()))
            with anyio.move_on_after(wait):
                await self._wake.wait()

    async def _recover(self) -> list[_Job]:
        """Finish what a previous run left claimed (see ``memory.reminders``): confirm what the
        journal says was sent; return the rest to send (again, marked, when the journal says it
        was being sent)."""
        begun, done = self.journal.read()
        claimed = await self.store.claimed()
        if not claimed:
            self.journal.clear()
            return []
        now = self.clock()
        sent = [r for r in claimed if r.key in done]
        again = [_Job(r, uncertain=r.key in begun) for r in claimed if r.key not in done]
        self._in_flight += len(again)
        await self.store.confirm([self._confirmation(r, now) for r in sent])
        self.journal.clear()
        for job in again:
            if job.uncertain:
                self.journal.begin(job.reminder.key)  # still uncertain if this run dies before resending it
        if sent or again:
            log.info("reminders: a previous run left %d in flight: %d were sent (confirmed now), %d are sent now "
                     "(%d possibly a second time)", len(claimed), len(sent), len(again), sum(j.uncertain for j in again))
        return again

    def _confirmation(self, r: Reminder, sent_at: datetime) -> Confirmation:
        nxt = None
        if r.recurrence:
            try:  # the next occurrence after both its own time and now: missed ones are not repeated
                nxt = next_occurrence(r.recurrence, max(r.due_at, sent_at), r.timezone)
            except (ValueError, KeyError, PluginError) as exc:
                log.warning("reminder %d: bad recurrence %r (%s); it ends here", r.id, r.recurrence, exc)
        return Confirmation(r.key, sent_at, late=sent_at - r.due_at > self.late_after, next_due=nxt)

    def _dispatch(self, jobs: Sequence[_Job]) -> None:
        assert self._tg is not None
        for job in jobs:
            lane = self._lanes.get(job.reminder.chat_id)
            if lane is None:
                lane = self._lanes[job.reminder.chat_id] = deque()
                self._tg.start_soon(self._lane, job.reminder.chat_id, lane, name=f"reminders-chat-{job.reminder.chat_id}")
            lane.append(job)

    async def _lane(self, chat_id: int, lane: deque[_Job]) -> None:
        """Deliver one chat's due reminders in order, through its actor."""
        async with self._lane_slots:
            try:
                while lane:
                    job = lane[0]
                    try:
                        await self._deliver(chat_id, job)
                    except SupervisorClosed:
                        self._closing = True
                        return  # shutting down: what is queued is released at exit
                    lane.popleft()
            finally:
                if self._lanes.get(chat_id) is lane and not lane:
                    del self._lanes[chat_id]

    async def _deliver(self, chat_id: int, job: _Job) -> None:
        r = job.reminder
        actors = self._actors()
        if actors is None:
            raise SupervisorClosed("no chat actors")
        journal = self.journal

        async def work(ctx: Any) -> datetime:  # in the chat's actor
            sent_at = self.clock()
            late = sent_at - r.due_at > self.late_after
            with i18n.use(r.language or i18n.current()):
                text = self.render(r, sent_at, late=late, uncertain=job.uncertain)
            journal.begin(r.key)
            await ctx.outbox.send(chat_id, text, thread_id=r.thread_id)
            journal.done(r.key)  # (no await between the send's return and this line)
            return sent_at

        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                sent_at = await actors.call(chat_id, work)
            except SupervisorClosed:
                raise
            except Exception as exc:
                if attempt < SEND_ATTEMPTS:
                    log.info("reminder %d (chat %s): send failed (%s); retrying", r.id, chat_id, exc)
                    await anyio.sleep(attempt * 2)
                    continue
                log.warning("reminder %d (chat %s): not delivered after %d attempts: %s", r.id, chat_id, attempt, exc)
                self.failed += 1  # given up: confirmed like a sent one, so it never blocks the chat's lane
                sent_at = self.clock()
            else:
                self.delivered += 1
                self.late += sent_at - r.due_at > self.late_after
                self.repeated += job.uncertain
            self._confirms.append(self._confirmation(r, sent_at))
            self._confirm_wanted.set()
            return

    def render(self, r: Reminder, sent_at: datetime, *, late: bool, uncertain: bool) -> str:
        """The message a reminder is delivered as, in the current language."""
        if not (uncertain or late):
            return _("⏰ {text}", text=r.text)
        when = describe_when(r.due_at, r.timezone, sent_at, i18n.current())
        if uncertain:
            return _("⏰ (possibly repeated: a restart interrupted it; was due {when}) {text}", when=when, text=r.text)
        return _("⏰ (late, was due {when}) {text}", when=when, text=r.text)

    async def _confirmer(self) -> None:
        """Commit the delivered occurrences in batches; empty the journal when nothing is in flight."""
        while True:
            await self._confirm_wanted.wait()
            self._confirm_wanted = anyio.Event()
            try:
                await self._commit_confirms()
            except MemoryStoreError as exc:
                log.warning("reminders: could not confirm deliveries (%s); retrying in 1 s", exc)
                await anyio.sleep(1)
                self._confirm_wanted.set()

    async def _commit_confirms(self) -> None:
        done, self._confirms = self._confirms, []
        if not done:
            return
        try:
            await self.store.confirm(done)
        except BaseException:
            self._confirms[:0] = done
            raise
        self._in_flight -= len(done)
        self._room.set()
        if self._in_flight == 0 and not self._confirms:
            self.journal.clear()
        if any(c.next_due is not None for c in done):
            self.wake()


# ---------------------------------------------------------------------- tools


def _zone_of(ctx: ToolContext) -> str:
    try:
        zone(ctx.timezone)
        return ctx.timezone
    except PluginError:
        return "UTC"


def _line(r: Reminder, now: datetime, locale: str = "en") -> str:
    rep = f" (repeats: {r.recurrence})" if r.recurrence else ""
    return f"#{r.id}: {describe_when(r.due_at, r.timezone, now, locale)}{rep} — {short(r.text, 200)}"


class _ReminderTool:
    """What the three reminder tools share: the running ``Reminders`` (None: offline, for listings;
    a call then fails with an error outcome)."""

    def __init__(self, reminders: Reminders | None) -> None:
        self._reminders = reminders

    @property
    def reminders(self) -> Reminders:
        if self._reminders is None:
            raise PluginError("reminders are not running on this bot")
        return self._reminders


class SetReminder(_ReminderTool):
    """``set_reminder``: ``{"text": …, "when": "tomorrow at 9" | ISO, "repeat": "every day at 9" | cron}``
    for the member in this chat."""

    plugin = PLUGIN
    spec = ToolSpec(
        name="set_reminder",
        description=("Set a reminder for the user in this chat: at the time given the bot sends the text here. "
                     "Times are read in the user's time zone."),
        parameters={
            "type": "object",
            "properties": {
                "text": {"type": "string", "description": "what to remind of, in the user's words (e.g. 'call Anna')"},
                "when": {"type": "string", "description": "when: natural language in the user's language ('tomorrow at 9', "
                                                          "'in 10 minutes', 'в пятницу в 10') or an ISO 8601 local time "
                                                          "(2026-07-03T10:00); may be omitted for a repeat"},
                "repeat": {"type": "string", "description": "only for a recurring reminder: 'daily', 'weekdays', 'every "
                                                            "monday at 9', or a cron expression ('0 9 * * 1-5')"},
            },
            "required": ["text"],
        },
    )

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        try:
            text = text_arg(args, "text", max_chars=MAX_TEXT)
            when = text_arg(args, "when", required=False, max_chars=200)
            repeat = text_arg(args, "repeat", required=False, max_chars=100)
            assert text is not None
            tz = _zone_of(ctx)
            if when is None and repeat is None:
                raise BadTime("give 'when' (or a 'repeat')")
            due, cron = await anyio.to_thread.run_sync(_plan, when, repeat, ctx.now, tz, ctx.language, abandon_on_cancel=True)
            r = await self.reminders.add(ctx.chat_id, ctx.user_id, text, due, tz=tz, recurrence=cron, thread_id=ctx.thread_id,
                                         language=ctx.language)
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        except MemoryStoreError as exc:
            return ToolOutcome(f"the reminder could not be stored: {exc}", error=True)
        local = r.due_at.astimezone(zone(tz))
        rep = f"; repeats ({cron}), next after that {next_occurrence(cron, r.due_at, tz).astimezone(zone(tz)):%Y-%m-%d %H:%M}" \
            if cron else ""
        return ToolOutcome(f"Reminder #{r.id} set for {local:%A %Y-%m-%d %H:%M} ({tz}){rep}: {short(r.text, 200)}")

    def notice(self, args: dict[str, Any]) -> str:
        when = args.get("when") if isinstance(args, dict) else None
        repeat = args.get("repeat") if isinstance(args, dict) else None
        if isinstance(repeat, str) and repeat.strip():
            return _("⏰ reminder set: {when}", when=short(repeat, 40))
        if isinstance(when, str) and when.strip():
            return _("⏰ reminder set for {when}", when=short(when, 40))
        return _("⏰ set a reminder")


def _plan(when: str | None, repeat: str | None, now: datetime, tz: str, language: str | None) -> tuple[datetime, str | None]:
    """``(first due UTC, cron | None)`` of a reminder's ``when`` and ``repeat`` (in a worker thread)."""
    due = parse_when(when, now=now, tz=tz, language=language) if when is not None else now
    cron = None
    if repeat is not None:
        cron = parse_repeat(repeat, first=due, tz=tz)
        if when is None:
            due = next_occurrence(cron, now, tz)
    return due, cron


class ListReminders(_ReminderTool):
    """``list_reminders``: the member's reminders still to come in this chat."""

    plugin = PLUGIN
    spec = ToolSpec(name="list_reminders", description="The user's reminders still to come in this chat (id, time, text).",
                    parameters={"type": "object", "properties": {}, "required": []})

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        try:
            mine = await self.reminders.pending(ctx.chat_id, ctx.user_id)
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        except MemoryStoreError as exc:
            return ToolOutcome(f"the reminders could not be read: {exc}", error=True)
        if not mine:
            return ToolOutcome("The user has no reminders waiting in this chat.")
        return ToolOutcome("\n".join(_line(r, ctx.now) for r in mine))

    def notice(self, args: dict[str, Any]) -> str:
        return _("⏰ looked at the reminders")


class CancelReminder(_ReminderTool):
    """``cancel_reminder``: ``{"id": 12}`` — one of the member's reminders in this chat."""

    plugin = PLUGIN
    spec = ToolSpec(name="cancel_reminder", description="Cancel one of the user's reminders in this chat by its id "
                                                        "(see list_reminders).",
                    parameters={"type": "object", "properties": {"id": {"type": "integer", "description": "the reminder's id"}},
                                "required": ["id"]})

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        rid = _int_arg(args.get("id") if isinstance(args, dict) else None)
        if rid is None:
            return ToolOutcome("argument 'id' must be a reminder's id (an integer)", error=True)
        try:
            r = await self.reminders.cancel(ctx.chat_id, rid, ctx.user_id)
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        except MemoryStoreError as exc:
            return ToolOutcome(f"the reminder could not be cancelled: {exc}", error=True)
        if r is None:
            return ToolOutcome(f"the user has no reminder #{rid} waiting in this chat", error=True)
        return ToolOutcome(f"Reminder #{rid} cancelled: {short(r.text, 200)}")

    def notice(self, args: dict[str, Any]) -> str:
        rid = _int_arg(args.get("id") if isinstance(args, dict) else None)
        return _("⏰ cancelled reminder #{id}", id=rid) if rid is not None else _("⏰ cancelled a reminder")


def _int_arg(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("#").isdigit():
        return int(value.strip().lstrip("#"))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# ---------------------------------------------------------------------- commands and buttons


def _of(ctx: ChatContext) -> Reminders | None:
    return getattr(ctx.plugins, "reminders", None) if ctx.plugins is not None else None


async def _timezone_of(ctx: ChatContext, user_id: int) -> str:
    return member_timezone(await ctx.user_settings(user_id), ctx.svc.config.settings.plugins.timezone)


async def cmd_remind(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/remind <when> <text>``: ``/remind 10m stretch``, ``/remind tomorrow 9:00 call Anna`` (no model)."""
    rem = _of(ctx)
    if rem is None:
        await reply(ctx, ev, _("Reminders are off on this bot."))
        return
    args = ev.args.strip()
    if not args:
        await reply(ctx, ev, _("Usage: `/remind <when> <text>`, e.g. `/remind 10m stretch` or `/remind tomorrow 9:00 call Anna`. "
                               "/reminders lists yours."))
        return
    tz = await _timezone_of(ctx, ev.sender.user_id)
    now = rem.clock()
    try:
        due, text = await anyio.to_thread.run_sync(lambda: split_when(args, now=now, tz=tz, language=i18n.current()),
                                                   abandon_on_cancel=True)
        r = await rem.add(ctx.chat_id, ev.sender.user_id, text, due, tz=tz, thread_id=ev.thread_id, language=i18n.current())
    except BadTime as exc:
        past = "future" in str(exc)
        far = "5 years" in str(exc)
        if past:
            msg = _("That time has already passed. Give a later one, e.g. `/remind 10m stretch`.")
        elif far:
            msg = _("That is more than 5 years ahead; reminders go at most 5 years ahead.")
        else:
            msg = _("I could not read a time at the start. Try `/remind 10m stretch`, `/remind 2h call back` or "
                    "`/remind tomorrow 9:00 call Anna`.")
        await reply(ctx, ev, msg)
        return
    except PluginError:
        await reply(ctx, ev, _("You have too many reminders waiting here; cancel some in /reminders first."))
        return
    await reply(ctx, ev, _("⏰ Reminder set for {when} ({zone}): {text}", when=describe_when(r.due_at, tz, now, i18n.current()),
                           zone=tz, text=short(r.text, 200)),
                [[Button(_("Cancel"), f"{BUTTON}:cancel:{r.id}")]])


async def cmd_reminders(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/reminders``: the member's reminders still to come here (a group's admins: everyone's), with
    a Cancel button each."""
    rem = _of(ctx)
    if rem is None:
        await reply(ctx, ev, _("Reminders are off on this bot."))
        return
    uid = ev.sender.user_id
    admin = is_group(ev.chat_type) and await ctx.outbox.is_admin(ctx.chat_id, uid)
    items = await rem.pending(ctx.chat_id, None if admin else uid)
    if not items:
        await reply(ctx, ev, _("No reminders waiting here. Set one with `/remind 10m stretch`, or ask me in words."))
        return
    tz = await _timezone_of(ctx, uid)
    now = rem.clock()
    shown = items[:20]
    lines = [ngettext("{n} reminder waiting:", "{n} reminders waiting:", len(items), n=i18n.number(len(items)))]
    for r in shown:
        rep = " 🔁" if r.recurrence else ""
        who = "" if r.user_id == uid else f" ({r.user_id})"
        lines.append(f"#{r.id} `{describe_when(r.due_at, tz, now, i18n.current())}`{rep}{who} — {short(r.text, 120)}")
    if len(items) > len(shown):
        lines.append(ngettext("… and {n} more.", "… and {n} more.", len(items) - len(shown), n=len(items) - len(shown)))
    rows = [[Button(_("Cancel #{id}", id=r.id), f"{BUTTON}:cancel:{r.id}")] for r in shown]
    await reply(ctx, ev, "\n".join(lines), rows)


async def press(ctx: ChatContext, ev: ButtonPress, rest: str) -> None:
    """A Cancel button (``rem:cancel:<id>``): the member who set it, or a group's admin, cancels it."""
    rem = _of(ctx)
    action, _sep, rid_text = rest.partition(":")
    if rem is None or action != "cancel" or not rid_text.isdigit():
        await ctx.outbox.answer_button(ev.query_id, _("This button has expired."))
        return
    uid = ev.sender.user_id
    admin = ctx.chat_id < 0 and await ctx.outbox.is_admin(ctx.chat_id, uid)
    r = await rem.cancel(ctx.chat_id, int(rid_text), None if admin else uid)
    if r is None:
        other = await rem.store.get(ctx.chat_id, int(rid_text))
        if other is not None and other.user_id != uid and other.state in ("pending", "claimed"):
            await ctx.outbox.answer_button(ev.query_id, _("Only the member who set it can cancel it."), alert=True)
        else:
            await ctx.outbox.answer_button(ev.query_id, _("That reminder is no longer waiting."))
        return
    await ctx.outbox.answer_button(ev.query_id, _("Cancelled"))
    await ctx.outbox.send(ctx.chat_id, _("Reminder #{id} cancelled: {text}", id=r.id, text=short(r.text, 200)),
                          thread_id=r.thread_id)


async def set_timezone(ctx: ChatContext, ev: CommandEvent, value: str) -> None:
    """``/settings timezone Europe/Berlin``: the member's own zone (every chat of theirs);
    ``/settings timezone default`` goes back to the bot's (``plugins.timezone``)."""
    uid = ev.sender.user_id
    settings = await ctx.user_settings(uid)
    default = ctx.svc.config.settings.plugins.timezone
    value = value.strip()
    if not value:
        await reply(ctx, ev, _("Your time zone: {zone}. Change it with `/settings timezone Europe/Berlin` (an IANA name).",
                               zone=member_timezone(settings, default)))
        return
    if value.lower() in ("default", "reset", "none"):
        await ctx.save_user_settings(uid, settings.with_(timezone=None))
        await reply(ctx, ev, _("Your time zone is the bot's default again: {zone}.", zone=default))
        return
    try:
        name = zone(value).key
    except PluginError:
        await reply(ctx, ev, _("Unknown time zone {zone!r}: use an IANA name such as Europe/Berlin, America/New_York or UTC.",
                               zone=short(value, 60)))
        return
    await ctx.save_user_settings(uid, settings.with_(timezone=name))
    now = datetime.now(UTC).astimezone(zone(name))
    await reply(ctx, ev, _("Your time zone is now {zone} (it is {time} there). Reminders and times use it.",
                           zone=name, time=now.strftime("%H:%M")))

