"""Query planning (issue #27, ``actors.query_plan``): a member's question split into search queries
by ``memory.query_model`` before recall, their hits fused with the question's (``Memory.recall_many``);
over litellm and real HTTP to the local test server, real DuckDB, LanceDB and the embedding model."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from actors.events import Incoming, Sender
from actors.query_plan import MAX_QUERIES, parse_queries, planning_model
from config.models import Config, Features, MemorySettings, ModelSpec, Settings, Tier, TiersConfig
from features.app import open_runtime
from memory.types import StoredMessage
from tests.llm_server import llm_server
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

ANN, BOB = Sender(41, "Ann"), Sender(42, "Bob")
T0 = datetime(2026, 5, 1, 9, tzinfo=UTC)
HISTORY = [
    "I signed up for a pottery class at the community centre",
    "we went camping by the lake with the kids last weekend",
    "the bus was late again this morning",
    "my laptop fan is making a weird noise",
    "did anyone watch the match yesterday?",
    "I need to renew my passport before June",
    "the new bakery on the corner sells great rye bread",
    "remind me to water the plants",
    "work has been really busy this month",
    "I finally fixed the leaking tap in the kitchen",
    "our neighbours got a new puppy",
    "I prefer tea over coffee in the afternoon",
]


def escaped(text: str) -> str:
    """``text`` with every letter as a JSON \\u escape: the planner's reply says these words, while the
    question that carries the scripted reply (the test server's ANSWER line) does not hold them."""
    return "".join(f"\\u{ord(c):04x}" if c.isalpha() else c for c in text)


def config(server, *, planner: str = "openai/ok-planner", free_planning: bool = True, timeout_s: float = 3.0) -> Config:
    settings = Settings(models={"recall": ModelSpec(model="kith/recall"),
                                "planner": ModelSpec(model=planner, api_base=server.base_url)},
                        memory=MemorySettings(query_model="planner", query_timeout_s=timeout_s, recent_window=4))
    return Config(settings=settings, tiers=TiersConfig(tiers={"free": Tier(features=Features(query_planning=free_planning))}))


async def _ask(cfg: Config, tmp_path, st_model, question: str) -> tuple:
    holder: dict = {}
    turns: list = []

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(cfg, tmp_path, make, model=st_model, on_turn=turns.append) as rt:
        old = [StoredMessage(ANN.user_id, i + 1, ANN.user_id, "Ann", text, T0 + timedelta(minutes=i), imported=True)
               for i, text in enumerate(HISTORY)]
        rt.memory.remember_many(old)
        await rt.memory.flush()
        await rt.supervisor.tell(ANN.user_id, Incoming(ANN.user_id, "private", 100, ANN, question, datetime.now(UTC)))
        await rt.supervisor.wait_idle(ANN.user_id)
        usage = await rt.memory.store.usage.rows()
    return turns[-1], usage


def test_a_planners_reply_becomes_at_most_three_distinct_queries() -> None:
    q = "What does Ann do for fun?"
    assert parse_queries('{"queries": ["Ann pottery", "Ann camping"]}', q) == ["Ann pottery", "Ann camping"]
    assert parse_queries('```json\n{"queries": ["a b"]}\n```', q) == ["a b"]  # a fenced reply
    got = parse_queries(json.dumps({"queries": ["x", " x ", "X", "what does  ann do for fun?", "", 3, "y" * 300,
                                                "y", "z", "w"]}), q)
    assert got == ["x", "y", "z"] and len(got) == MAX_QUERIES  # duplicates, the question, junk and the 4th left out
    assert parse_queries('{"queries": []}', q) == []
    for bad in ("pottery, camping", '["pottery"]', '{"query": "pottery"}', '{"queries": "pottery"}'):
        assert parse_queries(bad, q) is None


def test_planning_is_off_without_a_real_model(llm_server) -> None:
    assert planning_model(config(llm_server).settings) == "planner"
    assert planning_model(Settings()) is None  # no query_model
    offline = Settings(models={"recall": ModelSpec(model="kith/recall")}, memory=MemorySettings(query_model="recall"))
    assert planning_model(offline) is None  # an offline model would only echo
    with pytest.raises(ValueError, match="memory.query_model 'nope' is not an alias"):
        Settings(memory=MemorySettings(query_model="nope"))


async def test_recall_many_fuses_the_queries_hits_and_never_leaves_the_chat(tmp_path, st_model) -> None:
    from actors.runtime import open_memory

    async with open_memory(Config(settings=Settings(), tiers=TiersConfig()), tmp_path, model=st_model) as memory:
        mine = [StoredMessage(ANN.user_id, i + 1, ANN.user_id, "Ann", t, T0 + timedelta(minutes=i)) for i, t in enumerate(HISTORY)]
        theirs = [StoredMessage(BOB.user_id, i + 1, BOB.user_id, "Bob", t, T0) for i, t in enumerate(HISTORY)]
        memory.remember_many(mine + theirs)
        await memory.flush()
        question = "What does Ann do for fun?"
        alone = await memory.recall(ANN.user_id, question, 3)
        fused = await memory.recall_many(ANN.user_id, question, ["pottery class", "camping trip", "pottery class"], 3)
        texts = [h.text for h in fused.hits]
        assert len(fused.hits) == 3 and all(h.chat_id == ANN.user_id for h in fused.hits)  # Bob's chat never
        assert HISTORY[0] in texts and HISTORY[1] in texts  # each query's best message made the top 3
        by_text = {h.text: h for h in fused.hits}
        assert "query 1: pottery class" in by_text[HISTORY[0]].stages and "query 2: camping trip" in by_text[HISTORY[1]].stages
        assert all(h.parts["rrf"] == h.score for h in fused.hits)
        assert [h.score for h in fused.hits] == sorted((h.score for h in fused.hits), reverse=True)
        # no query (or only the question again): the plain recall
        same = await memory.recall_many(ANN.user_id, question, [question, " "], 3)
        assert [h.message_id for h in same.hits] == [h.message_id for h in alone.hits]


async def test_a_turn_recalls_what_the_planners_queries_find_and_counts_the_call(tmp_path, st_model, llm_server,
                                                                                 monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    plan = '{"queries": ["' + escaped("pottery class") + '", "' + escaped("camping lake") + '"]}'
    question = f"what are my hobbies? ANSWER {plan}"
    turn, usage = await _ask(config(llm_server), tmp_path, st_model, question)
    assert turn.responded and turn.error is None
    stages = {h.text: h.stages for h in turn.hits}
    assert any(s.startswith("query 1: pottery class") for s in stages.get(HISTORY[0], ()))
    assert any(s.startswith("query 2: camping lake") for s in stages.get(HISTORY[1], ()))
    calls = [r for r in llm_server.requests if r.path.endswith("/chat/completions")]
    assert len(calls) == 1 and calls[0].body["model"] == "ok-planner"
    system, user = calls[0].body["messages"]
    assert "what are my hobbies?" in user["content"] and "hobbies" not in system["content"]  # quoted data, not instructions
    (row,) = [u for u in usage if u.kind == "query"]
    assert row.model == "planner" and row.user_id == ANN.user_id and row.prompt_tokens > 0


async def test_no_planning_for_a_tier_without_the_feature(tmp_path, st_model, llm_server, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    turn, usage = await _ask(config(llm_server, free_planning=False), tmp_path, st_model, "what are my hobbies?")
    assert turn.responded and not any("query" in s for h in turn.hits for s in h.stages)
    assert not [r for r in llm_server.requests if r.path.endswith("/chat/completions")]
    assert not [u for u in usage if u.kind == "query"]


@pytest.mark.parametrize(("planner", "reply", "logged"), [
    ("openai/ok-planner", "ANSWER I would search for pottery", "is not the queries' JSON"),
    ("openai/slow-5-planner", "", "gave no queries within 0.5 s"),
    ("openai/auth-planner", "", "failed"),
])
async def test_a_planner_that_fails_leaves_the_plain_recall(tmp_path, st_model, llm_server, monkeypatch, caplog,
                                                            planner, reply, logged) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    caplog.set_level(logging.WARNING, logger="actors.query_plan")
    turn, _ = await _ask(config(llm_server, planner=planner, timeout_s=0.5), tmp_path, st_model,
                         f"what are my hobbies? {reply}".strip())
    assert turn.responded and turn.error is None and turn.reply_text  # answered all the same
    assert not any("query" in s for h in turn.hits for s in h.stages)
    assert logged in caplog.text


async def test_the_recall_benchmarks_planning_row_recalls_with_the_planners_queries(tmp_path, st_model, llm_server,
                                                                                     monkeypatch, caplog) -> None:
    """``kith bench recall_locomo --config FILE``: the "+ query planning" row asks the file's
    ``memory.query_model`` for each question's queries, over real HTTP, and scores the fused recall;
    without a planning model there is no row."""
    from actors.runtime import open_memory
    from benchmarks import common
    from benchmarks import recall_locomo as rl

    chat = -1007
    planned = 'What does Ann do for fun?\nANSWER {"queries": ["' + escaped("pottery class") + '", "' + escaped("camping lake") + '"]}'
    chats = [(chat, {i + 1: f"D1:{i + 1}" for i in range(len(HISTORY))},
              [(planned, 1, ["D1:1", "D1:2"]), ("Was the bus late?", 4, ["D1:3"])])]
    kith_yaml = tmp_path / "kith.yaml"
    async with open_memory(Config(settings=Settings(), tiers=TiersConfig()), tmp_path / "data", model=st_model) as memory:
        memory.remember_many([StoredMessage(chat, i + 1, ANN.user_id, "Ann", text, T0 + timedelta(hours=i), imported=True)
                              for i, text in enumerate(HISTORY)])
        await memory.flush()
        monkeypatch.setenv(common.LLM_CONFIG_ENV, "")  # unset: the shipped defaults
        assert await rl._planning_row(memory, chats, [0]) is None  # the shipped defaults: no planner

        kith_yaml.write_text(f"models:\n  recall: {{model: kith/recall}}\n"
                             f"  planner: {{model: openai/ok-planner, api_base: '{llm_server.base_url}'}}\n"
                             "memory:\n  query_model: planner\n", encoding="utf-8")
        monkeypatch.setenv(common.LLM_CONFIG_ENV, str(kith_yaml))
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        foreign = [0]
        name, scores, planning = await rl._planning_row(memory, chats, foreign)
    assert name == "+ query planning (planner: openai/ok-planner)"
    assert planning["outcomes"] == {"planned": 1, "not JSON": 1}  # the echo of the second question is no JSON
    assert len(planning["plan_ms"]) == 2 and foreign == [0]
    assert scores["cat"][1][5] == 100.0  # both stories in the top 5 through the planner's queries (alone: 50)
    assert scores["cat"][4][10] == 100.0  # the plain recall of a question the planner did not split
    asked = [r for r in llm_server.requests if r.model == "ok-planner"]
    assert len(asked) == 2 and "Was the bus late?" in asked[1].body["messages"][-1]["content"]
