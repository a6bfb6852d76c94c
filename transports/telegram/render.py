"""Markdown from the model → Telegram text + entities, split into messages Telegram accepts.

``telegramify-markdown`` (1.4.x) converts Markdown to plain text plus MessageEntity pairs (offsets in
UTF-16 code units). Its own splitter cuts on newlines only and clips entities at every cut, so Kith
splits itself (``split``): on a paragraph boundary, else a line, else a word, preferring cuts that do
not fall inside an entity; an entity crossing a cut is clipped into both parts and each part's
entities are re-based. The separator stays at the end of the earlier part, so the parts concatenate
to exactly the rendered text.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from pyrogram import enums, types
from telegramify_markdown import convert

log = logging.getLogger(__name__)

MAX_MESSAGE_UNITS = 4096  # Telegram's limit for a text message, in UTF-16 code units
MAX_CAPTION_UNITS = 1024  # ... and for a media caption

_ENTITY_TYPES: dict[str, enums.MessageEntityType] = {
    "bold": enums.MessageEntityType.BOLD,
    "italic": enums.MessageEntityType.ITALIC,
    "underline": enums.MessageEntityType.UNDERLINE,
    "strikethrough": enums.MessageEntityType.STRIKETHROUGH,
    "spoiler": enums.MessageEntityType.SPOILER,
    "code": enums.MessageEntityType.CODE,
    "pre": enums.MessageEntityType.PRE,
    "text_link": enums.MessageEntityType.TEXT_LINK,
    "blockquote": enums.MessageEntityType.BLOCKQUOTE,
    "expandable_blockquote": enums.MessageEntityType.BLOCKQUOTE,
    "custom_emoji": enums.MessageEntityType.CUSTOM_EMOJI,
    "url": enums.MessageEntityType.URL,
    "email": enums.MessageEntityType.EMAIL,
    "phone_number": enums.MessageEntityType.PHONE_NUMBER,
    "mention": enums.MessageEntityType.MENTION,
    "hashtag": enums.MessageEntityType.HASHTAG,
    "cashtag": enums.MessageEntityType.CASHTAG,
    "bot_command": enums.MessageEntityType.BOT_COMMAND,
}


@dataclass(frozen=True, slots=True)
class Entity:
    """A formatting span; ``offset``/``length`` in UTF-16 code units of its part's text."""

    type: str
    offset: int
    length: int
    url: str | None = None
    language: str | None = None
    custom_emoji_id: str | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """One Telegram message worth of text and its entities."""

    text: str
    entities: tuple[Entity, ...] = field(default=())

    @property
    def units(self) -> int:
        return utf16_len(self.text)


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (what Telegram counts)."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _offsets(text: str) -> list[int] | None:
    """UTF-16 offset of every character index (length len+1); None when text is ASCII (offset = index)."""
    if text.isascii():
        return None
    out = [0] * (len(text) + 1)
    u = 0
    for i, ch in enumerate(text):
        out[i] = u
        u += 2 if ord(ch) > 0xFFFF else 1
    out[len(text)] = u
    return out


def render(markdown: str) -> Part:
    """Markdown → plain text + entities. A renderer failure degrades to the raw text, unformatted."""
    try:
        text, ents = convert(markdown)
    except Exception:
        log.warning("markdown rendering failed; sending plain text", exc_info=True)
        return Part(markdown)
    entities = tuple(
        Entity(e.type, e.offset, e.length, e.url, e.language, e.custom_emoji_id)
        for e in ents
        if e.length > 0 and e.type in _ENTITY_TYPES
    )
    return Part(text, entities)


_LEVELS = ("\n\n", "\n", " ")


def split(part: Part, limit: int = MAX_MESSAGE_UNITS, *, drop_blank: bool = True) -> list[Part]:
    """Split ``part`` into parts of at most ``limit`` UTF-16 units; their texts concatenate to ``part.text``.

    Cut preference: paragraph, line, word boundary outside every entity; then the same boundaries
    inside an entity (clipped into both parts); then a hard cut. A cut is taken from the second half
    of the window when one exists there, so parts stay large. Whitespace-only parts are dropped
    (Telegram rejects an empty message; ``drop_blank=False`` keeps them), so only whitespace can be lost.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 UTF-16 units")
    text = part.text
    offs = _offsets(text)
    total = len(text) if offs is None else offs[len(text)]
    if total <= limit:
        return [part] if text.strip() or not drop_blank else []
    cutter = _Cutter(text, offs, _inside_entities(part.entities, total), limit)
    return _clip_parts(part, [0, *cutter.cuts(), len(text)], cutter.u, drop_blank)


def _inside_entities(entities: tuple[Entity, ...], total: int) -> bytearray:
    """Flag per unit position 0..``total``: 1 when strictly inside some entity (a cut there would break it)."""
    inside = bytearray(total + 1)
    if entities:  # a difference array over unit positions
        marks = [0] * (total + 2)
        for e in entities:
            a, b = e.offset + 1, min(e.offset + e.length, total + 1)
            if a < b:
                marks[a] += 1
                marks[b] -= 1
        run = 0
        for pos in range(total + 1):
            run += marks[pos]
            inside[pos] = 1 if run > 0 else 0
    return inside


class _Cutter:
    """Where ``split`` cuts ``text``: character indices, chosen by the preference ``split`` describes."""

    __slots__ = ("inside", "limit", "offs", "text")

    def __init__(self, text: str, offs: list[int] | None, inside: bytearray, limit: int) -> None:
        self.text, self.offs, self.inside, self.limit = text, offs, inside, limit

    def u(self, i: int) -> int:
        """UTF-16 offset of character index ``i``."""
        return i if self.offs is None else self.offs[i]

    def cuts(self) -> list[int]:
        """The cut indices, ascending; every piece between them fits in ``limit`` units."""
        total = self.u(len(self.text))
        cuts: list[int] = []
        start = 0
        while total - self.u(start) > self.limit:
            start = self.cut_after(start)
            cuts.append(start)
        return cuts

    def cut_after(self, start: int) -> int:
        """The next cut after ``start``: the best boundary in the window, else a hard cut."""
        hi = self.max_end(start)
        cut = None
        for lo in (start + (hi - start) // 2, start):
            for respect in (True, False):
                for sep in _LEVELS:
                    cut = self.find(start, lo, hi, sep, respect)
                    if cut is not None:
                        break
                if cut is not None:
                    break
            if cut is not None:
                break
        if cut is None or cut <= start:
            cut = max(hi, start + 1)  # hard cut (characters, never inside a surrogate pair)
        return cut

    def max_end(self, start: int) -> int:
        """Largest character index e with units(start..e) ≤ limit."""
        budget = self.u(start) + self.limit
        if self.offs is None:
            return min(len(self.text), budget)
        return bisect.bisect_right(self.offs, budget) - 1

    def find(self, start: int, lo: int, hi: int, sep: str, respect: bool) -> int | None:
        """Rightmost cut p in (lo, hi] right after ``sep`` (not inside an entity when ``respect``)."""
        text, inside, u = self.text, self.inside, self.u
        end = hi
        while True:
            i = text.rfind(sep, max(start, lo - len(sep) + 1), end)
            if i < 0:
                return None
            p = i + len(sep)
            if p <= lo:
                return None
            if not respect or not inside[u(p)]:
                # keep a run of separators together at the end of the earlier part
                while p < hi and text[p] in "\n " and (not respect or not inside[u(p + 1)]):
                    p += 1
                return p
            end = i + len(sep) - 1


def _clip_parts(part: Part, bounds: list[int], u: Callable[[int], int], drop_blank: bool) -> list[Part]:
    """``part`` cut at ``bounds`` (character indices), each piece with its entities clipped and re-based."""
    text = part.text
    parts: list[Part] = []
    for a, b in itertools.pairwise(bounds):
        chunk = text[a:b]
        if drop_blank and not chunk.strip():
            continue
        ua, ub = u(a), u(b)
        ents: list[Entity] = []
        for e in part.entities:
            s, t = max(e.offset, ua), min(e.offset + e.length, ub)
            if t <= s:
                continue
            clipped = Entity(e.type, s - ua, t - s, e.url, e.language, e.custom_emoji_id)
            if utf16_slice(chunk, clipped.offset, clipped.length).strip():
                ents.append(clipped)
        parts.append(Part(chunk, tuple(ents)))
    return parts


def utf16_slice(text: str, offset: int, length: int) -> str:
    """``text[offset:offset+length]`` with offset and length in UTF-16 code units."""
    if text.isascii():
        return text[offset : offset + length]
    raw = text.encode("utf-16-le", "surrogatepass")
    return raw[2 * offset : 2 * (offset + length)].decode("utf-16-le", "surrogatepass")


def render_parts(markdown: str, limit: int = MAX_MESSAGE_UNITS) -> list[Part]:
    """Render ``markdown`` and split it into sendable parts (empty list for whitespace-only input)."""
    return split(render(markdown), limit)


_TABLE_DELIMITER = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")


def has_table(markdown: str) -> bool:
    """True when ``markdown`` holds a GitHub-style table: a row with ``|`` followed by a delimiter
    row (``|---|:--:|``), outside code fences."""
    fenced = False
    previous = ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and "|" in previous and "|" in line and _TABLE_DELIMITER.match(line):
            return True
        previous = "" if fenced else line
    return False


def plain_parts(text: str, limit: int = MAX_MESSAGE_UNITS) -> list[Part]:
    """``text`` as-is (no formatting), split into sendable parts."""
    return split(Part(text), limit)


def to_pyrogram(entities: tuple[Entity, ...] | list[Entity]) -> list[types.MessageEntity]:
    """Our entities as pyrogram ``MessageEntity`` objects (for ``send_message(entities=...)``)."""
    out = []
    for e in entities:
        kind = _ENTITY_TYPES.get(e.type)
        if kind is None:
            continue
        out.append(
            types.MessageEntity(
                type=kind,
                offset=e.offset,
                length=e.length,
                url=e.url if e.type == "text_link" else None,
                language=(e.language or "") if e.type == "pre" else None,  # pyrogram cannot write a pre without one
                custom_emoji_id=e.custom_emoji_id if e.type == "custom_emoji" else None,
                expandable=True if e.type == "expandable_blockquote" else None,
            )
        )
    return out


__all__ = [
    "MAX_CAPTION_UNITS",
    "MAX_MESSAGE_UNITS",
    "Entity",
    "Part",
    "has_table",
    "plain_parts",
    "render",
    "render_parts",
    "split",
    "to_pyrogram",
    "utf16_len",
    "utf16_slice",
]
