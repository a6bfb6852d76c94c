"""Read chat transcripts into ``StoredMessage``s: transcript JSONL and Telegram Desktop exports.

Formats (``detect_format``):

- ``"jsonl"`` — docs/design.md §9, one message per line::

      {"chat_id": -1002009030310, "chat_title": "#ubuntu 2009-03-03_10", "message_id": 1000,
       "date": "2009-03-03T09:59:00Z", "user": "ActionParsnip", "text": "…", "reply_to": 999}

  Required: ``chat_id`` (int), ``message_id`` (int), ``date`` (ISO 8601 string, or Unix seconds),
  ``user`` (non-empty string), ``text`` (string, may be empty). Optional: ``user_id`` (int; derived
  from ``user`` when absent, see ``derived_user_id``), ``reply_to`` / ``thread_id`` (int or null),
  ``chat_title`` (string), ``chat_type`` (string), ``role`` (``"user"``/``"assistant"``, default user).
  Blank lines are skipped. Chat type, unless given: ``private`` for a positive id, ``supergroup`` for
  ids below -10**12 (the ``-100…`` form), ``group`` for other negative ids.

- ``"telegram-export"`` — Telegram Desktop's ``result.json``, either one chat (top-level ``name``,
  ``type``, ``id``, ``messages``) or the whole account (``chats.list[]`` and ``left_chats.list[]``,
  each chat with those keys). Service messages (``"type": "service"``) are skipped; a media message
  (``photo``, or ``file`` with its ``media_type``: voice_message, audio_file, video_message,
  video_file, animation, sticker, none = a document) is kept with its marker before its caption —
  ``[photo] caption``, ``[file report.pdf]``, ``[voice 0:42]``, ``[sticker 👍]`` (``memory.markers``)
  — and its file, when the export includes it, is listed in ``TranscriptReader.attachments``;
  messages with neither text nor media (e.g. polls) are skipped and counted. ``text`` may be a string or
  a list of strings and entity objects (``{"type": "bold", "text": "…"}``), joined in order. The date
  is ``date_unixtime`` when present (exact), else ``date`` (export-local time, read as UTC).

  Chat ids: exports give bare positive ids; we convert them to the Bot-API form the bot sees live, so
  an imported chat and the live chat share one id and one memory:

  ==============================================  ============  ====================
  export ``type``                                 stored type   chat id
  ==============================================  ============  ====================
  personal_chat, bot_chat, saved_messages, …      private       ``id``
  private_group                                   group         ``-id``
  private_supergroup, public_supergroup           supergroup    ``-100<id>``
  private_channel, public_channel                 channel       ``-100<id>``
  ==============================================  ============  ====================

  An id that is already negative is kept. Sender ids: ``from_id`` ``"user123"`` → ``123``;
  ``"channel456"``/``"chat456"`` (posts signed by a channel or group) → ``-100456``, the Bot-API
  ``sender_chat`` id, so they cannot collide with user ids; missing → derived from the ``from`` name.
  A reply to another chat (``reply_to_peer_id`` present) keeps no ``reply_to``.

Errors: a file that cannot be read as either format raises ``TranscriptError`` when the reader is
created. A malformed line/message yields a ``TranscriptLineError`` in the stream and reading goes on:
its ``line`` is the 1-based line number for JSONL, and the 1-based position in the chat's
``messages`` array for exports (the ``source`` then names the chat).

Dates are returned tz-aware UTC: ``Z`` and offsets are converted, naive times are taken as UTC.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload

from .errors import TranscriptError, TranscriptLineError
from .markers import contact_text, location_text, marker, poll_text
from .types import ROLE_ASSISTANT, ROLE_USER, StoredMessage

__all__ = [
    "DERIVED_ID_BASE",
    "Attachment",
    "ChatMeta",
    "Format",
    "ParsedLine",
    "TranscriptReader",
    "TranscriptStats",
    "bot_api_chat_id",
    "derived_user_id",
    "detect_format",
    "is_derived_user_id",
    "parse_date",
    "read_transcript",
]

ParsedLine = StoredMessage | TranscriptLineError
Format = Literal["jsonl", "telegram-export"]

# Derived ids live in [2**52, 2**53): Telegram guarantees real user ids have at most 52 significant
# bits, so they can never collide; below 2**53 they stay exact as JSON numbers / JS doubles.
DERIVED_ID_BASE = 1 << 52
_DERIVED_MASK = (1 << 52) - 1


def derived_user_id(name: str) -> int:
    """A stable positive user id for a sender known only by name (an IRC nick, an export without
    ``from_id``): ``2**52 + (first 8 bytes of blake2b("nick:" + name), big-endian, masked to 52 bits)``.

    The name is used exactly (case- and whitespace-sensitive), so the same name gives the same id in
    every run and process. Result range: ``[2**52, 2**53)``.
    """
    digest = hashlib.blake2b(("nick:" + name).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return DERIVED_ID_BASE + (int.from_bytes(digest, "big") & _DERIVED_MASK)


def is_derived_user_id(user_id: int) -> bool:
    """True when ``user_id`` was made by ``derived_user_id`` (not a real Telegram id)."""
    return DERIVED_ID_BASE <= user_id < 2 * DERIVED_ID_BASE


@dataclass(frozen=True, slots=True)
class ChatMeta:
    """A chat seen in a transcript: Bot-API ``chat_id``, ``type`` (private|group|supergroup|channel),
    ``title`` (None when the transcript gives none). Feed it to ``DialogueStore.upsert_chat``."""

    chat_id: int
    type: str
    title: str | None


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file of an exported media message: ``path`` relative to the export's folder (as the export
    names it), ``kind`` (``photo``, ``document``, ``voice``, …), ``file_name``, ``mime_type``."""

    kind: str
    path: str
    file_name: str | None
    mime_type: str | None


_EXPORT_MEDIA_TYPES = {
    "voice_message": "voice", "audio_file": "audio", "video_message": "video_note", "video_file": "video",
    "animation": "animation", "sticker": "sticker",
}


@dataclass
class TranscriptStats:
    """Counts of one read, complete once the reader is exhausted. ``messages``: yielded messages;
    ``errors``: yielded line errors; ``service``: skipped service messages; ``no_text``: skipped
    messages with neither text nor media (polls, …); ``blank``: skipped blank JSONL lines."""

    messages: int = 0
    errors: int = 0
    service: int = 0
    no_text: int = 0
    blank: int = 0


class TranscriptReader(Iterator[ParsedLine]):
    """Iterator over one transcript file, yielding ``StoredMessage`` or ``TranscriptLineError``.

    ``format``: the detected format. ``chats``: ``{chat_id: ChatMeta}``, filled as reading goes — a
    chat is present no later than its first message is yielded (exports: before any of its messages)
    and complete at the end. ``stats``: ``TranscriptStats``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format, data = _sniff(self.path)
        self.chats: dict[int, ChatMeta] = {}
        self.attachments: dict[tuple[int, int], Attachment] = {}  # (chat_id, message_id) → the file, if exported
        self.stats = TranscriptStats()
        self._it = self._jsonl() if self.format == "jsonl" else self._export(data)

    def __iter__(self) -> TranscriptReader:
        return self

    def __next__(self) -> ParsedLine:
        item = next(self._it)
        if isinstance(item, StoredMessage):
            self.stats.messages += 1
        else:
            self.stats.errors += 1
        return item

    # ------------------------------------------------------------ JSONL

    def _jsonl(self) -> Iterator[ParsedLine]:
        src = str(self.path)
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - opened apart from the loop, so that only its own error is a TranscriptError
        except OSError as exc:
            raise TranscriptError(f"cannot read {src}: {exc}") from exc
        with f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # UTF-8 BOM
                if not raw.strip():
                    self.stats.blank += 1
                    continue
                try:
                    msg, title, ctype = _parse_jsonl_obj(raw)
                except _Bad as exc:
                    yield TranscriptLineError(src, lineno, str(exc))
                    continue
                meta = self.chats.get(msg.chat_id)
                if meta is None or (title is not None and meta.title != title) or (ctype and meta.type != ctype):
                    self.chats[msg.chat_id] = ChatMeta(
                        msg.chat_id,
                        ctype or (meta.type if meta else _type_from_id(msg.chat_id)),
                        title if title is not None else (meta.title if meta else None),
                    )
                yield msg

    # ------------------------------------------------------------ Telegram Desktop export

    def _export(self, data: dict[str, Any]) -> Iterator[ParsedLine]:
        for chat in _export_chats(data):
            try:
                meta = _export_chat_meta(chat)
            except _Bad as exc:
                yield TranscriptLineError(f"{self.path} [chat {chat.get('name')!r}]", 0, str(exc))
                continue
            self.chats[meta.chat_id] = meta
            src = f"{self.path} [chat {meta.chat_id}]"
            messages = chat.get("messages")
            if not isinstance(messages, list):
                yield TranscriptLineError(src, 0, "chat has no 'messages' list")
                continue
            for index, m in enumerate(messages, 1):
                try:
                    msg, attachment = _parse_export_message(m, meta.chat_id)
                except _Skip as skip:
                    if skip.kind == "service":
                        self.stats.service += 1
                    else:
                        self.stats.no_text += 1
                    continue
                except _Bad as exc:
                    yield TranscriptLineError(src, index, str(exc))
                    continue
                if attachment is not None:
                    self.attachments[(msg.chat_id, msg.message_id)] = attachment
                yield msg


def read_transcript(path: str | Path) -> TranscriptReader:
    """Open a transcript (format detected) and return an iterator of ``StoredMessage`` |
    ``TranscriptLineError``; see ``TranscriptReader`` for ``.chats``, ``.stats`` and ``.format``.

    raises TranscriptError at once when the file is missing, unreadable, or in neither format.
    """
    return TranscriptReader(path)


def detect_format(path: str | Path) -> Format:
    """``"jsonl"`` or ``"telegram-export"``. raises TranscriptError for anything else (missing file,
    empty file, JSON of another shape, not JSON)."""
    return _sniff(Path(path))[0]


# ---------------------------------------------------------------- detection

_SNIFF_LINES = 50
_SNIFF_LINE_CHARS = 1 << 21  # a longer first line is not judged as JSONL here (minified export)


def _sniff(path: Path) -> tuple[Format, Any]:
    """Detect the format; for exports also return the parsed document (read once)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head: list[str] = []
            seen_any = False
            for _ in range(_SNIFF_LINES * 4):
                line = f.readline(_SNIFF_LINE_CHARS)
                if not line:
                    break
                if line.strip():
                    seen_any = True
                    if line.endswith("\n") or len(line) < _SNIFF_LINE_CHARS:  # skip giant (minified) lines
                        head.append(line)
                    if len(head) >= _SNIFF_LINES:
                        break
    except OSError as exc:
        raise TranscriptError(f"cannot read {path}: {exc}") from exc
    if not seen_any:
        raise TranscriptError(f"{path} is empty")
    # JSONL: some early line is a JSON object with the message keys (tolerates a bad first line).
    for line in head:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "chat_id" in obj and "message_id" in obj:
            return "jsonl", None
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = json.loads(raw)
    except OSError as exc:
        raise TranscriptError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:
        # cut between tokens: the error is at the end; cut inside a string: "Unterminated string" (its start)
        cut = isinstance(exc, json.JSONDecodeError) and (exc.pos >= len(raw.rstrip()) - 1 or exc.msg.startswith("Unterminated string"))
        if cut and raw.lstrip().startswith(b"{"):
            raise TranscriptError(
                f"{path} is truncated: the JSON ends early, at byte {len(raw):,} (an export still being written, or "
                "cut short by a copy); export it again") from exc
        raise TranscriptError(
            f"{path} is neither transcript JSONL (chat_id, message_id, date, user, text per line) "
            f"nor a Telegram Desktop result.json: {exc}"
        ) from exc
    if isinstance(data, dict) and (
        isinstance(data.get("messages"), list) or isinstance((data.get("chats") or {}).get("list"), list)
    ):
        return "telegram-export", data
    raise TranscriptError(
        f"{path} is JSON but not a Telegram Desktop export (no 'messages' or 'chats.list') "
        "nor transcript JSONL"
    )


# ---------------------------------------------------------------- field parsing

class _Bad(Exception):
    """One malformed line/message (reason in the message)."""


class _Skip(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # "service" | "no_text"


def _check_unicode(key: str, value: str) -> None:
    """Reject lone UTF-16 surrogates (JSON "\\ud800" escapes): no database can store them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Bad(f"{key!r} is not valid Unicode: {exc.reason} at {exc.start}") from None


@overload
def _int(obj: dict[str, Any], key: str, *, required: Literal[True]) -> int: ...
@overload
def _int(obj: dict[str, Any], key: str, *, required: bool) -> int | None: ...


def _int(obj: dict[str, Any], key: str, *, required: bool) -> int | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise _Bad(f"missing {key!r}")
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(f"{key!r} must be an integer, got {type(v).__name__} {v!r:.40}")
    if not -(1 << 63) <= v < (1 << 63):
        raise _Bad(f"{key!r} is out of the 64-bit range: {v}")
    return v


@overload
def _str(obj: dict[str, Any], key: str, *, required: Literal[True]) -> str: ...
@overload
def _str(obj: dict[str, Any], key: str, *, required: bool) -> str | None: ...


def _str(obj: dict[str, Any], key: str, *, required: bool) -> str | None:
    v = obj.get(key)
    if v is None:
        if required:
            raise _Bad(f"missing {key!r}")
        return None
    if not isinstance(v, str):
        raise _Bad(f"{key!r} must be a string, got {type(v).__name__}")
    return v


def parse_date(value: Any) -> datetime:
    """An ISO 8601 string (``Z``, ``±hh:mm`` offsets, or naive = UTC) or Unix seconds (int/float, or
    a string of digits) → tz-aware UTC datetime. raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"not a date: {value!r}")
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"not a date: {value!r:.40}")
    s = value.strip()
    if s.isdigit():
        return datetime.fromtimestamp(int(s), UTC)
    if s.endswith(("z", "Z")):
        s = s[:-1] + "+00:00"
    d = datetime.fromisoformat(s)
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def _type_from_id(chat_id: int) -> str:
    if chat_id > 0:
        return "private"
    return "supergroup" if chat_id < -(10**12) else "group"


def _parse_jsonl_obj(raw: bytes) -> tuple[StoredMessage, str | None, str | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"invalid UTF-8: {exc}") from None
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise _Bad(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Bad(f"expected a JSON object, got {type(obj).__name__}")
    chat_id = _int(obj, "chat_id", required=True)
    message_id = _int(obj, "message_id", required=True)
    if "date" not in obj:
        raise _Bad("missing 'date'")
    try:
        date = parse_date(obj["date"])
    except (ValueError, OverflowError, OSError) as exc:
        raise _Bad(f"bad 'date': {exc}") from None
    user = _str(obj, "user", required=True)
    if not user:
        raise _Bad("empty 'user'")
    if "text" not in obj:
        raise _Bad("missing 'text'")
    text = _str(obj, "text", required=False) or ""
    _check_unicode("user", user)
    _check_unicode("text", text)
    user_id = _int(obj, "user_id", required=False)
    role = _str(obj, "role", required=False) or ROLE_USER
    if role not in (ROLE_USER, ROLE_ASSISTANT):
        raise _Bad(f"'role' must be {ROLE_USER!r} or {ROLE_ASSISTANT!r}, got {role!r:.40}")
    msg = StoredMessage(
        chat_id=chat_id,
        message_id=message_id,
        user_id=user_id if user_id is not None else derived_user_id(user),
        user_name=user,
        text=text,
        date=date,
        role=role,
        reply_to=_int(obj, "reply_to", required=False),
        thread_id=_int(obj, "thread_id", required=False),
    )
    return msg, _str(obj, "chat_title", required=False), _str(obj, "chat_type", required=False)


_EXPORT_TYPES = {
    "personal_chat": "private",
    "bot_chat": "private",
    "saved_messages": "private",
    "replies": "private",
    "verification_codes": "private",
    "private_group": "group",
    "private_supergroup": "supergroup",
    "public_supergroup": "supergroup",
    "private_channel": "channel",
    "public_channel": "channel",
}


def _export_chats(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if isinstance(data.get("messages"), list):
        yield data
    for section in ("chats", "left_chats"):
        lst = (data.get(section) or {}).get("list")
        if isinstance(lst, list):
            yield from (c for c in lst if isinstance(c, dict))


def bot_api_chat_id(export_id: int, export_type: str) -> int:
    """Bot-API chat id of a Telegram Desktop export chat (see the module docstring's table)."""
    if export_id < 0:
        return export_id
    kind = _EXPORT_TYPES.get(export_type, "private")
    if kind == "group":
        return -export_id
    if kind in ("supergroup", "channel"):
        return int(f"-100{export_id}")
    return export_id


def _export_chat_meta(chat: dict[str, Any]) -> ChatMeta:
    cid = _int(chat, "id", required=True)
    etype = _str(chat, "type", required=False) or "personal_chat"
    name = chat.get("name")
    if etype == "saved_messages" and not name:
        name = "Saved Messages"
    return ChatMeta(bot_api_chat_id(cid, etype), _EXPORT_TYPES.get(etype, "private"), name if isinstance(name, str) else None)


def _export_text(text: Any) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        parts = []
        for part in text:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise _Bad(f"'text' list has an element that is neither a string nor an entity: {part!r:.60}")
        return "".join(parts)
    if text is None:
        return ""
    raise _Bad(f"'text' must be a string or a list, got {type(text).__name__}")


def _sender_id(from_id: Any) -> int | None:
    if from_id is None:
        return None
    if isinstance(from_id, int) and not isinstance(from_id, bool):
        return from_id
    if isinstance(from_id, str):
        for prefix, chat in (("user", False), ("channel", True), ("chat", True), ("group", True)):
            if from_id.startswith(prefix) and from_id[len(prefix):].isdigit():
                n = int(from_id[len(prefix):])
                return int(f"-100{n}") if chat else n
    raise _Bad(f"unrecognised 'from_id': {from_id!r:.40}")


def _export_extra(m: dict[str, Any]) -> str | None:
    """The text of an exported poll, location or contact (``memory.markers.poll_text`` …); None otherwise."""
    poll = m.get("poll")
    if isinstance(poll, dict) and isinstance(poll.get("question"), str):
        answers = [a["text"] for a in poll.get("answers") or () if isinstance(a, dict) and isinstance(a.get("text"), str)]
        return poll_text(poll["question"], answers)
    loc = m.get("location_information")
    if isinstance(loc, dict) and isinstance(loc.get("latitude"), (int, float)) and isinstance(loc.get("longitude"), (int, float)):
        return location_text(float(loc["latitude"]), float(loc["longitude"]), m.get("place_name") if isinstance(m.get("place_name"), str) else None)
    contact = m.get("contact_information")
    if isinstance(contact, dict):
        name = " ".join(str(contact.get(k) or "") for k in ("first_name", "last_name")).strip()
        return contact_text(name or None)
    return None


def _export_media(m: dict[str, Any]) -> tuple[str, Attachment | None] | None:
    """(marker, attachment or None) of an exported media message; None without media."""
    extra = _export_extra(m)
    if extra is not None:
        return extra, None
    if isinstance(m.get("photo"), str):
        kind, path, name = "photo", m["photo"], None
    elif isinstance(m.get("file"), str) or m.get("media_type"):
        kind = _EXPORT_MEDIA_TYPES.get(str(m.get("media_type") or ""), "document")
        path = m.get("file") if isinstance(m.get("file"), str) else ""
        name = m.get("file_name") if isinstance(m.get("file_name"), str) else None
        if name is None and kind in ("document", "audio") and path and not path.startswith("("):
            name = path.rsplit("/", 1)[-1]
    else:
        return None
    duration = m.get("duration_seconds")
    duration = float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None
    emoji = m.get("sticker_emoji") if isinstance(m.get("sticker_emoji"), str) else None
    mark = marker(kind, file_name=name, duration_s=duration, emoji=emoji)
    included = bool(path) and not path.startswith("(")  # "(File not included. Change data exporting settings…)"
    mime = m.get("mime_type") if isinstance(m.get("mime_type"), str) else None
    return mark, Attachment(kind, path, name, mime) if included else None


def _parse_export_message(m: Any, chat_id: int) -> tuple[StoredMessage, Attachment | None]:
    if not isinstance(m, dict):
        raise _Bad(f"expected a message object, got {type(m).__name__}")
    mtype = m.get("type", "message")
    if mtype == "service":
        raise _Skip("service")
    if mtype != "message":
        raise _Bad(f"unknown message type {mtype!r:.40}")
    message_id = _int(m, "id", required=True)
    try:
        if m.get("date_unixtime") is not None:
            date = parse_date(m["date_unixtime"])
        elif m.get("date") is not None:
            date = parse_date(m["date"])
        else:
            raise _Bad(f"message {message_id}: missing 'date'")
    except (ValueError, OverflowError, OSError) as exc:
        raise _Bad(f"message {message_id}: bad date: {exc}") from None
    text = _export_text(m.get("text"))
    media = _export_media(m)
    attachment = None
    if media is not None:
        mark, attachment = media
        text = f"{mark} {text.strip()}" if text.strip() else mark
    if not text.strip():
        raise _Skip("no_text")
    _check_unicode("text", text)
    name = m.get("from")
    if name is not None and not isinstance(name, str):
        raise _Bad(f"message {message_id}: 'from' must be a string")
    try:
        user_id = _sender_id(m.get("from_id"))
    except _Bad as exc:
        raise _Bad(f"message {message_id}: {exc}") from None
    if not name:
        name = "Deleted Account" if user_id is not None else "unknown"
    reply_to = _int(m, "reply_to_message_id", required=False)
    if m.get("reply_to_peer_id") is not None:
        reply_to = None  # answers a message of another chat
    return StoredMessage(
        chat_id=chat_id,
        message_id=message_id,
        user_id=user_id if user_id is not None else derived_user_id(name),
        user_name=name,
        text=text,
        date=date,
        role=ROLE_USER,
        reply_to=reply_to,
        thread_id=_int(m, "message_thread_id", required=False),
    ), attachment
