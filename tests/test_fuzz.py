"""Parsers fuzzed with Hypothesis: whatever a user, a transcript, an export or a config file holds,
each either parses or fails with *our* error naming where — never another exception, never a lost
line number."""
from __future__ import annotations

import json
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import valid_text
from config import ConfigError, load_config
from memory.errors import TranscriptError, TranscriptLineError
from memory.markers import clock_time, marker
from memory.transcripts import read_transcript
from memory.types import StoredMessage
from memory.vector_rows import MAX_QUERY_TERMS, fts_terms
from transports.console import file_line
from transports.telegram.updates import parse_command

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
                    st.text(max_size=30),
                    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2))  # lone surrogates
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
MESSAGE_KEYS = ["chat_id", "message_id", "date", "user", "text", "user_id", "reply_to", "thread_id", "chat_title", "role"]
EXPORT_KEYS = ["id", "type", "date", "date_unixtime", "from", "from_id", "text", "photo", "file", "file_name", "media_type",
               "mime_type", "duration_seconds", "sticker_emoji", "reply_to_message_id", "poll", "location_information",
               "contact_information", "message_thread_id"]


def _good_line(i: int) -> dict:
    return {"chat_id": -100, "message_id": i, "date": "2024-01-01T00:00:00Z", "user": "ann", "text": f"line {i}"}


@FUZZ
@given(st.lists(st.one_of(st.dictionaries(st.sampled_from(MESSAGE_KEYS), json_values, max_size=8).map(json.dumps),
                          st.text(alphabet=string.printable + "ёж😀\ud7ff", max_size=60).map(lambda t: t.replace("\n", " "))),
                min_size=1, max_size=12))
def test_every_transcript_line_is_a_message_or_an_error_with_its_number(tmp_path_factory, junk):
    lines = [json.dumps(_good_line(0))] + junk  # a first good line keeps the file recognisable as JSONL
    path = tmp_path_factory.mktemp("fuzz") / "t.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    items = list(read_transcript(path))
    numbered = [i.line for i in items if isinstance(i, TranscriptLineError)]
    assert all(isinstance(i, (StoredMessage, TranscriptLineError)) for i in items)
    assert len(items) == sum(1 for line in lines if line.strip())  # one item per non-blank line
    assert all(1 <= n <= len(lines) for n in numbered) and numbered == sorted(numbered)
    for m in items:
        if isinstance(m, StoredMessage):
            m.text.encode("utf-8")  # storable


@FUZZ
@given(st.lists(st.dictionaries(st.sampled_from(EXPORT_KEYS), json_values, max_size=10), min_size=1, max_size=8))
def test_every_export_message_is_a_message_an_error_or_a_counted_skip(tmp_path_factory, messages):
    doc = {"name": "Fuzz", "type": "private_supergroup", "id": 5, "messages": messages}
    path = tmp_path_factory.mktemp("fuzz") / "result.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    reader = read_transcript(path)
    items = list(reader)
    s = reader.stats
    assert s.messages + s.errors + s.service + s.no_text == len(messages)
    assert all(1 <= e.line <= len(messages) for e in items if isinstance(e, TranscriptLineError))
    assert set(reader.attachments) <= {(m.chat_id, m.message_id) for m in items if isinstance(m, StoredMessage)}


@FUZZ
@given(st.binary(max_size=200))
def test_a_file_of_any_bytes_is_read_or_refused_with_a_transcript_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.json"
    path.write_bytes(data)
    try:
        items = list(read_transcript(path))
    except TranscriptError:
        return
    assert all(isinstance(i, (StoredMessage, TranscriptLineError)) for i in items)


@FUZZ
@given(st.text(max_size=80), st.one_of(st.none(), st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=10)))
def test_commands_parse_or_are_not_commands(text, bot):
    got = parse_command(text, bot)
    assert got is None or got is False or (isinstance(got, tuple) and got[0] == got[0].lower() and got[0].isascii())
    if text.startswith("/") and got not in (None, False):
        assert got[1] == got[1].strip()


@FUZZ
@given(st.text(max_size=5000))
def test_full_text_terms_are_always_a_safe_query(text):
    terms = fts_terms(text)
    assert len(terms) <= MAX_QUERY_TERMS and len(set(terms)) == len(terms)
    assert all(t and t == t.lower() and not any(c in t for c in ' "():*^~+-') for t in terms)


@FUZZ
@given(st.text(max_size=40))
def test_cli_text_is_always_storable_and_file_lines_never_raise(text):
    valid_text(text).encode("utf-8")
    got = file_line("/file " + text)
    assert got is not None and isinstance(got[1], str)


@FUZZ
@given(st.sampled_from(["photo", "document", "voice", "audio", "video_note", "video", "animation", "sticker", "other"]),
       st.one_of(st.none(), st.text(max_size=20)), st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)))
def test_markers_are_one_bracketed_line(kind, name, duration):
    m = marker(kind, file_name=name.replace("\n", " ").replace("]", ")") if name else name, duration_s=duration)
    assert m.startswith("[") and m.endswith("]") and "\n" not in m
    assert duration is None or clock_time(duration).count(":") in (1, 2)


config_values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=10), scalars, max_size=3))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["bot", "models", "default_model", "memory", "media", "telegram", "image_models",
                                        "transcription", "llm", "actors", "tiers_file", "typo"]),
                       st.one_of(config_values, st.dictionaries(st.sampled_from(["name", "model", "recall_k", "ocr",
                                                                                  "allowed_users", "max_seconds"]),
                                                                 config_values, max_size=3)), max_size=4))
def test_any_kith_yaml_loads_or_names_file_and_key(tmp_path_factory, doc):
    path: Path = tmp_path_factory.mktemp("cfg") / "kith.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        cfg = load_config(path, env={})
    except ConfigError as exc:
        assert exc.file is not None or exc.key is not None, str(exc)
        return
    assert cfg.settings.default_model in cfg.settings.models
