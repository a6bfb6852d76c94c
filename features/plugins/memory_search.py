"""The ``memory_search`` tool: the model searches this chat's memory itself — several queries, by
speaker, by date range — with the same boundary as recall: the chat is always the one the call is
for (``ToolContext.chat_id``), never an argument (an argument named ``chat_id`` is ignored).

Two ways of searching:

- **queries** (1..``max_queries``, run concurrently through ``Memory.recall``, the same hybrid recall
  that fills the prompt's memories): hits are merged by message id keeping the best score, the
  ``speaker`` / ``since`` / ``until`` filters applied (recall asks for ``WIDEN`` × k hits then, so a
  filter does not empty the result by accident), the best ``k`` kept;
- **no query, only filters**: the chat's messages in the window, read from the dialogue store
  (``store.messages.recent`` / ``around``; the window's first message found by a binary search on
  message ids, which follow time): with ``since``, the first ``k`` from it; else the last ``k``
  before ``until`` (or now).

Either way only members' messages (and document parts) come back, never the bot's own replies, as in
recall. The result is plain text for the model, one memory per line, **oldest first** (a
conversation reads in order; the ranking already chose which ``k``)::

    3 memories of this chat for 'backup' (oldest first; times in Europe/Berlin):
    [2026-03-01 10:00] Anna: Our nightly backup runs with restic to the NAS in the basement.
    [2026-03-21 00:30] Ben: the backup disk is almost full

Whitespace in names and texts is folded to single spaces (so a stored text cannot forge a line) and
texts are cut at ``MAX_TEXT_CHARS``. The tool-calling loop frames the whole outcome as quoted data
(``providers.tools.frame_tool_output``): a stored "ignore previous instructions" stays a quote.

Dates: ``since`` / ``until`` are ISO 8601 dates (``2026-03-01``; also ``2026-03`` and ``2026``) or
datetimes (``2026-03-01T18:30``), read in the member's zone (``ToolContext.timezone``) unless they
carry an offset; ``since`` is the start of its date, ``until`` the end of its date (inclusive); a
datetime is the instant itself. Output times are in the member's zone.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import anyio

from features.plugins.base import ToolContext, ToolOutcome, ToolSpec, short, text_arg
from features.plugins.clock import zone
from features.plugins.errors import BadArguments, PluginError
from i18n import _, ngettext
from memory.errors import MemoryStoreError
from memory.types import ROLE_USER, MemoryHit, StoredMessage
from providers.errors import ProviderError

if TYPE_CHECKING:
    from memory.service import Memory
    from memory.store import DialogueStore

__all__ = ["MAX_K", "MAX_TEXT_CHARS", "MemorySearch", "SearchArgs", "parse_args"]

MAX_K = 20  # the most memories one call returns
MAX_QUERY_CHARS = 500
MAX_TEXT_CHARS = 600  # a memory's text is cut here ("…")
WIDEN = 4  # with filters, recall asks for WIDEN × k hits before filtering
SCAN_LIMIT = 5000  # listing (no query) with a speaker reads at most this many messages
PAGE = 200  # messages per store read when listing

_DAY_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH_RE = re.compile(r"\d{4}-\d{2}")
_YEAR_RE = re.compile(r"\d{4}")
_MIN_ID = -(1 << 63)


@dataclass(frozen=True, slots=True)
class SearchArgs:
    """A call's arguments, checked. start: inclusive, end: exclusive (tz-aware UTC, None = open);
    since / until: as the model wrote them (for the header)."""

    queries: tuple[str, ...]
    speaker: str | None
    start: datetime | None
    end: datetime | None
    since: str | None
    until: str | None
    k: int

    @property
    def filtered(self) -> bool:
        return self.speaker is not None or self.since is not None or self.until is not None


def _tz(name: str) -> tzinfo:
    try:
        return zone(name)
    except PluginError:
        return UTC


def _name_key(name: str) -> str:
    return " ".join(name.split()).casefold()


def _bound(args: dict[str, Any], name: str, tz: tzinfo, *, end: bool) -> tuple[datetime | None, str | None]:
    """(``since`` as the inclusive start / ``until`` as the exclusive end, in UTC; the text given).
    A valid date whose bound falls outside what a datetime holds (``until 9999-12-31``,
    ``since 0001-01-01``) leaves that side of the window open (None)."""
    text = text_arg(args, name, required=False, max_chars=40)
    if text is None:
        return None, None
    try:
        if _DAY_RE.fullmatch(text):
            when = datetime.combine(date.fromisoformat(text), time(), tzinfo=tz)
            step = "day"
        elif _MONTH_RE.fullmatch(text) or _YEAR_RE.fullmatch(text):
            when = datetime(int(text[:4]), int(text[5:7]) if len(text) > 4 else 1, 1, tzinfo=tz)
            step = "month" if len(text) > 4 else "year"
        else:
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=tz)
            step = "instant"
    except ValueError:
        raise BadArguments(f"argument {name!r} is not an ISO 8601 date or datetime: {short(text, 40)!r} "
                           "(e.g. 2026-03-01 or 2026-03-01T18:30)") from None
    try:
        if end and step == "day":
            when = datetime.combine(when.date() + timedelta(days=1), time(), tzinfo=tz)
        elif end and step in ("month", "year"):  # the first day after the month or year
            year, month = (when.year, when.month + 1) if step == "month" else (when.year + 1, 1)
            when = datetime(year + (month > 12), 1 if month > 12 else month, 1, tzinfo=tz)
        elif end:
            when += timedelta(microseconds=1)  # until an instant: that instant included
        return when.astimezone(UTC), text
    except (ValueError, OverflowError):  # past the end (or before the start) of time: no bound
        return None, text


def _k(args: dict[str, Any], default: int) -> int:
    value = args.get("k")
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadArguments(f"argument 'k' must be a whole number from 1 to {MAX_K}, not {short(repr(value), 30)}")
    if not 1 <= value <= MAX_K:
        raise BadArguments(f"argument 'k' must be from 1 to {MAX_K}, not {short(str(value), 30)}")
    return value


def _queries(args: dict[str, Any], max_queries: int) -> tuple[str, ...]:
    items: list[Any] = []
    if "query" in args and args["query"] is not None:
        items.append(args["query"])
    raw = args.get("queries")
    if isinstance(raw, str):  # one query given where a list was asked for
        items.append(raw)
    elif isinstance(raw, list):
        if not raw and not items and "queries" in args:
            raise BadArguments("argument 'queries' is empty: give 1 to "
                               f"{max_queries} queries, or only speaker / since / until to list messages")
        items.extend(raw)
    elif raw is not None:
        raise BadArguments(f"argument 'queries' must be a list of strings, not {type(raw).__name__}")
    out: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise BadArguments(f"every query must be a string, not {type(item).__name__}")
        query = " ".join(item.split())
        if not query:
            raise BadArguments("a query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise BadArguments(f"a query is longer than {MAX_QUERY_CHARS} characters")
        if query.casefold() not in seen:
            seen.add(query.casefold())
            out.append(query)
    if len(out) > max_queries:
        raise BadArguments(f"at most {max_queries} queries per call, not {len(out)}")
    return tuple(out)


def parse_args(args: dict[str, Any], *, timezone: str, default_k: int, max_queries: int) -> SearchArgs:
    """The checked arguments of a call. Raises ``BadArguments`` saying what is wrong, in English.
    Arguments other than ``queries``, ``query``, ``speaker``, ``since``, ``until`` and ``k`` are ignored."""
    if not isinstance(args, dict):
        raise BadArguments(f"the arguments must be an object, not {type(args).__name__}")
    queries = _queries(args, max_queries)
    speaker = text_arg(args, "speaker", required=False, max_chars=200)
    tz = _tz(timezone)
    start, since = _bound(args, "since", tz, end=False)
    end, until = _bound(args, "until", tz, end=True)
    if start is not None and end is not None and start >= end:
        raise BadArguments(f"'since' ({since}) is after 'until' ({until})")
    k = _k(args, default_k)
    found = SearchArgs(queries, " ".join(speaker.split()) if speaker else None, start, end, since, until, k)
    if not queries and not found.filtered:
        raise BadArguments("give 'queries' (what to look for), or 'speaker', 'since' or 'until' to list messages")
    return found


# ---------------------------------------------------------------- the search


def _hit_ok(hit: MemoryHit | StoredMessage, chat_id: int, a: SearchArgs) -> bool:
    if hit.chat_id != chat_id:  # never another chat's, whatever a layer below returned
        return False
    if a.speaker is not None and _name_key(hit.user_name or "") != _name_key(a.speaker):
        return False
    when = hit.date if hit.date.tzinfo is not None else hit.date.replace(tzinfo=UTC)
    if a.start is not None and when < a.start:
        return False
    return a.end is None or when < a.end


def _listable(m: StoredMessage) -> bool:
    return m.role == ROLE_USER and bool(m.text.strip())


async def _first_at(store: DialogueStore, chat_id: int, when: datetime) -> int | None:
    """The smallest message id of the chat whose message is dated ``when`` or later (ids follow
    time), by a binary search on ids; None when every message is older."""
    newest = await store.messages.recent(chat_id, 1)
    if not newest or newest[0].date < when:
        return None
    lo, hi = _MIN_ID, newest[0].message_id  # every id below lo is older; hi is dated `when` or later
    while lo < hi:
        mid = (lo + hi) // 2
        below = await store.messages.recent(chat_id, 1, before_id=mid + 1)  # the newest id <= mid
        if not below or below[0].date < when:
            lo = mid + 1
        else:
            hi = below[0].message_id
    return hi


async def _listing(store: DialogueStore, chat_id: int, a: SearchArgs) -> tuple[list[StoredMessage], bool]:
    """The window's member messages (see the module docstring), oldest first, and whether there are
    (probably) more."""
    out: list[StoredMessage] = []
    scanned = 0
    if a.start is not None:  # forward from the window's first message
        first = await _first_at(store, chat_id, a.start)
        if first is None:
            return [], False
        page = (await store.messages.around(chat_id, [first], 0, PAGE - 1)).get(first, [])
        while page:
            for m in page:
                scanned += 1
                if a.end is not None and m.date >= a.end:
                    return out, False
                if _listable(m) and _hit_ok(m, chat_id, a):
                    out.append(m)
                    if len(out) >= a.k:
                        return out, True
            if len(page) < PAGE or scanned >= SCAN_LIMIT:
                return out, scanned >= SCAN_LIMIT
            last = page[-1].message_id
            page = (await store.messages.around(chat_id, [last], 0, PAGE)).get(last, [])[1:]
        return out, False
    before = None if a.end is None else await _first_at(store, chat_id, a.end)
    while True:  # backward from the window's end
        page = await store.messages.recent(chat_id, PAGE, before_id=before)
        for m in reversed(page):
            scanned += 1
            if _listable(m) and _hit_ok(m, chat_id, a):
                out.append(m)
                if len(out) >= a.k:
                    return out[::-1], True
        if len(page) < PAGE or scanned >= SCAN_LIMIT:
            return out[::-1], scanned >= SCAN_LIMIT
        before = page[0].message_id


async def _recall(memory: Memory, chat_id: int, a: SearchArgs) -> list[MemoryHit]:
    """The best ``a.k`` hits of the queries (merged by id, best score kept, filters applied), best first."""
    want = a.k * WIDEN if a.filtered else a.k
    best: dict[int, MemoryHit] = {}

    failures: list[Exception] = []

    async def one(query: str) -> None:
        try:
            hits = (await memory.recall(chat_id, query, want)).hits
        except (MemoryStoreError, ProviderError) as exc:  # raised below, not as an ExceptionGroup
            failures.append(exc)
            return
        for hit in hits:
            if _hit_ok(hit, chat_id, a):
                kept = best.get(hit.message_id)
                if kept is None or hit.score > kept.score:
                    best[hit.message_id] = hit

    async with anyio.create_task_group() as tg:
        for query in a.queries:
            tg.start_soon(one, query)
    if failures:
        raise failures[0]
    return sorted(best.values(), key=lambda h: (-h.score, h.date, h.message_id))[: a.k]


# ---------------------------------------------------------------- the text for the model


def _line(item: MemoryHit | StoredMessage, tz: tzinfo) -> str:
    when = item.date if item.date.tzinfo is not None else item.date.replace(tzinfo=UTC)
    name = short(item.user_name or "?", 60)
    citation = getattr(item, "citation", None)
    if citation:
        name = f"{name} ({short(citation, 80)})"
    return f"[{when.astimezone(tz):%Y-%m-%d %H:%M}] {name}: {short(item.text or '', MAX_TEXT_CHARS)}"


def _what(a: SearchArgs) -> str:
    parts = []
    if a.queries:
        parts.append("for " + ", ".join(repr(short(q, 80)) for q in a.queries))
    if a.speaker:
        parts.append(f"from {short(a.speaker, 60)!r}")
    if a.since:
        parts.append(f"since {a.since}")
    if a.until:
        parts.append(f"until {a.until}")
    return " ".join(parts)


def _zone_name(ctx: ToolContext) -> str:
    return ctx.timezone if _tz(ctx.timezone) is not UTC else "UTC"


def render(items: Sequence[MemoryHit | StoredMessage], a: SearchArgs, ctx: ToolContext, *, more: bool = False,
           speakers: frozenset[str] | None = None) -> str:
    """The outcome text: a header line, then one line per memory, oldest first."""
    tz = _tz(ctx.timezone)
    if not items:
        text = f"no memories found in this chat {_what(a)}."
        if a.speaker and speakers is not None and _name_key(a.speaker) not in {_name_key(s) for s in speakers}:
            names = sorted(speakers, key=str.casefold)
            shown = ", ".join(short(n, 40) for n in names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
            text += f" No one named {short(a.speaker, 60)!r} is in this chat's memory" + (f"; names in it: {shown}." if shown else ".")
        return text
    ordered = sorted(items, key=lambda m: (m.date if m.date.tzinfo else m.date.replace(tzinfo=UTC), m.message_id))
    n = len(ordered)
    if a.queries:
        head = f"{n} {'memory' if n == 1 else 'memories'} of this chat {_what(a)}"
    else:
        head = f"{n} {'message' if n == 1 else 'messages'} of this chat {_what(a)}".rstrip()
    head += f" (oldest first; times in {_zone_name(ctx)})"
    if more:
        head += ("; there may be more: narrow the window or move 'since' past the last one" if a.start is not None
                 else "; there may be more: move 'until' before the first one to read earlier ones")
    return head + ":\n" + "\n".join(_line(m, tz) for m in ordered)


class MemorySearch:
    """The ``memory_search`` tool (plugin ``memory_search``) over ``memory``, for the chat of each
    call's ``ToolContext`` only. k: memories returned when the model gives no ``k``;
    max_queries: queries per call. See the module docstring."""

    plugin = "memory_search"

    def __init__(self, memory: Memory, *, k: int = 8, max_queries: int = 4) -> None:
        if not 1 <= k <= MAX_K or max_queries < 1:
            raise ValueError(f"k must be 1..{MAX_K} and max_queries ≥ 1")
        self.memory = memory
        self.k = k
        self.max_queries = max_queries
        self.spec = ToolSpec(
            name="memory_search",
            description=(
                "Search this chat's memory: the messages members sent here before (and documents shared here), "
                "beyond what is in the conversation and the recalled memories. Give one or several queries (other "
                "wordings, names, topics), optionally only from one speaker and/or within a date range; or no query "
                "and only speaker / since / until to list the messages of that window. Returns one line per message: "
                "[date time] name: text, oldest first, times in the user's time zone."),
            parameters={
                "type": "object",
                "properties": {
                    "queries": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": max_queries,
                                "description": f"1 to {max_queries} search queries (words, a question, a name); "
                                               "several wordings find more"},
                    "speaker": {"type": "string",
                                "description": "only messages from this member: the name as it appears in the chat"},
                    "since": {"type": "string",
                              "description": "only messages from this date on: ISO date 2026-03-01 or datetime "
                                             "2026-03-01T18:00, in the user's time zone"},
                    "until": {"type": "string",
                              "description": "only messages up to this date (the whole day included) or datetime, "
                                             "ISO, in the user's time zone"},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K,
                          "description": f"how many messages to return (default {k})"},
                },
                "required": [],
            },
        )

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """See the class. The chat is ``ctx.chat_id``, whatever ``args`` hold."""
        chat_id = int(ctx.chat_id)
        try:
            a = parse_args(args, timezone=ctx.timezone, default_k=self.k, max_queries=self.max_queries)
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        try:
            more = False
            items: list[MemoryHit] | list[StoredMessage]
            if a.queries:
                items = await _recall(self.memory, chat_id, a)
            else:
                items, more = await _listing(self.memory.store, chat_id, a)
            speakers = None
            if not items and a.speaker:
                speakers = await self.memory.vectors.speakers(chat_id)
        except (MemoryStoreError, ProviderError) as exc:
            return ToolOutcome(f"the memory search failed: {short(str(exc), 200)}", error=True)
        return ToolOutcome(render(items, a, ctx, more=more, speakers=speakers))

    def notice(self, args: dict[str, Any]) -> str:
        queries: list[str] = []
        if isinstance(args, dict):
            raw = args.get("queries")
            candidates = [args.get("query"), *(raw if isinstance(raw, list) else [raw])]
            queries = [" ".join(q.split()) for q in candidates if isinstance(q, str) and q.strip()]
        if not queries:
            return _("🔎 looked through this chat's memory")
        first = short(queries[0], 60)
        if len(queries) == 1:
            return _("🔎 searched this chat's memory for '{query}'", query=first)
        n = len(queries) - 1
        return ngettext("🔎 searched this chat's memory for '{query}' and {n} more query",
                        "🔎 searched this chat's memory for '{query}' and {n} more queries", n, query=first, n=n)
