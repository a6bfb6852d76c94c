"""When a reminder is due: times said in words ("tomorrow at 9", «в пятницу в 10», "in 10 minutes"),
ISO 8601, the compact ``10m``/``2h``/``1d`` of ``/remind``, recurrences (cron, or "every day at 9"),
and how a time is shown to a member ("Thu 10:00").

Every time is read in the member's IANA time zone and returned as tz-aware UTC. Durations ("in 10
minutes", ``2h``) are added to the UTC now, so they are right across a DST change; a wall-clock time
("tomorrow at 9") is 9:00 on that day's offset (dateparser, English and Russian and the member's
language, future dates preferred); a date without a time means 09:00. A recurrence is a cron
expression read in the reminder's zone (croniter on tz-aware times: "0 9 * * *" is 9:00 in summer and
in winter). A time in the past, beyond ``MAX_AHEAD``, or a recurrence more often than
``MIN_INTERVAL`` is refused with ``BadTime`` (a message for the model, in English).

dateparser loads its language data on first use (~0.2 s): call these in a worker thread.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from babel.dates import format_skeleton, format_time
from croniter import croniter

from features.plugins.clock import zone
from features.plugins.errors import PluginError

__all__ = [
    "MAX_AHEAD",
    "MIN_INTERVAL",
    "BadTime",
    "describe_when",
    "next_occurrence",
    "parse_duration",
    "parse_repeat",
    "parse_when",
    "split_when",
]

MAX_AHEAD = timedelta(days=5 * 366)  # "absurd" beyond this
MIN_INTERVAL = timedelta(minutes=15)  # a recurrence more often than this is refused
DEFAULT_HOUR = 9  # a date without a time
LANGUAGES = ("en", "ru")  # always tried, with the member's own


class BadTime(PluginError):
    """A time that cannot be read, is past, too far ahead, or a recurrence that cannot be used."""


_UNITS = {  # a word (or its start) → timedelta of one
    "s": timedelta(seconds=1), "sec": timedelta(seconds=1), "second": timedelta(seconds=1), "с": timedelta(seconds=1),
    "сек": timedelta(seconds=1), "секунд": timedelta(seconds=1),
    "m": timedelta(minutes=1), "min": timedelta(minutes=1), "minute": timedelta(minutes=1), "м": timedelta(minutes=1),
    "мин": timedelta(minutes=1), "минут": timedelta(minutes=1), "минуту": timedelta(minutes=1), "минуты": timedelta(minutes=1),
    "h": timedelta(hours=1), "hr": timedelta(hours=1), "hour": timedelta(hours=1), "ч": timedelta(hours=1),
    "час": timedelta(hours=1), "часа": timedelta(hours=1), "часов": timedelta(hours=1),
    "d": timedelta(days=1), "day": timedelta(days=1), "д": timedelta(days=1), "дн": timedelta(days=1),
    "день": timedelta(days=1), "дня": timedelta(days=1), "дней": timedelta(days=1), "сутки": timedelta(days=1),
    "w": timedelta(weeks=1), "week": timedelta(weeks=1), "нед": timedelta(weeks=1), "неделю": timedelta(weeks=1),
    "недели": timedelta(weeks=1), "недель": timedelta(weeks=1),
}
_COMPACT = re.compile(r"^(\d{1,6})\s*([a-zа-яё]+)$")
_RELATIVE = re.compile(r"^(?:(?:in|через)\s+(?:(\d{1,6}|an?|one|один|одну|одни)\s+)?|(\d{1,6})\s+)([a-zа-яё]+?)s?$")
_HALF = re.compile(r"^(?:in\s+half\s+an\s+hour|через\s+полчаса)$")
_CLOCK = re.compile(  # "at 9", "в 10", "at 9:30pm", "9 утра", "к 18.30" → a 24-hour HH:MM
    r"(?:\b(?:at|в|во|к)\s+)?\b(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm|a\.m\.|p\.m\.|утра|дня|вечера|ночи)?"
    r"(?:\s*(?:час(?:а|ов)?|o'clock|h)\b)?(?![\d:./-])",
    re.IGNORECASE)
_HAS_CLOCK = re.compile(r"\b\d{1,2}:\d{2}\b")


def _unit(word: str) -> timedelta | None:
    word = word.lower().rstrip(".")
    if word in _UNITS:
        return _UNITS[word]
    if len(word) > 2 and word.endswith("s") and word[:-1] in _UNITS:  # minutes, hours
        return _UNITS[word[:-1]]
    return None


def parse_duration(token: str) -> timedelta | None:
    """``10m``, ``2h``, ``1d``, ``1w``, ``90s``, ``15мин``, ``2ч`` → the duration; None when ``token``
    is not one."""
    m = _COMPACT.match(token.strip().lower())
    if not m:
        return None
    unit = _unit(m.group(2))
    return None if unit is None else unit * int(m.group(1))


def _relative(text: str) -> timedelta | None:
    """"in 10 minutes", "in an hour", «через 2 часа», «через час», "in half an hour" → the duration."""
    t = " ".join(text.lower().split())
    if _HALF.match(t):
        return timedelta(minutes=30)
    m = _RELATIVE.match(t)
    if not m:
        return None
    unit = _unit(m.group(3)) or _unit(m.group(3) + "s")
    if unit is None:
        return None
    n = m.group(1) or m.group(2)
    return unit * (int(n) if n and n.isdigit() else 1)


def _clock_words(text: str) -> str:
    """Rewrite clock times dateparser misreads ("at 9", «в 10», "9pm", «9 утра») as ``HH:MM``."""
    def sub(m: re.Match[str]) -> str:
        whole = m.group(0)
        hour, minute, part = int(m.group(1)), int(m.group(2) or 0), (m.group(3) or "").lower().replace(".", "")
        explicit = m.group(2) is not None or part or re.match(r"^(?:at|в|во|к)\s", whole, re.IGNORECASE) \
            or re.search(r"(?:час|o'clock|h)$", whole.strip(), re.IGNORECASE)
        if not explicit or hour > 24 or minute > 59:
            return whole
        if part in ("pm", "дня", "вечера") and hour < 12:
            hour += 12
        elif part in ("am", "ночи", "утра") and hour == 12:
            hour = 0
        return f" {hour % 24:02d}:{minute:02d} "
    return " ".join(_CLOCK.sub(sub, text).split())


def _dateparser_languages(language: str | None) -> list[str]:
    langs = list(LANGUAGES)
    if language and language not in langs:
        from dateparser.languages import default_loader  # (slow import: only where times are parsed)

        if language in default_loader.get_locale_map():
            langs.append(language)
    return langs


def parse_when(text: str, *, now: datetime, tz: str, language: str | None = None) -> datetime:
    """The UTC time ``text`` names for a member in zone ``tz`` at ``now`` (tz-aware): ISO 8601 (a
    naive one in ``tz``), a duration ("in 10 minutes", ``10m``), or words ("tomorrow at 9", «в пятницу
    в 10»). raises BadTime when it cannot be read, is not after ``now``, or is beyond ``MAX_AHEAD``."""
    text = " ".join(text.strip().split())
    if not text:
        raise BadTime("no time given")
    if len(text) > 200:
        raise BadTime("the time is longer than 200 characters")
    where = zone(tz)
    now = now.astimezone(UTC)
    due: datetime | None = None
    try:
        iso = datetime.fromisoformat(text)
    except ValueError:
        iso = None
    if iso is not None:
        due = (iso.replace(tzinfo=where) if iso.tzinfo is None else iso).astimezone(UTC)
    elif (span := parse_duration(text) or _relative(text)) is not None:
        due = now + span
    elif text.isdigit():
        raise BadTime(f"{text!r} alone is not a time: say e.g. '9:00', 'tomorrow at 9' or 'in {text} minutes'")
    else:
        due = _words(text, now, where, language)
    return check_due(due, now, tz, said=text)


def _words(text: str, now: datetime, where: ZoneInfo, language: str | None) -> datetime:
    import dateparser  # (slow import: only where times are parsed)

    said = _clock_words(text)
    local_now = now.astimezone(where).replace(tzinfo=None)
    settings = {"PREFER_DATES_FROM": "future", "RELATIVE_BASE": local_now, "TIMEZONE": where.key,
                "RETURN_AS_TIMEZONE_AWARE": False, "PREFER_DAY_OF_MONTH": "first"}
    try:
        found = dateparser.parse(said, languages=_dateparser_languages(language), settings=settings)  # type: ignore[arg-type]
    except (ValueError, OverflowError, TypeError):
        found = None
    if found is None:
        raise BadTime(f"cannot read a time in {text!r}: say e.g. 'tomorrow at 9', 'in 10 minutes', 'friday 18:30' "
                      "or an ISO time (2026-07-03T10:00)")
    if found.tzinfo is not None:
        found = found.replace(tzinfo=None)
    if found.time() == datetime.min.time() and not _HAS_CLOCK.search(said):
        found = found.replace(hour=DEFAULT_HOUR)  # "monday": 09:00, not midnight
    return _local(found, where).astimezone(UTC)


def _local(naive: datetime, where: ZoneInfo) -> datetime:
    """The wall-clock time ``naive`` in ``where``: a time a DST change skips moves past the gap."""
    aware = naive.replace(tzinfo=where)
    back = aware.astimezone(UTC).astimezone(where).replace(tzinfo=None)
    if back != naive:  # in the spring-forward gap: e.g. 02:30 → 03:30
        aware = (aware.astimezone(UTC)).astimezone(where)
    return aware


def check_due(due: datetime, now: datetime, tz: str, *, said: str = "") -> datetime:
    """``due`` (UTC) when it is after ``now`` and within ``MAX_AHEAD``; raises BadTime otherwise."""
    if due <= now:
        shown = due.astimezone(zone(tz)).strftime("%Y-%m-%d %H:%M")
        raise BadTime(f"{said!r} is {shown} ({tz}), which is not in the future (now: "
                      f"{now.astimezone(zone(tz)).strftime('%Y-%m-%d %H:%M')}); give a later time")
    if due - now > MAX_AHEAD:
        raise BadTime(f"{said!r} is more than 5 years ahead; reminders go at most 5 years ahead")
    return due


def split_when(args: str, *, now: datetime, tz: str, language: str | None = None) -> tuple[datetime, str]:
    """``/remind``'s arguments → ``(due UTC, text)``: the longest leading words that read as a time
    (``10m``, "tomorrow 9:00", «завтра в 9», an ISO time), then the text. raises BadTime when no
    leading words read as a time in the future, or no text is left."""
    words = args.split()
    if len(words) < 2:
        raise BadTime("give a time and a text")
    last: BadTime | None = None
    for n in range(min(6, len(words) - 1), 0, -1):
        head = " ".join(words[:n])
        try:
            return parse_when(head, now=now, tz=tz, language=language), " ".join(words[n:])
        except BadTime as exc:
            if "future" in str(exc) or "5 years" in str(exc):
                last = last or exc  # a time, but a bad one: say so unless a shorter head is fine
    raise last or BadTime(f"cannot read a time at the start of {args[:80]!r}")


# ---------------------------------------------------------------------- recurrences

_WEEKDAYS = {
    "monday": 1, "mon": 1, "понедельник": 1, "понедельникам": 1, "tuesday": 2, "tue": 2, "вторник": 2, "вторникам": 2,
    "wednesday": 3, "wed": 3, "среду": 3, "среда": 3, "средам": 3, "thursday": 4, "thu": 4, "четверг": 4, "четвергам": 4,
    "friday": 5, "fri": 5, "пятницу": 5, "пятница": 5, "пятницам": 5, "saturday": 6, "sat": 6, "субботу": 6, "суббота": 6,
    "субботам": 6, "sunday": 0, "sun": 0, "воскресенье": 0, "воскресеньям": 0,
}
_EVERY = re.compile(r"^(?:every|each|каждый|каждую|каждое|каждые|по)\s+(.+)$")


def _cron_valid(expr: str) -> bool:
    return len(expr.split()) == 5 and bool(croniter.is_valid(expr))


def parse_repeat(text: str, *, first: datetime, tz: str) -> str:
    """A recurrence → a cron expression in zone ``tz``: a cron expression as it is ("0 9 * * 1-5"),
    or words: hourly, daily, weekdays, weekly, monthly, yearly, "every day at 9", "every monday",
    «каждый день в 9», «по пятницам в 18:00», «ежедневно». Without a clock time in the words the
    first occurrence's ``first`` (UTC) gives it. raises BadTime when it is neither, or recurs more
    often than ``MIN_INTERVAL``."""
    said = " ".join(text.strip().lower().split())
    if not said:
        raise BadTime("empty repeat")
    if _cron_valid(said):
        expr = said
    else:
        local = first.astimezone(zone(tz))
        hour, minute = local.hour, local.minute
        words = _clock_words(said)
        clock = _HAS_CLOCK.search(words)
        if clock:
            hour, minute = (int(x) for x in clock.group(0).split(":"))
            words = " ".join(words.replace(clock.group(0), " ").split())
        words = re.sub(r"\b(?:at|в|во)$", "", words).strip()
        m = _EVERY.match(words)
        what = m.group(1) if m else words
        if what in ("hourly", "hour", "ежечасно", "час"):
            expr = f"{minute} * * * *"
        elif what in ("daily", "day", "ежедневно", "день", "every day", "сутки"):
            expr = f"{minute} {hour} * * *"
        elif what in ("weekdays", "weekday", "workday", "workdays", "будням", "будни", "рабочий день", "рабочим дням"):
            expr = f"{minute} {hour} * * 1-5"
        elif what in ("weekends", "weekend", "выходным", "выходные"):
            expr = f"{minute} {hour} * * 0,6"
        elif what in ("weekly", "week", "еженедельно", "неделю"):
            expr = f"{minute} {hour} * * {(local.weekday() + 1) % 7}"
        elif what in ("monthly", "month", "ежемесячно", "месяц"):
            expr = f"{minute} {hour} {local.day} * *"
        elif what in ("yearly", "annually", "year", "ежегодно", "год"):
            expr = f"{minute} {hour} {local.day} {local.month} *"
        elif what in _WEEKDAYS:
            expr = f"{minute} {hour} * * {_WEEKDAYS[what]}"
        elif what.rstrip("s") in _WEEKDAYS:
            expr = f"{minute} {hour} * * {_WEEKDAYS[what.rstrip('s')]}"
        else:
            raise BadTime(f"cannot read the repeat {text[:80]!r}: use daily, weekdays, weekly, monthly, 'every monday at 9', "
                          "or a cron expression such as '0 9 * * 1-5'")
    a = next_occurrence(expr, first - timedelta(seconds=1), tz)
    b = next_occurrence(expr, a, tz)
    if b - a < MIN_INTERVAL:
        raise BadTime(f"the repeat {text[:80]!r} is more often than every {int(MIN_INTERVAL.total_seconds() // 60)} minutes")
    return expr


def next_occurrence(expr: str, after: datetime, tz: str) -> datetime:
    """The first time of cron ``expr`` in zone ``tz`` strictly after ``after``, in UTC (DST-correct:
    the wall-clock time of that day's offset)."""
    start = after.astimezone(zone(tz))
    found = croniter(expr, start).get_next(datetime)
    return found.astimezone(UTC)


# ---------------------------------------------------------------------- showing a time


def describe_when(due: datetime, tz: str, now: datetime, locale: str = "en") -> str:
    """``due`` in zone ``tz`` for a member (CLDR, via Babel): within six days of ``now`` the weekday
    and time ("Thu 10:00 AM", «чт 10:00»), later with the date ("Thu, Jul 9, 10:00 AM"), in another
    year with the year."""
    where = zone(tz)
    local, here = due.astimezone(where), now.astimezone(where)
    try:
        clock = format_time(local, format="short", tzinfo=where, locale=locale)
        if abs((local.date() - here.date()).days) < 6:
            return f"{format_skeleton('E', local, tzinfo=where, locale=locale)} {clock}"
        day = format_skeleton("MMMEd" if local.year == here.year else "yMMMEd", local, tzinfo=where, locale=locale)
        return f"{day}, {clock}"
    except (ValueError, LookupError):
        return local.strftime("%a %Y-%m-%d %H:%M")
