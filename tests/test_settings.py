"""Chat and member settings as typed models (``actors.settings``): what a stored JSON object becomes,
what is written back, and a group's ``/settings`` change reaching the trigger through the real
pipeline (stores in tmp_path, the real embedding model, kith/recall)."""
from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from actors.settings import ChatSettings, UserSettings
from config.models import BotSettings, Config, ModelSpec, Settings, TiersConfig
from features.app import open_runtime
from tests.test_commands import ADMIN, GROUP, MEMBER, Chat
from transports.local import IdAllocator, LocalOutbox


def test_a_bad_stored_value_is_logged_its_default_applies_and_the_other_keys_are_kept(caplog) -> None:
    raw = {"always_on": "perhaps", "allowed_users": [1, "x"], "keywords": ["kith", "бот"], "persona": "a pirate",
           "future": {"x": 1}}
    with caplog.at_level(logging.INFO, logger="actors.settings"):
        s = ChatSettings.load(raw, where="chat -100")
    assert s.always_on is None and s.allowed_users == ()  # the defaults
    assert s.keywords == ("kith", "бот") and s.persona == "a pirate" and s.model_extra == {"future": {"x": 1}}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "chat -100" in warned[0] and "['allowed_users', 'always_on']" in warned[0]
    assert s.stored() == {"keywords": ["kith", "бот"], "persona": "a pirate", "future": {"x": 1}}
    long = UserSettings.load({"timezone": "X" * 65, "model": "fast"}, where="user 7")
    assert long.timezone is None and long.model == "fast"


def test_unknown_keys_round_trip_through_stored_and_with(caplog) -> None:
    raw = {"model": "fast", "colour": "blue", "nested": {"a": [1, None]}}
    with caplog.at_level(logging.INFO, logger="actors.settings"):
        u = UserSettings.load(raw, where="user 1")
    assert "user 1" in caplog.text and "['colour', 'nested']" in caplog.text
    assert u.model == "fast" and u.stored() == raw
    assert u.with_(role="pirate").stored() == {**raw, "role": "pirate"}
    assert ChatSettings.load(None, where="chat 1").stored() == {} == ChatSettings().stored()


def test_with_none_removes_a_setting_and_leaves_the_original_as_it_was() -> None:
    s = ChatSettings.load({"keywords": ["a"], "always_on": True, "plugins": ["time"]}, where="chat 1")
    t = s.with_(keywords=None, plugins=None)
    assert t.keywords is None and t.plugins is None and t.stored() == {"always_on": True}
    assert s.keywords == ("a",) and s.stored() == {"keywords": ["a"], "always_on": True, "plugins": ["time"]}
    # an empty list is a choice (no keywords at all), not the default
    assert s.with_(keywords=[]).stored() == {"keywords": [], "always_on": True, "plugins": ["time"]}
    with pytest.raises(ValidationError):  # frozen: a change is a new model
        s.keywords = ("b",)  # type: ignore[misc]


@pytest.mark.anyio
async def test_a_groups_keywords_change_reaches_the_trigger_and_unknown_keys_stay_stored(tmp_path, st_model, caplog) -> None:
    models = {"recall": ModelSpec(model="kith/recall")}
    config = Config(settings=Settings(models=models, bot=BotSettings(keywords=("kith",))), tiers=TiersConfig())
    holder: dict = {}

    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), admins={(GROUP, ADMIN.user_id)})
        return holder["outbox"]

    async with open_runtime(config, tmp_path, make, model=st_model) as rt:
        store = rt.memory.store
        await store.settings.set_chat(GROUP, {"keywords": ["linux"], "always_on": "perhaps", "theme": "dark"})
        chat = Chat(rt, holder["outbox"])
        with caplog.at_level(logging.WARNING, logger="actors.settings"):
            await chat.say(GROUP, MEMBER, "kith, are you there")
        assert chat.turns[-1].responded is False  # the group's keywords replace bot.keywords
        assert f"chat {GROUP}" in caplog.text and "always_on" in caplog.text
        await chat.say(GROUP, MEMBER, "which linux is best")
        assert chat.turns[-1].responded is True

        ok = await chat.cmd(GROUP, ADMIN, "settings", "keywords kernel")
        assert "keywords: kernel" in ok.text and "always_on: off" in ok.text
        await chat.say(GROUP, MEMBER, "which linux is best now")
        assert chat.turns[-1].responded is False
        await chat.say(GROUP, MEMBER, "my Kernel panics")
        assert chat.turns[-1].responded is True
        # the bad value is gone; offline_intro: the turn's own change (the offline model said what it is)
        assert await store.settings.chat(GROUP) == {"keywords": ["kernel"], "theme": "dark", "offline_intro": True}

        await chat.cmd(GROUP, ADMIN, "settings", "keywords default")  # back to bot.keywords
        assert await store.settings.chat(GROUP) == {"theme": "dark", "offline_intro": True}
        await chat.say(GROUP, MEMBER, "kith, are you there now")
        assert chat.turns[-1].responded is True
        await chat.say(GROUP, MEMBER, "my kernel panics again")
        assert chat.turns[-1].responded is False
