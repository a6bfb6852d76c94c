"""Chat settings reach the model request (litellm over real HTTP to the local test server): a group's
persona and a private /role go into the system message, `always_on` answers unaddressed messages,
`persist off` answers without storing anything."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.events import CommandEvent, Incoming, Sender
from config.models import Config, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from tests.llm_server import llm_server as llm_server
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

GROUP, ANN = -100555, 21
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def cfg(llm_server) -> Config:
    return Config(settings=Settings(models={"recall": ModelSpec(model="kith/recall"),
                                            "ok": ModelSpec(model="openai/ok-model", api_base=llm_server.base_url)},
                                    default_model="ok"), tiers=TiersConfig())


class Chat:
    def __init__(self, rt, llm_server) -> None:
        self.rt, self.server, self.n = rt, llm_server, 0

    async def say(self, chat_id: int, text: str, *, command: str | None = None) -> None:
        self.n += 1
        kind = "private" if chat_id > 0 else "supergroup"
        when = T0 + timedelta(minutes=self.n)
        if command is not None:
            ev = CommandEvent(chat_id, kind, self.n, Sender(ANN, "Ann"), command, text, when)
        else:  # "@bot …" is a mention, as the transport reports it
            mention = text.startswith("@bot ")
            ev = Incoming(chat_id, kind, self.n, Sender(ANN, "Ann"), text.removeprefix("@bot "), when, mentions_bot=mention)
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_all_idle()

    def requests(self) -> list[dict]:
        return [r.body for r in self.server.requests if r.path.endswith("/chat/completions")]


async def test_persona_role_always_on_and_persist_off_reach_the_model(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    holder = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(cfg(llm_server), tmp_path, make, model=st_model) as rt:
        chat = Chat(rt, llm_server)
        store = rt.memory.store

        await chat.say(GROUP, "persona Talk like a ship's captain.", command="settings")
        await chat.say(GROUP, "a quiet remark nobody addressed to the bot")
        assert chat.requests() == []  # not addressed: remembered, not answered
        await chat.say(GROUP, "@bot what is the plan for today?")
        system = chat.requests()[-1]["messages"][0]
        assert system["role"] == "system" and "ship's captain" in system["content"]

        await chat.say(ANN, "You are a patient tutor who answers in haiku.", command="role")
        await chat.say(ANN, "explain recursion")
        private_system = chat.requests()[-1]["messages"][0]["content"]
        assert "haiku" in private_system and "captain" not in private_system
        await chat.say(GROUP, "@bot and tomorrow?")
        group_system = chat.requests()[-1]["messages"][0]["content"]
        assert "captain" in group_system and "haiku" not in group_system  # a private role stays private

        await chat.say(GROUP, "always_on on", command="settings")
        before = len(chat.requests())
        await chat.say(GROUP, "an unaddressed question about the weather")
        assert len(chat.requests()) == before + 1
        assert "unaddressed question about the weather" in str(chat.requests()[-1]["messages"][-1]["content"])

        await chat.say(GROUP, "persist off", command="settings")
        stored = await store.messages.count(GROUP)
        await chat.say(GROUP, "@bot the secret plan is not to be kept")
        assert len(chat.requests()) == before + 2  # answered ...
        assert "secret plan" in str(chat.requests()[-1]["messages"][-1]["content"])
        await rt.memory.flush()
        assert await store.messages.count(GROUP) == stored  # ... and nothing stored, neither it nor the reply
        assert not any("secret" in h.text for h in (await rt.memory.recall(GROUP, "the secret plan", 5)).hits)
