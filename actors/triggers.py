"""When does the bot answer? (docs/design.md §3.2): private → always; group → @mention, a reply to the bot,
a configured keyword (case-insensitive, whole word) or an always-on chat. Otherwise it only remembers."""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from .events import PRIVATE, Incoming

__all__ = ["mentions", "should_respond", "strip_mention"]


@lru_cache(maxsize=1024)
def _keyword_re(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    words = [re.escape(k.strip()) for k in keywords if k.strip()]
    if not words:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE)


def mentions(text: str, username: str | None) -> bool:
    """True if ``text`` contains ``@username`` (case-insensitive, not part of a longer name)."""
    if not username:
        return False
    return re.search(r"@" + re.escape(username) + r"(?!\w)", text, re.IGNORECASE) is not None


def should_respond(ev: Incoming, *, bot_username: str | None, keywords: Iterable[str] = (), always_on: bool = False) -> bool:
    """Decide whether the bot answers ``ev``. ``ev.respond`` (set by a replay) overrides the triggers."""
    if ev.respond is not None:
        return ev.respond
    if ev.chat_type == PRIVATE:
        return True
    if ev.mentions_bot or ev.reply_to_bot or always_on:
        return True
    if mentions(ev.text, bot_username):
        return True
    pattern = _keyword_re(tuple(keywords))
    return bool(pattern and pattern.search(ev.text))


def strip_mention(text: str, username: str | None) -> str:
    """The text without ``@username`` (for recall queries), whitespace collapsed."""
    if username:
        text = re.sub(r"@" + re.escape(username) + r"(?!\w)", " ", text, flags=re.IGNORECASE)
    return " ".join(text.split())
