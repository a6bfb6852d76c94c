"""Rendering, splitting and update conversion: the pure parts of the Telegram transport."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from pyrogram import enums

from actors.services import BotIdentity
from transports.telegram.render import Entity, Part, render, render_parts, split, to_pyrogram, utf16_len, utf16_slice
from transports.telegram.updates import chat_type_of, mentions_bot, parse_command


def check(part: Part, parts: list[Part], limit: int) -> None:
    assert "".join(p.text for p in parts) == part.text
    for p in parts:
        assert 0 < utf16_len(p.text) <= limit
        for e in p.entities:
            assert e.length > 0 and e.offset >= 0 and e.offset + e.length <= utf16_len(p.text)


def test_split_prefers_paragraphs_then_lines_then_words():
    para = "word " * 150  # 750 units
    text = (para.strip() + "\n\n") * 8
    parts = split(Part(text), 2000)
    assert all(p.text.endswith("\n\n") for p in parts[:-1])
    lines = ("line " * 30 + "\n") * 40  # no blank lines
    parts = split(Part(lines), 1000)
    assert all(p.text.endswith("\n") for p in parts[:-1])
    words = "word " * 1000
    parts = split(Part(words), 1000)
    assert all(p.text.endswith(" ") for p in parts[:-1])
    check(Part(words), parts, 1000)


def test_split_does_not_cut_an_entity_when_a_boundary_outside_exists():
    text = "intro paragraph\n\n" + "x " * 400 + "\n\n" + "bold words " * 50
    bold_at = utf16_len(text) - len("bold words " * 50)
    part = Part(text, (Entity("bold", bold_at, len("bold words " * 50) - 1),))
    parts = split(part, 900)
    assert len(parts) == 2
    (bold,) = parts[1].entities
    assert utf16_slice(parts[1].text, bold.offset, bold.length) == ("bold words " * 50)[:-1]


def test_an_entity_longer_than_a_message_is_clipped_into_every_part():
    code = "\n".join(f"print({i})" for i in range(1000))
    part = render(f"```python\n{code}\n```")
    parts = split(part, 4096)
    assert len(parts) >= 3
    assert all(len(p.entities) == 1 and p.entities[0].type == "pre" and p.entities[0].language == "python" for p in parts)
    assert sum(p.entities[0].length for p in parts) == part.entities[0].length
    check(part, parts, 4096)


def test_surrogate_pairs_are_never_split():
    text = "🙂" * 5000  # 10,000 units, no boundary at all: hard cuts
    parts = split(Part(text), 4096)
    assert [utf16_len(p.text) for p in parts] == [4096, 4096, 1808]
    assert "".join(p.text for p in parts) == text


@pytest.mark.parametrize("seed", range(30))
def test_split_fuzz(seed):
    rng = random.Random(seed)
    alphabet = ["a", "b", " ", "\n", "\n\n", "é", "你", "🙂", "👍🏽", "word ", "\t"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3000)))
    total = utf16_len(text)
    entities = []
    for _ in range(rng.randint(0, 30)):
        a = rng.randint(0, max(0, total - 1))
        b = rng.randint(a + 1, min(total, a + 400)) if a < total else a + 1
        if b <= total:
            entities.append(Entity(rng.choice(["bold", "italic", "code", "pre"]), a, b - a))
    part = Part(text, tuple(entities))
    limit = rng.choice([2, 7, 64, 500, 4096])
    parts = split(part, limit)
    if not text.strip():
        assert parts == []
        return
    squash = lambda s: "".join(s.split())  # noqa: E731
    assert squash("".join(p.text for p in parts)) == squash(text)  # only whitespace-only parts may be dropped
    for p in parts:
        assert 0 < utf16_len(p.text) <= limit
        for e in p.entities:
            assert e.length > 0 and e.offset >= 0 and e.offset + e.length <= utf16_len(p.text)
    check(part, split(part, limit, drop_blank=False), limit)


def test_render_gives_entities_pyrogram_accepts():
    part = render("**bold** _it_ `code` [link](https://example.org) ~~gone~~ ||secret||\n\n```py\nx = 1\n```")
    kinds = {e.type for e in to_pyrogram(part.entities)}
    assert {enums.MessageEntityType.BOLD, enums.MessageEntityType.ITALIC, enums.MessageEntityType.CODE,
            enums.MessageEntityType.TEXT_LINK, enums.MessageEntityType.PRE} <= kinds
    link = next(e for e in to_pyrogram(part.entities) if e.type == enums.MessageEntityType.TEXT_LINK)
    assert link.url == "https://example.org"
    assert render_parts("   \n ") == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/help", ("help", "")),
        ("/HELP@Kith_Bot  some args ", ("help", "some args")),
        ("/model@kith_bot\nsecond line", ("model", "second line")),
        ("/help@other_bot", False),
        ("/etc/passwd is a file", None),
        ("not a command", None),
        ("/", None),
    ],
)
def test_parse_command(text, expected):
    assert parse_command(text, "kith_bot") == expected


def test_mentions_are_found_by_utf16_offsets():
    bot = BotIdentity(7, "Kith", "kith_bot")
    text = "👍🏽 @Kith_Bot hi"
    mention = SimpleNamespace(type=enums.MessageEntityType.MENTION, offset=5, length=9, user=None)
    assert mentions_bot(text, [mention], bot)
    other = SimpleNamespace(type=enums.MessageEntityType.MENTION, offset=5, length=9, user=None)
    assert not mentions_bot("👍🏽 @someone_ hi", [other], bot)
    named = SimpleNamespace(type=enums.MessageEntityType.TEXT_MENTION, offset=0, length=2, user=SimpleNamespace(id=7))
    assert mentions_bot("Kith hi", [named], bot)


def test_chat_types():
    assert chat_type_of(SimpleNamespace(type=enums.ChatType.PRIVATE)) == "private"
    assert chat_type_of(SimpleNamespace(type=enums.ChatType.FORUM)) == "supergroup"
    assert chat_type_of(SimpleNamespace(type=enums.ChatType.GROUP)) == "group"
    assert chat_type_of(SimpleNamespace(type=enums.ChatType.CHANNEL)) == "channel"
    assert chat_type_of(SimpleNamespace(type=enums.ChatType.DIRECT)) is None
