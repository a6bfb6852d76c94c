"""The stored stand-in for a media message: ``[photo]``, ``[file report.pdf]``, ``[voice 0:42]``, …

A message that carries a file is stored like any message, its text being this marker, then the
caption, then what was understood of the file (a transcript, a description). ``/history``, ``/export``
and recall read them; transcripts and Telegram Desktop exports are imported with the same markers.
"""
from __future__ import annotations

__all__ = ["clock_time", "contact_text", "location_text", "marker", "poll_text"]


def clock_time(seconds: float | None) -> str:
    """``42.4`` → ``"0:42"``, ``3725`` → ``"1:02:05"``; ``""`` for None."""
    if seconds is None:
        return ""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def marker(kind: str, *, file_name: str | None = None, duration_s: float | None = None, emoji: str | None = None) -> str:
    """``[photo]``, ``[file report.pdf]``, ``[voice 0:42]``, ``[audio song.mp3 3:12]``, ``[video note 0:15]``,
    ``[video 0:12]``, ``[GIF]``, ``[sticker 😀]`` (kind: ``actors.events.MEDIA_KINDS``; another kind
    is shown as ``[kind]``)."""
    dur = clock_time(duration_s)
    parts = {
        "photo": ["photo"],
        "document": ["file", file_name or "document"],
        "voice": ["voice", dur],
        "audio": ["audio", file_name or "", dur],
        "video_note": ["video note", dur],
        "video": ["video", dur],
        "animation": ["GIF"],
        "sticker": ["sticker", emoji or ""],
    }.get(kind, [kind])
    return "[" + " ".join(p for p in parts if p) + "]"


def poll_text(question: str, answers: list[str]) -> str:
    """``[poll] Lunch? — pizza / sushi`` (the question and its options, as one line)."""
    options = " / ".join(a.strip() for a in answers if a and a.strip())
    return f"[poll] {question.strip()}" + (f" — {options}" if options else "")


def location_text(latitude: float, longitude: float, place: str | None = None) -> str:
    """``[location 52.52000, 13.40500 Alexanderplatz]``."""
    return f"[location {latitude:.5f}, {longitude:.5f}" + (f" {place.strip()}" if place and place.strip() else "") + "]"


def contact_text(name: str | None) -> str:
    """``[contact Anna Lee]`` (the name only: a shared phone number is not kept in memory)."""
    return f"[contact {name}]" if name else "[contact]"
