"""Reminders, stored durably: the ``reminders`` table and the delivery journal (issue #25).

``ReminderStore`` keeps the reminders of every chat in the dialogue store's database (DuckDB or
PostgreSQL) with one SQL text for both (``?`` placeholders, ``BIGINT`` microseconds since the epoch
for times, no dialect functions); each backend runs it through its ``sql_transaction``. Every write
is committed before the call returns (never through the write-behind queue): a reminder that was
confirmed to a member is on disk. The table is created with ``CREATE … IF NOT EXISTS`` at open, so
it needs no step in the dialogue store's schema versions.

A reminder is ``pending`` (waiting for ``due_at``), ``claimed`` (taken for delivery), ``sent`` or
``cancelled``; a recurring one (``recurrence``: a cron expression read in its ``timezone``) goes back
to ``pending`` with its next occurrence when one is delivered.

**Exactly once** (what the scheduler, ``features.plugins.reminders``, does with this module):

1. *claim*: due reminders become ``claimed`` in one commit (``claim_due``), so nothing else takes them;
2. *send* through the chat's actor, with two lines in the delivery journal around the send: ``B id
   due`` just before it and ``D id due`` just after it returned (``DeliveryJournal``; an ``os.write``
   each, no fsync: it survives a ``kill -9`` of the process, whose written pages the kernel keeps);
3. *confirm*: the delivered occurrences are marked ``sent`` (a recurring one: ``pending`` at its
   next occurrence, computed in its time zone) in one commit per batch (``confirm``); the journal
   is emptied once everything it holds is committed.

At the next start (``recover``), each reminder still ``claimed`` is resolved by the journal: ``D``
written → it was sent, only confirmed now (never sent twice); no ``B`` → it never left, so it is
sent now (marked late when it is); ``B`` without ``D`` → the process died in the middle of that very
send — whether Telegram got it cannot be known, so it is sent again *marked as possibly repeated*
(a reminder lost is worse than one seen twice with a note). That window is the time one send takes,
for the few reminders in flight at the moment of the crash. A power loss (not a process crash) may
also lose journal lines the kernel had not written: those reminders are treated the same way.
One scheduler runs per database (one bot process owns a Telegram token): every ``claimed`` row at
start is a previous run's.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import MemoryStoreError
from .schema import from_us, to_us
from .sql_domain import SqlDomainStore

__all__ = [
    "CANCELLED",
    "CLAIMED",
    "PENDING",
    "SENT",
    "Confirmation",
    "DeliveryJournal",
    "Reminder",
    "ReminderStore",
]

PENDING, CLAIMED, SENT, CANCELLED = "pending", "claimed", "sent", "cancelled"

_DDL = (
    "CREATE SEQUENCE IF NOT EXISTS reminder_ids START 1",
    """
    CREATE TABLE IF NOT EXISTS reminders (
        id          BIGINT PRIMARY KEY DEFAULT nextval('reminder_ids'),
        chat_id     BIGINT NOT NULL,
        thread_id   BIGINT,
        user_id     BIGINT NOT NULL,             -- who set it (and may cancel it)
        text        VARCHAR NOT NULL,
        due_us      BIGINT NOT NULL,             -- the next occurrence, microseconds since the epoch (UTC)
        recurrence  VARCHAR,                     -- a cron expression in timezone; NULL: once
        timezone    VARCHAR NOT NULL,            -- IANA name: the recurrence and the times shown
        language    VARCHAR,                     -- the member's interface language when it was set
        created_us  BIGINT NOT NULL,
        state       VARCHAR NOT NULL,            -- pending | claimed | sent | cancelled
        claimed_us  BIGINT,
        sent_us     BIGINT,                      -- the last delivery
        sent_count  BIGINT NOT NULL DEFAULT 0,
        late        BOOLEAN NOT NULL DEFAULT false  -- the last delivery was late
    )
    """,
)
_COLS = ("id, chat_id, thread_id, user_id, text, due_us, recurrence, timezone, language, created_us, state, "
         "sent_us, sent_count, late")


@dataclass(frozen=True, slots=True)
class Reminder:
    """One reminder. due_at: its (next) time, tz-aware UTC. recurrence: a cron expression read in
    ``timezone`` (None: once). language: the interface language to deliver it in (None: the chat's).
    id: 0 until stored. sent_at/sent_count/late: its last delivery."""

    chat_id: int
    user_id: int
    text: str
    due_at: datetime
    timezone: str = "UTC"
    recurrence: str | None = None
    thread_id: int | None = None
    language: str | None = None
    created_at: datetime | None = None
    id: int = 0
    state: str = PENDING
    sent_at: datetime | None = None
    sent_count: int = 0
    late: bool = False

    @property
    def key(self) -> tuple[int, int]:
        """``(id, due µs)``: one occurrence of the reminder (what the journal and ``confirm`` name)."""
        return self.id, to_us(self.due_at)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """A delivered occurrence: ``key`` (``Reminder.key``), when it was sent, whether late, and the
    recurring reminder's next time (None: it was the last)."""

    key: tuple[int, int]
    sent_at: datetime
    late: bool = False
    next_due: datetime | None = None


def _row(r: Sequence[Any]) -> Reminder:
    return Reminder(id=r[0], chat_id=r[1], thread_id=r[2], user_id=r[3], text=r[4], due_at=from_us(r[5]), recurrence=r[6],
                    timezone=r[7], language=r[8], created_at=from_us(r[9]), state=r[10],
                    sent_at=None if r[11] is None else from_us(r[11]), sent_count=int(r[12]), late=bool(r[13]))


class ReminderStore(SqlDomainStore):
    """The reminders of every chat, over an open dialogue store's database (``SqlBackend``).

    ``await ReminderStore(store).open()`` creates the table when missing. Every method commits
    before it returns; reads and writes of one chat's reminders always name the chat (a reminder of
    another chat is never seen). raises MemoryStoreError when the database fails.
    """

    DOMAIN = "reminders"
    DDL = _DDL  # the table and its id sequence

    async def add(self, reminder: Reminder, *, now: datetime) -> Reminder:
        """Store ``reminder`` (pending), committed; returns it with its id."""
        r = reminder
        rows = (await self._tx((
            "INSERT INTO reminders (chat_id, thread_id, user_id, text, due_us, recurrence, timezone, language, created_us, state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') RETURNING id",
            [r.chat_id, r.thread_id, r.user_id, r.text, to_us(r.due_at), r.recurrence, r.timezone, r.language, to_us(now)])))[0]
        return replace(r, id=int(rows[0][0]), created_at=now, state=PENDING)

    async def get(self, chat_id: int, reminder_id: int) -> Reminder | None:
        """Reminder ``reminder_id`` of chat ``chat_id`` (None when it is another chat's or unknown)."""
        rows = (await self._tx((f"SELECT {_COLS} FROM reminders WHERE chat_id = ? AND id = ?", [chat_id, reminder_id])))[0]
        return _row(rows[0]) if rows else None

    async def pending(self, chat_id: int, *, user_id: int | None = None) -> list[Reminder]:
        """The chat's reminders still to come (pending or being sent), soonest first; only
        ``user_id``'s when given."""
        sql = f"SELECT {_COLS} FROM reminders WHERE chat_id = ? AND state IN ('pending', 'claimed')"
        params: list[Any] = [chat_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        rows = (await self._tx((sql + " ORDER BY due_us, id", params)))[0]
        return [_row(r) for r in rows]

    async def count_pending(self, chat_id: int, user_id: int) -> int:
        """How many reminders ``user_id`` has waiting in ``chat_id``."""
        rows = (await self._tx(("SELECT count(*) FROM reminders WHERE chat_id = ? AND user_id = ?"
                                " AND state IN ('pending', 'claimed')", [chat_id, user_id])))[0]
        return int(rows[0][0])

    async def cancel(self, chat_id: int, reminder_id: int, *, user_id: int | None = None) -> Reminder | None:
        """Cancel reminder ``reminder_id`` of chat ``chat_id`` (only when ``user_id`` set it, if
        given); returns it, or None when there is no such reminder still to come."""
        sql = "UPDATE reminders SET state = 'cancelled' WHERE chat_id = ? AND id = ? AND state IN ('pending', 'claimed')"
        params: list[Any] = [chat_id, reminder_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        rows = (await self._tx((sql + f" RETURNING {_COLS}", params)))[0]
        return _row(rows[0]) if rows else None

    async def next_due(self) -> datetime | None:
        """The soonest time a pending reminder is due (any chat), None when none is."""
        rows = (await self._tx(("SELECT min(due_us) FROM reminders WHERE state = 'pending'", [])))[0]
        return from_us(rows[0][0]) if rows and rows[0][0] is not None else None

    async def claim_due(self, now: datetime, limit: int) -> list[Reminder]:
        """Claim up to ``limit`` pending reminders due by ``now`` (soonest first), committed: they are
        this caller's to deliver and ``confirm``."""
        rows = (await self._tx((
            "UPDATE reminders SET state = 'claimed', claimed_us = ? WHERE state = 'pending' AND id IN"
            " (SELECT id FROM reminders WHERE state = 'pending' AND due_us <= ? ORDER BY due_us, id LIMIT ?)"
            f" RETURNING {_COLS}", [to_us(now), to_us(now), limit])))[0]
        return sorted((_row(r) for r in rows), key=lambda r: (r.due_at, r.id))

    async def claimed(self) -> list[Reminder]:
        """The reminders claimed and not confirmed (at start: what a previous run left in flight)."""
        rows = (await self._tx((f"SELECT {_COLS} FROM reminders WHERE state = 'claimed' ORDER BY due_us, id", [])))[0]
        return [_row(r) for r in rows]

    async def confirm(self, done: Sequence[Confirmation]) -> int:
        """Mark delivered occurrences in one commit: a one-off reminder ``sent``, a recurring one
        ``pending`` at its ``next_due`` (``sent`` when there is none). An occurrence no longer claimed
        (cancelled meanwhile, or confirmed already) is left alone. Returns how many were marked."""
        if not done:
            return 0
        rows = (await self._tx((
            "UPDATE reminders SET state = CASE WHEN v.nxt IS NULL THEN 'sent' ELSE 'pending' END,"
            " due_us = coalesce(v.nxt, reminders.due_us), sent_us = v.sent, late = v.late,"
            " sent_count = reminders.sent_count + 1, claimed_us = NULL"
            " FROM (SELECT unnest(?::BIGINT[]) AS rid, unnest(?::BIGINT[]) AS due, unnest(?::BIGINT[]) AS nxt,"
            " unnest(?::BIGINT[]) AS sent, unnest(?::BOOLEAN[]) AS late) AS v"
            " WHERE reminders.id = v.rid AND reminders.due_us = v.due AND reminders.state = 'claimed'"
            " RETURNING reminders.id",
            [[c.key[0] for c in done], [c.key[1] for c in done],
             [None if c.next_due is None else to_us(c.next_due) for c in done],
             [to_us(c.sent_at) for c in done], [c.late for c in done]])))[0]
        return len(rows)

    async def release(self, keys: Sequence[tuple[int, int]]) -> int:
        """Put claimed occurrences back to pending (they were not sent: the chat could not be reached
        now, e.g. shutting down); returns how many."""
        if not keys:
            return 0
        rows = (await self._tx((
            "UPDATE reminders SET state = 'pending', claimed_us = NULL"
            " FROM (SELECT unnest(?::BIGINT[]) AS rid, unnest(?::BIGINT[]) AS due) AS v"
            " WHERE reminders.id = v.rid AND reminders.due_us = v.due AND reminders.state = 'claimed'"
            " RETURNING reminders.id", [[k[0] for k in keys], [k[1] for k in keys]])))[0]
        return len(rows)

    async def stats(self) -> dict[str, int]:
        """Reminders by state (every chat)."""
        rows = (await self._tx(("SELECT state, count(*) FROM reminders GROUP BY state", [])))[0]
        return {str(s): int(n) for s, n in rows}


class DeliveryJournal:
    """The delivery journal (see the module docstring): ``B id due`` before a send, ``D id due``
    after it, appended with one ``os.write`` each (no fsync: a process crash keeps what was written).

    ``read()`` → ``(begun, done)`` sets of keys; ``clear()`` empties it (when everything it holds is
    committed). Used from one thread (the event loop's); the file is opened in append mode.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.lines = 0  # written since the last clear

    def open(self) -> DeliveryJournal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
        """``(begun, done)``: the occurrences whose send began, and those whose send returned. A
        torn last line (the crash cut it) is ignored."""
        begun: set[tuple[int, int]] = set()
        done: set[tuple[int, int]] = set()
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text("ascii", errors="replace").splitlines():
                parts = line.split()
                if len(parts) != 3 or parts[0] not in ("B", "D") or not all(p.lstrip("-").isdigit() for p in parts[1:]):
                    continue
                (begun if parts[0] == "B" else done).add((int(parts[1]), int(parts[2])))
        return begun, done

    def _write(self, line: str) -> None:
        if self._fd is None:
            raise MemoryStoreError("the reminders' delivery journal is not open")
        os.write(self._fd, line.encode("ascii"))
        self.lines += 1

    def begin(self, key: tuple[int, int]) -> None:
        self._write(f"B {key[0]} {key[1]}\n")

    def done(self, key: tuple[int, int]) -> None:
        self._write(f"D {key[0]} {key[1]}\n")

    def clear(self) -> None:
        """Empty the journal (everything in it is committed)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path.write_bytes(b"")
        self.lines = 0


def utc(value: datetime) -> datetime:
    """``value`` as tz-aware UTC (a naive one is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
