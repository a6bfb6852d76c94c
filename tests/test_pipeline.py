"""The whole pipeline on real parts: transcript → supervisor → chat actor → memory → LLM → outbox.

Real DuckDB and LanceDB files in tmp_path, the real embedding model, the offline kith/recall model
(through litellm) and, where marked, litellm over real HTTP to the local test server.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from actors.events import Incoming, Sender
from actors.runtime import open_memory
from config.models import Config, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from memory.importer import import_transcript
from memory.transcripts import read_transcript
from tests.llm_server import llm_server
from transports.local import IdAllocator, LocalOutbox
from transports.replay import replay, respond_policy

pytestmark = pytest.mark.anyio

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ubuntu-irc"
SLICE_A = DATA / "2009-03-03_10.jsonl"
SLICE_B = DATA / "2011-05-29_19.jsonl"


def config(**models) -> Config:
    settings = Settings(**({"models": {"recall": ModelSpec(model="kith/recall"), **models}} if models else {}))
    return Config(settings=settings, tiers=TiersConfig())


def outbox_factory(holder: dict):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    return make


def messages_of(path: Path):
    return [m for m in read_transcript(path) if hasattr(m, "chat_id")]


def db_rows(data_dir: Path, sql: str):
    con = duckdb.connect(str(data_dir / "kith.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.slow
async def test_full_replay_of_a_real_transcript(tmp_path, st_model):
    msgs = messages_of(SLICE_A)
    questions = [m for m in msgs if m.text.rstrip().endswith("?")]
    holder: dict = {}
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model) as rt:
        report = await replay(rt, SLICE_A, policy=respond_policy("questions"))
        stored_vectors = await rt.memory.vectors.count(msgs[0].chat_id)
    sent = holder["outbox"].sent
    assert report.messages == len(msgs)
    assert report.line_errors == []
    assert report.replies == len(questions) == len(sent) > 50
    assert report.errors == 0
    # every reply answers its question and quotes only this chat's memories
    assert {m.reply_to for m in sent} == {q.message_id for q in questions}
    chat = msgs[0].chat_id
    assert all(h.chat_id == chat for t in report.turns for h in t.hits)
    assert sum(1 for m in sent if m.text.startswith("From this chat's memory")) > len(sent) // 2
    # everything is stored: the transcript, the replies, usage per reply, and the memories
    (n_msgs,) = db_rows(tmp_path, f"SELECT count(*) FROM messages WHERE chat_id = {chat}")[0]
    assert n_msgs == len(msgs) + len(sent)
    (n_usage,) = db_rows(tmp_path, "SELECT count(*) FROM usage")[0]
    assert n_usage == len(sent)
    assert stored_vectors == sum(1 for m in msgs if m.text.strip())
    assert report.latency(50) > 0 and report.latency(99) >= report.latency(50)


async def test_group_memory_never_leaks_into_another_chat(tmp_path, st_model):
    a, b = messages_of(SLICE_A), messages_of(SLICE_B)
    chat_a, chat_b = a[0].chat_id, b[0].chat_id
    assert chat_a != chat_b
    async with open_memory(config(), tmp_path, model=st_model) as memory:
        await import_transcript(memory, SLICE_A)
        await import_transcript(memory, SLICE_B)
        ids_a = {m.message_id for m in a}
        # queries drawn from chat B's own texts (they match B best) and generic ones
        queries = [m.text for m in b[::40]] + ["ubuntu", "how do I install", "", "?", "ايش", "问题", "nvidia driver"]
        for q in queries:
            for mode in ("hybrid", "vector", "fts"):
                recall = await memory.recall(chat_a, q, 10, mode=mode)
                assert all(h.chat_id == chat_a for h in recall.hits), (q, mode)
                assert all(h.message_id in ids_a for h in recall.hits)
        # and the bot itself, asked in chat A about something only B discussed, quotes only chat A
    holder: dict = {}
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model) as rt:
        turns = []
        rt.services.on_turn = turns.append
        q = b[len(b) // 2].text
        await rt.supervisor.tell(chat_a, Incoming(chat_a, "supergroup", 10**6, Sender(42, "asker"), q, datetime.now(UTC), respond=True))
        await rt.supervisor.wait_all_idle()
    assert turns and turns[0].responded
    assert all(h.chat_id == chat_a for h in turns[0].hits)


async def test_importing_the_same_file_twice_stores_each_message_once(tmp_path, st_model):
    msgs = messages_of(SLICE_A)
    async with open_memory(config(), tmp_path, model=st_model) as memory:
        first = await import_transcript(memory, SLICE_A)
        second = await import_transcript(memory, SLICE_A)
        assert await memory.store.messages.count(msgs[0].chat_id) == len(msgs)
        assert await memory.vectors.count(msgs[0].chat_id) == first.embedded
    assert first.read == second.read == len(msgs)
    assert second.embedded == 0 and second.already_known == len(msgs)


async def test_a_malformed_line_is_reported_with_its_number_and_the_rest_is_imported(tmp_path, st_model):
    lines = SLICE_A.read_text(encoding="utf-8").splitlines()[:20]
    lines[4] = '{"chat_id": -5, "message_id": "not a number", "date": "2009-03-03T10:00:00Z", "user": "x", "text": "y"}'
    lines[9] = "{ this is not json"
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    async with open_memory(config(), tmp_path / "data", model=st_model) as memory:
        report = await import_transcript(memory, path)
        assert [e.line for e in report.errors] == [5, 10]
        assert report.read == 18
        assert await memory.store.messages.count() == 18


async def test_empty_huge_and_non_latin_messages_survive_a_turn(tmp_path, st_model):
    texts = ["", "x" * 100_000, "مرحبا، كيف حالك؟", "你好，世界！今天天气怎么样？", "🙂👍🏽 emoji only", "Ünïcödé ß ø å"]
    holder: dict = {}
    turns = []
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model, on_turn=turns.append) as rt:
        for i, text in enumerate(texts, 1):
            await rt.supervisor.tell(7, Incoming(7, "private", i, Sender(7, "Zoë"), text, datetime.now(UTC)))
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
        stored = {m.message_id: m.text for m in await rt.memory.store.messages.get(7, list(range(1, len(texts) + 1)))}
    assert stored == {i: t for i, t in enumerate(texts, 1)}
    assert len(turns) == len(texts) and not any(t.error for t in turns)
    assert [t.responded for t in turns] == [False] + [True] * (len(texts) - 1)  # nothing to answer in an empty message
    assert len(holder["outbox"].sent) == len(texts) - 1


class CrashOnceOutbox(LocalOutbox):
    """A transport that fails unexpectedly on its first reply (the outermost boundary)."""

    crashed = False

    async def stream(self, chat_id, *, reply_to=None, thread_id=None):
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("transport exploded mid-turn")
        return await super().stream(chat_id, reply_to=reply_to, thread_id=thread_id)


async def test_an_actor_that_raises_mid_turn_is_restarted_and_loses_nothing(tmp_path, st_model, caplog):
    holder: dict = {}

    def make(memory):
        holder["outbox"] = CrashOnceOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["outbox"]

    async with open_runtime(config(), tmp_path, make, model=st_model) as rt:
        now = datetime.now(UTC)
        await rt.supervisor.tell(3, Incoming(3, "private", 1, Sender(3, "ann"), "first question?", now))
        await rt.supervisor.tell(3, Incoming(3, "private", 2, Sender(3, "ann"), "second question?", now))
        await rt.supervisor.wait_all_idle()
        assert rt.supervisor.stats.restarted == 1
        await rt.memory.flush()
        stored = await rt.memory.store.messages.get(3, [1, 2])
    assert [m.text for m in stored] == ["first question?", "second question?"]  # the crashed turn's message is kept
    assert [m.reply_to for m in holder["outbox"].sent] == [2]  # the next event was handled
    assert "actor crashed" in caplog.text


async def test_a_turn_through_litellm_over_http_streams_and_records_usage(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("KITH_TEST_KEY", "sk-test")
    cfg = config(
        remote=ModelSpec(model="openai/ok-remote", api_base=llm_server.base_url, api_key_env="KITH_TEST_KEY", context_tokens=4096),
    )
    cfg = Config(settings=cfg.settings.model_copy(update={"default_model": "remote"}), tiers=cfg.tiers)
    holder: dict = {}
    turns = []
    async with open_memory(cfg, tmp_path, model=st_model) as memory:
        await import_transcript(memory, SLICE_A)
    async with open_runtime(cfg, tmp_path, outbox_factory(holder), model=st_model, on_turn=turns.append) as rt:
        chat = messages_of(SLICE_A)[0].chat_id
        await rt.supervisor.tell(
            chat, Incoming(chat, "supergroup", 10**6, Sender(9, "kim"), "@kith which package has Python.h?", datetime.now(UTC), mentions_bot=True)
        )
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
    (turn,) = turns
    assert turn.error is None and turn.responded and turn.model == "remote"
    assert turn.prompt_tokens > 0 and turn.completion_tokens > 0
    req = llm_server.requests[-1]
    body = req.body if hasattr(req, "body") else req
    sent_messages = json.dumps(body)
    assert "Python.h" in sent_messages  # the recalled memory reached the model
    assert "kim: @kith which package has Python.h?" in sent_messages  # the speaker is named
    assert "Answer in English unless the user asks for another language." in sent_messages
    rows = db_rows(tmp_path, "SELECT model, prompt_tokens, completion_tokens FROM usage")
    assert rows == [("remote", turn.prompt_tokens, turn.completion_tokens)]
    assert holder["outbox"].sent[-1].text == turn.reply_text


async def test_group_messages_without_a_trigger_are_remembered_not_answered(tmp_path, st_model):
    holder: dict = {}
    turns = []
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model, on_turn=turns.append) as rt:
        now = datetime.now(UTC)
        send = rt.supervisor.tell
        await send(-100, Incoming(-100, "supergroup", 1, Sender(1, "a"), "the wifi password is hunter2", now))
        await send(-100, Incoming(-100, "supergroup", 2, Sender(2, "b"), "what is it again?", now))
        await send(-100, Incoming(-100, "supergroup", 3, Sender(2, "b"), "@kith what is the wifi password?", now, mentions_bot=True))
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
        assert await rt.memory.store.messages.count(-100) == 4
    assert [t.responded for t in turns] == [False, False, True]
    assert len(holder["outbox"].sent) == 1


async def test_a_redelivered_message_is_stored_and_answered_once(tmp_path, st_model):
    holder: dict = {}
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model) as rt:
        ev = Incoming(5, "private", 11, Sender(5, "eve"), "hello there?", datetime.now(UTC))
        await rt.supervisor.tell(5, ev)
        await rt.supervisor.tell(5, ev)
        await rt.supervisor.wait_all_idle()
        await rt.memory.flush()
        assert await rt.memory.store.messages.count(5) == 2  # the message and one reply
    assert len(holder["outbox"].sent) == 1


async def test_shutdown_drains_every_queued_turn(tmp_path, st_model):
    holder: dict = {}
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model) as rt:
        for chat in range(1, 6):
            for i in range(1, 4):
                await rt.supervisor.tell(chat, Incoming(chat, "private", i, Sender(chat, "u"), f"question {i}?", datetime.now(UTC)))
    # leaving the runtime drained all 15 turns and committed them
    async with open_memory(config(), tmp_path, model=st_model) as memory:
        assert await memory.store.messages.count() == 30
    assert len(holder["outbox"].sent) == 15



class BlockedOutbox(LocalOutbox):
    """A transport that can never deliver to this user (they blocked the bot)."""

    async def stream(self, chat_id, *, reply_to=None, thread_id=None):
        from actors.errors import ActorError

        raise ActorError("Forbidden: the user blocked the bot")


async def test_an_undeliverable_reply_is_logged_not_a_crash(tmp_path, st_model):
    turns = []
    async with open_runtime(config(), tmp_path, lambda m: BlockedOutbox(IdAllocator(m.store.messages.max_id)), model=st_model,
                            on_turn=turns.append) as rt:
        await rt.supervisor.tell(4, Incoming(4, "private", 1, Sender(4, "x"), "hi?", datetime.now(UTC)))
        await rt.supervisor.wait_all_idle()
        assert rt.supervisor.stats.restarted == 0
        await rt.memory.flush()
        assert await rt.memory.store.messages.count(4) == 1
    assert turns[0].error.startswith("undelivered")


async def test_a_reply_to_the_bot_is_recognised_from_the_store_after_a_restart(tmp_path, st_model):
    holder: dict = {}
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model) as rt:
        await rt.supervisor.tell(-7, Incoming(-7, "supergroup", 1, Sender(1, "a"), "@kith ping?", datetime.now(UTC), mentions_bot=True))
        await rt.supervisor.wait_all_idle()
    bot_reply = holder["outbox"].sent[0].message_id
    turns = []
    async with open_runtime(config(), tmp_path, outbox_factory(holder), model=st_model, on_turn=turns.append) as rt:
        # the transport no longer knows who sent bot_reply (a new process); the actor looks it up
        await rt.supervisor.tell(-7, Incoming(-7, "supergroup", 2, Sender(2, "b"), "and what else", datetime.now(UTC), reply_to=bot_reply))
        await rt.supervisor.tell(-7, Incoming(-7, "supergroup", 3, Sender(2, "b"), "unrelated chatter", datetime.now(UTC), reply_to=2))
        await rt.supervisor.wait_all_idle()
    assert [t.responded for t in turns] == [True, False]


async def test_the_model_is_told_to_answer_in_the_members_language(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("KITH_TEST_KEY", "sk-test")
    cfg = config(remote=ModelSpec(model="openai/ok-remote", api_base=llm_server.base_url, api_key_env="KITH_TEST_KEY"))
    cfg = Config(settings=cfg.settings.model_copy(update={"default_model": "remote"}), tiers=cfg.tiers)

    def system_prompt() -> str:
        body = [r for r in llm_server.requests if r.path.endswith("/chat/completions")][-1].body
        return body["messages"][0]["content"]

    async with open_runtime(cfg, tmp_path, outbox_factory({}), model=st_model) as rt:
        async def say(chat: int, ctype: str, text: str) -> str:
            await rt.supervisor.tell(chat, Incoming(chat, ctype, 10**6 + len(llm_server.requests), Sender(9, "Оля"), text,
                                                    datetime.now(UTC), mentions_bot=True))
            await rt.supervisor.wait_all_idle()
            return system_prompt()

        assert "Answer in Russian" in await say(9, "private", "где моя видеокарта?")
        assert "Answer in Ukrainian" in await say(9, "private", "де моя відеокарта?")
        assert "Answer in German" in await say(9, "private", "Wo ist meine Grafikkarte, die ich gestern gekauft habe?")
        assert "Answer in" not in await say(9, "private", "ok?")  # nothing tells: the model decides
        # a group whose admins set /settings language: that language, whatever a member writes in
        await rt.memory.store.settings.set_chat(-77, {"language": "fr"})
        assert "Answer in French" in await say(-77, "supergroup", "@kith где моя видеокарта?")
