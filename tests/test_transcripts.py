"""Transcript JSONL (real #ubuntu IRC data) and Telegram Desktop exports → StoredMessage."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memory.errors import TranscriptError, TranscriptLineError
from memory.transcripts import (
    DERIVED_ID_BASE,
    ChatMeta,
    bot_api_chat_id,
    derived_user_id,
    detect_format,
    is_derived_user_id,
    parse_date,
    read_transcript,
)
from memory.types import StoredMessage

ROOT = Path(__file__).resolve().parents[1]
IRC = ROOT.parent / "shared" / "data" / "ubuntu-irc"
SLICE = IRC / "2004-11-15_03.jsonl"


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------- JSONL, real data


def test_full_real_irc_file_parses_with_zero_errors() -> None:
    lines = _lines(SLICE)
    reader = read_transcript(SLICE)
    assert reader.format == "jsonl" == detect_format(SLICE)
    items = list(reader)
    assert not [i for i in items if isinstance(i, TranscriptLineError)]
    assert len(items) == len(lines) == 1077
    assert reader.stats.messages == 1077 and reader.stats.errors == 0
    assert reader.chats == {-1002004111503: ChatMeta(-1002004111503, "supergroup", "#ubuntu 2004-11-15_03")}
    for line, m in zip(lines, items):  # field by field against the raw JSON
        raw = json.loads(line)
        assert (m.chat_id, m.message_id, m.user_name, m.text, m.reply_to) == (
            raw["chat_id"], raw["message_id"], raw["user"], raw["text"], raw.get("reply_to"))
        assert m.date == datetime.fromisoformat(raw["date"]) and m.date.tzinfo is not None
        assert m.user_id == derived_user_id(raw["user"]) and m.role == "user" and m.thread_id is None


def test_all_real_irc_slices_parse_cleanly() -> None:
    total = 0
    for path in sorted(IRC.glob("*.jsonl")):
        items = list(read_transcript(path))
        assert all(isinstance(i, StoredMessage) for i in items), path
        assert len(items) == len(_lines(path))
        assert len({m.message_id for m in items}) == len(items)
        total += len(items)
    assert total == 11641


def test_malformed_lines_yield_errors_with_their_line_numbers_and_reading_goes_on(tmp_path: Path) -> None:
    lines = _lines(SLICE)[:600]
    good = json.loads(lines[0])
    bad = {
        301: '{"chat_id": -1, "message_id": 5, "date": "2020-01-01T00:00:00Z", "user": "x", "text": ',  # bad JSON
        350: json.dumps({**good, "message_id": "seven"}),  # ill-typed
        400: json.dumps({k: v for k, v in good.items() if k != "user"}),  # missing field
        450: json.dumps({**good, "date": "yesterday-ish"}),  # bad date
        451: json.dumps({**good, "chat_id": True}),  # bool is not an int
        452: "[1, 2, 3]",  # not an object
        453: json.dumps({**good, "text": "bad \ud800 surrogate"}),  # unstorable text
    }
    out = []
    for n, line in enumerate(lines, 1):
        out.append(line)
        if n in bad:
            out.append(bad[n])
    out.insert(10, "")  # blank lines are skipped, not errors
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")

    items = list(read_transcript(path))
    errors = [i for i in items if isinstance(i, TranscriptLineError)]
    # line numbers in the written file: each bad line follows good line n, after the earlier insertions
    expected_lines = []
    for k, n in enumerate(sorted(bad)):
        expected_lines.append(n + k + 1 + 1)  # +k earlier bad lines, +1 after good line n, +1 blank line
    assert [e.line for e in errors] == expected_lines
    assert all(e.source == str(path) for e in errors)
    reasons = [e.reason for e in errors]
    assert "invalid JSON" in reasons[0] and "'message_id'" in reasons[1] and "missing 'user'" in reasons[2]
    assert "date" in reasons[3] and "'chat_id'" in reasons[4] and "object" in reasons[5] and "Unicode" in reasons[6]
    msgs = [i for i in items if isinstance(i, StoredMessage)]
    assert [m.message_id for m in msgs] == [json.loads(line)["message_id"] for line in lines]


def test_jsonl_optional_fields_and_date_forms(tmp_path: Path) -> None:
    rows = [
        {"chat_id": 5, "message_id": 1, "date": "2024-05-01T10:00:00+02:00", "user": "Ann", "user_id": 5, "text": "", "thread_id": 9},
        {"chat_id": 5, "message_id": 2, "date": "2024-05-01T08:00:01", "user": "Kith", "user_id": 777, "text": "hi",
         "reply_to": 1, "role": "assistant"},
        {"chat_id": -42, "message_id": 3, "date": 1714550400, "user": "bob", "text": "unix", "reply_to": None, "chat_title": "G"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")  # no final newline
    reader = read_transcript(path)
    a, b, c = list(reader)
    assert a.date == datetime(2024, 5, 1, 8, 0, tzinfo=UTC) and a.text == "" and a.thread_id == 9 and a.user_id == 5
    assert b.date == datetime(2024, 5, 1, 8, 0, 1, tzinfo=UTC) and b.role == "assistant" and b.reply_to == 1
    assert c.date == datetime(2024, 5, 1, 8, 0, tzinfo=UTC) and c.user_id == derived_user_id("bob") and c.reply_to is None
    assert reader.chats == {5: ChatMeta(5, "private", None), -42: ChatMeta(-42, "group", "G")}


def test_parse_date_normalises_to_utc() -> None:
    want = datetime(2009, 3, 3, 9, 59, tzinfo=UTC)
    for s in ["2009-03-03T09:59:00Z", "2009-03-03T09:59:00z", "2009-03-03T10:59:00+01:00", "2009-03-03T09:59:00",
              "2009-03-03 04:59:00-05:00", "1236074340", 1236074340, 1236074340.0]:
        d = parse_date(s)
        assert d == want and d.utcoffset().total_seconds() == 0, s
    for s in ["", "03/03/2009", None, True, "2009-13-01T00:00:00Z"]:
        with pytest.raises(ValueError):
            parse_date(s)


# ---------------------------------------------------------------- Telegram Desktop exports

SINGLE_CHAT = {
    "name": "Linux Help 🐧",
    "type": "public_supergroup",
    "id": 1234567890,
    "messages": [
        {"id": 1, "type": "service", "date": "2024-01-15T14:00:00", "date_unixtime": "1705327200",
         "actor": "Alice", "actor_id": "user111", "action": "create_group", "title": "Linux Help", "members": [],
         "text": "", "text_entities": []},
        {"id": 2, "type": "message", "date": "2024-01-15T15:30:00", "date_unixtime": "1705329000",
         "from": "Alice", "from_id": "user111", "text": "How do I fix GRUB after installing Windows?",
         "text_entities": [{"type": "plain", "text": "How do I fix GRUB after installing Windows?"}]},
        {"id": 3, "type": "message", "date": "2024-01-15T15:31:10", "date_unixtime": "1705329070",
         "edited": "2024-01-15T15:32:00", "edited_unixtime": "1705329120",
         "from": "Bob", "from_id": "user222", "reply_to_message_id": 2,
         "text": ["Boot a live USB and run ", {"type": "code", "text": "sudo update-grub"}, ", see ",
                  {"type": "link", "text": "https://help.ubuntu.com/community/Grub2"}, " — ",
                  {"type": "bold", "text": "then reboot"}, "."],
         "text_entities": []},
        {"id": 4, "type": "message", "date": "2024-01-15T15:32:00", "date_unixtime": "1705329120",
         "from": "Bob", "from_id": "user222", "photo": "photos/photo_1@15-01-2024_15-32-00.jpg",
         "width": 1280, "height": 720, "text": "", "text_entities": []},
        {"id": 5, "type": "message", "date": "2024-01-15T15:33:00", "date_unixtime": "1705329180",
         "from": "Bob", "from_id": "user222", "file": "stickers/sticker.webp", "media_type": "sticker",
         "sticker_emoji": "👍", "text": [], "text_entities": []},
        {"id": 6, "type": "message", "date": "2024-01-15T15:34:00", "date_unixtime": "1705329240",
         "from": "Linux Help 🐧", "from_id": "channel1234567890", "photo": "photos/p2.jpg",
         "text": "Pinned: read the rules 📌", "text_entities": []},
        {"id": 7, "type": "message", "date": "2024-01-15T15:35:00",
         "from": None, "from_id": "user333", "text": "message of a deleted account", "text_entities": []},
        {"id": 8, "type": "message", "date_unixtime": "not-a-time", "from": "Eve", "from_id": "user444", "text": "x"},
        {"id": 9, "type": "message", "date": "2024-01-15T15:36:00", "date_unixtime": "1705329360",
         "from": "Alice", "from_id": "user111", "text": "Thanks, it works!", "reply_to_message_id": 3},
    ],
}


def _write(tmp_path: Path, name: str, doc: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def test_single_chat_export_joins_entities_skips_service_keeps_media_markers(tmp_path: Path) -> None:
    path = _write(tmp_path, "result.json", SINGLE_CHAT)
    assert detect_format(path) == "telegram-export"
    reader = read_transcript(path)
    items = list(reader)
    errors = [i for i in items if isinstance(i, TranscriptLineError)]
    msgs = [i for i in items if isinstance(i, StoredMessage)]
    chat_id = -1001234567890
    assert reader.chats == {chat_id: ChatMeta(chat_id, "supergroup", "Linux Help 🐧")}
    assert [m.message_id for m in msgs] == [2, 3, 4, 5, 6, 7, 9]
    assert all(m.chat_id == chat_id for m in msgs)
    assert msgs[1].text == ("Boot a live USB and run sudo update-grub, see https://help.ubuntu.com/community/Grub2"
                            " — then reboot.")
    assert msgs[1].reply_to == 2 and msgs[1].user_id == 222 and msgs[1].user_name == "Bob"
    assert msgs[0].date == datetime(2024, 1, 15, 14, 30, tzinfo=UTC)  # from date_unixtime, not local "15:30"
    by_id = {m.message_id: m for m in msgs}
    assert by_id[4].text == "[photo]" and by_id[5].text == "[sticker 👍]"  # media without caption: the marker
    assert by_id[6].text == "[photo] Pinned: read the rules 📌"  # media with caption: marker + caption
    assert by_id[6].user_id == -1001234567890  # signed by the channel itself
    assert by_id[7].user_id == 333 and by_id[7].user_name == "Deleted Account"
    assert by_id[7].date == datetime(2024, 1, 15, 15, 35, tzinfo=UTC)  # no unixtime: local date read as UTC
    assert [(e.line, "bad date" in e.reason) for e in errors] == [(8, True)]  # 1-based index in messages
    assert str(chat_id) in errors[0].source
    assert (reader.stats.service, reader.stats.no_text, reader.stats.messages, reader.stats.errors) == (1, 0, 7, 1)
    assert reader.attachments[(chat_id, 4)].path == "photos/photo_1@15-01-2024_15-32-00.jpg"
    assert reader.attachments[(chat_id, 5)].kind == "sticker"


def test_full_account_export_reads_every_chat_with_bot_api_ids(tmp_path: Path) -> None:
    doc = {
        "about": "Here is the data you requested. Remember: Telegram is ad free, it doesn't sell your data.",
        "personal_information": {"user_id": 111, "first_name": "Alice", "phone_number": "+00 000 000 0000"},
        "contacts": {"about": "", "list": []},
        "chats": {
            "about": "This page lists all chats from this export.",
            "list": [
                {"name": "Bob", "type": "personal_chat", "id": 222, "messages": [
                    {"id": 10, "type": "message", "date": "2023-06-01T09:00:00", "date_unixtime": "1685610000",
                     "from": "Alice", "from_id": "user111", "text": "Привет! Как дела?"},
                    {"id": 11, "type": "message", "date": "2023-06-01T09:01:00", "date_unixtime": "1685610060",
                     "from": "Bob", "from_id": "user222", "text": [{"type": "italic", "text": "Отлично"}, " 😊"]},
                ]},
                {"type": "saved_messages", "id": 111, "messages": [
                    {"id": 1, "type": "message", "date": "2023-06-02T10:00:00", "date_unixtime": "1685700000",
                     "from": "Alice", "from_id": "user111", "text": "todo: backup ~/.ssh"},
                ]},
                {"name": "Family", "type": "private_group", "id": 4455667, "messages": [
                    {"id": 1, "type": "service", "date": "2023-06-03T10:00:00", "date_unixtime": "1685786400",
                     "actor": "Alice", "actor_id": "user111", "action": "create_group", "text": ""},
                    {"id": 2, "type": "message", "date": "2023-06-03T10:05:00", "date_unixtime": "1685786700",
                     "from": "Mum", "from_id": "user555", "text": "سلام عزيزي"},
                ]},
                {"name": "News", "type": "public_channel", "id": 1500000001, "messages": [
                    {"id": 77, "type": "message", "date": "2023-06-04T10:00:00", "date_unixtime": "1685872800",
                     "from": "News", "from_id": "channel1500000001", "text": "新闻：今天天气很好"},
                ]},
            ],
        },
        "left_chats": {
            "about": "This page lists all supergroups and channels from this export that you've left.",
            "list": [
                {"name": "Old group", "type": "private_supergroup", "id": 987654321, "messages": [
                    {"id": 5, "type": "message", "date": "2020-01-01T00:00:00", "date_unixtime": "1577836800",
                     "from": "Carol", "text": "bye", "reply_to_message_id": 4},
                ]},
            ],
        },
    }
    path = _write(tmp_path, "result.json", doc)
    assert detect_format(path) == "telegram-export"
    reader = read_transcript(path)
    msgs = list(reader)
    assert all(isinstance(m, StoredMessage) for m in msgs)
    assert reader.chats == {
        222: ChatMeta(222, "private", "Bob"),
        111: ChatMeta(111, "private", "Saved Messages"),
        -4455667: ChatMeta(-4455667, "group", "Family"),
        -1001500000001: ChatMeta(-1001500000001, "channel", "News"),
        -100987654321: ChatMeta(-100987654321, "supergroup", "Old group"),
    }
    got = [(m.chat_id, m.message_id, m.user_id, m.text) for m in msgs]
    assert got == [
        (222, 10, 111, "Привет! Как дела?"),
        (222, 11, 222, "Отлично 😊"),
        (111, 1, 111, "todo: backup ~/.ssh"),
        (-4455667, 2, 555, "سلام عزيزي"),
        (-1001500000001, 77, -1001500000001, "新闻：今天天气很好"),
        (-100987654321, 5, derived_user_id("Carol"), "bye"),  # no from_id: derived from the name
    ]
    assert msgs[-1].reply_to == 4 and msgs[-1].date == datetime(2020, 1, 1, tzinfo=UTC)
    assert reader.stats.service == 1


def test_bot_api_chat_id_mapping() -> None:
    assert bot_api_chat_id(222, "personal_chat") == 222
    assert bot_api_chat_id(333, "bot_chat") == 333
    assert bot_api_chat_id(4455667, "private_group") == -4455667
    assert bot_api_chat_id(1234567890, "private_supergroup") == -1001234567890
    assert bot_api_chat_id(1234567890, "public_channel") == -1001234567890
    assert bot_api_chat_id(-1001234567890, "public_supergroup") == -1001234567890  # already Bot-API form


# ---------------------------------------------------------------- format detection


@pytest.mark.parametrize(
    "content",
    ["", "\n\n", "just some text\nmore text\n", "[1, 2, 3]", '{"name": "x", "type": "personal_chat"}',
     '{"chat_id": 1}\n'],
)
def test_neither_format_raises_transcript_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TranscriptError):
        detect_format(path)
    with pytest.raises(TranscriptError):
        read_transcript(path)


def test_missing_file_raises_transcript_error(tmp_path: Path) -> None:
    with pytest.raises(TranscriptError):
        read_transcript(tmp_path / "nope.jsonl")


def test_jsonl_with_bad_first_line_is_still_jsonl(tmp_path: Path) -> None:
    lines = _lines(SLICE)[:20]
    path = tmp_path / "t.jsonl"
    path.write_text("\ufeff{oops\n" + "\n".join(lines) + "\n", encoding="utf-8")  # BOM + broken first line
    assert detect_format(path) == "jsonl"
    items = list(read_transcript(path))
    assert isinstance(items[0], TranscriptLineError) and items[0].line == 1
    assert len(items) == 21


def test_minified_single_line_export_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps(SINGLE_CHAT), encoding="utf-8")
    assert detect_format(path) == "telegram-export"
    assert len([m for m in read_transcript(path) if isinstance(m, StoredMessage)]) == 7


# ---------------------------------------------------------------- derived user ids


def test_derived_user_ids_are_stable_distinct_and_out_of_telegram_range() -> None:
    nicks = sorted({m.user_name for m in read_transcript(SLICE)})
    ids = [derived_user_id(n) for n in nicks]
    assert len(set(ids)) == len(nicks)  # distinct on real nicks
    assert all(DERIVED_ID_BASE <= i < 2 * DERIVED_ID_BASE and is_derived_user_id(i) for i in ids)
    assert not is_derived_user_id(7_000_000_000)  # a real (large) Telegram user id
    assert derived_user_id("ActionParsnip") != derived_user_id("actionparsnip")
    # same value in another process with another hash seed (no Python hash())
    code = "import sys; sys.path.insert(0, sys.argv[1]); from memory.transcripts import derived_user_id as d; print(d('ActionParsnip'), d('Ёжик 🦔'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(derived_user_id("ActionParsnip")), str(derived_user_id("Ёжик 🦔"))]
    # pinned literals: changing the derivation would split every imported nick's history in two
    assert derived_user_id("ActionParsnip") == 5692773786154265
    assert derived_user_id("ziggi") == 7201934948880757


def test_export_polls_locations_and_contacts_become_text(tmp_path: Path) -> None:
    doc = {"name": "Club", "type": "private_group", "id": 42, "messages": [
        {"id": 1, "type": "message", "date_unixtime": "1700000000", "from": "Ann", "from_id": "user1", "text": "",
         "poll": {"question": "Lunch today?", "closed": False, "total_voters": 2,
                  "answers": [{"text": "pizza", "voters": 1, "chosen": False}, {"text": "sushi", "voters": 1, "chosen": True}]}},
        {"id": 2, "type": "message", "date_unixtime": "1700000060", "from": "Ann", "from_id": "user1", "text": "",
         "location_information": {"latitude": 52.52, "longitude": 13.405}},
        {"id": 3, "type": "message", "date_unixtime": "1700000120", "from": "Ann", "from_id": "user1", "text": "",
         "contact_information": {"first_name": "Bob", "last_name": "Lee", "phone_number": "+10000000000"}},
    ]}
    msgs = [m for m in read_transcript(_write(tmp_path, "result.json", doc)) if isinstance(m, StoredMessage)]
    assert [m.text for m in msgs] == ["[poll] Lunch today? — pizza / sushi", "[location 52.52000, 13.40500]", "[contact Bob Lee]"]
    assert not any("+1000" in m.text for m in msgs)  # a shared phone number is not kept


def test_a_truncated_export_is_called_truncated(tmp_path: Path) -> None:
    from memory.errors import TranscriptError

    text = json.dumps(SINGLE_CHAT, ensure_ascii=False, indent=1)
    path = tmp_path / "result.json"
    path.write_text(text[: len(text) * 2 // 3], encoding="utf-8")
    with pytest.raises(TranscriptError, match="truncated"):
        read_transcript(path)
    inside = text.index('"from": "', len(text) // 2) + len('"from": "') + 2
    path.write_text(text[:inside], encoding="utf-8")  # cut inside a string
    with pytest.raises(TranscriptError, match="is truncated"):
        read_transcript(path)
    path.write_text('{"name": "x", "messages": [}, "id": 1}', encoding="utf-8")
    with pytest.raises(TranscriptError, match="neither") as info:  # broken in the middle: not "truncated"
        read_transcript(path)
    assert "is truncated" not in str(info.value)
