"""The host's support contact (``bot.support``): a "Support: …" line under /help, /start, refusals and
error replies when it is set (in the member's language), none when it is not; a value that is neither
a Telegram @username nor an https:// URL is a config error naming the key. Through the real pipeline:
stores in tmp_path, the real model, litellm over HTTP to the local test server."""
from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from actors.events import CommandEvent, Incoming, Sender
from config import ConfigError, load_config
from config.models import BotSettings, Config, Features, LLMSettings, ModelSpec, Plan, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from tests.llm_server import llm_server as llm_server
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

ANN = Sender(21, "Ann")
IVAN = Sender(22, "Ivan", language_code="ru")
LINE = "Support: @kith_help"


def cfg(llm_server, support: str | None, *, default_model: str = "ok") -> Config:
    models = {"recall": ModelSpec(model="kith/recall"),
              "ok": ModelSpec(model="openai/ok-model", api_base=llm_server.base_url),
              "down": ModelSpec(model="openai/error-model", api_base=llm_server.base_url)}
    # free: no custom persona and one answer a day; a plan sells the better tier (the refusals' /billing button)
    tiers = TiersConfig(tiers={"free": Tier(features=Features(custom_persona=False), quotas=Quotas(requests_per_day={"*": 1})),
                               "premium": Tier(features=Features(custom_persona=True))},
                        plans={"month": Plan(tier="premium", days=30, price=100)})
    settings = Settings(models=models, default_model=default_model, bot=BotSettings(support=support),
                        llm=LLMSettings(num_retries=0))
    return Config(settings=settings, tiers=tiers)


class Bot:
    def __init__(self, rt, outbox: LocalOutbox) -> None:
        self.rt, self.outbox, self.n = rt, outbox, 0

    async def _go(self, chat_id: int, ev) -> str:
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)
        return self.outbox.sent[-1].text

    async def cmd(self, who: Sender, command: str, args: str = "") -> str:
        self.n += 1
        return await self._go(who.user_id, CommandEvent(who.user_id, "private", self.n, who, command, args, datetime.now(UTC)))

    async def say(self, who: Sender, text: str) -> str:
        self.n += 1
        return await self._go(who.user_id, Incoming(who.user_id, "private", self.n, who, text, datetime.now(UTC)))


@asynccontextmanager
async def running(tmp_path, llm_server, st_model, support: str | None, **kw) -> AsyncIterator[Bot]:
    holder: dict = {}

    def make(memory):
        holder["box"] = LocalOutbox(IdAllocator(memory.store.messages.max_id))
        return holder["box"]

    async with open_runtime(cfg(llm_server, support, **kw), tmp_path, make, model=st_model) as rt:
        yield Bot(rt, holder["box"])


async def test_help_start_refusals_and_errors_end_with_the_support_line(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    async with running(tmp_path, llm_server, st_model, "@kith_help") as bot:
        for command in ("help", "start"):
            text = await bot.cmd(ANN, command)
            assert text.startswith("I'm **Kith**") and text.endswith("\n\n" + LINE), text
        refused = await bot.cmd(ANN, "role", "talk like a pirate")  # the tier lacks custom_persona
        assert refused.startswith("A custom persona isn't part of the free tier") and refused.endswith(LINE), refused
        assert bot.outbox.sent[-1].buttons  # the /billing button stays
        first = await bot.say(ANN, "hello there")
        assert first.startswith("echo:") and "Support" not in first  # an answer has no support line
        spent = await bot.say(ANN, "and again")  # requests_per_day is spent: refused
        assert "free tier" in spent and spent.endswith(LINE), spent
        ru = await bot.cmd(IVAN, "help")
        assert ru.endswith("\n\nПоддержка: @kith_help"), ru[-80:]


async def test_a_failing_model_says_so_with_the_support_url(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    async with running(tmp_path, llm_server, st_model, "https://example.org/help", default_model="down") as bot:
        text = await bot.say(ANN, "are you there?")
    assert "language model is unavailable" in text and text.endswith("\n\nSupport: https://example.org/help"), text


async def test_without_a_contact_nothing_changes(tmp_path, st_model, llm_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    async with running(tmp_path, llm_server, st_model, None) as bot:
        help_text = await bot.cmd(ANN, "help")
        refused = await bot.cmd(ANN, "role", "talk like a pirate")
        await bot.say(ANN, "hello there")
        spent = await bot.say(ANN, "and again")
    assert help_text.rstrip().endswith("when your plan includes it.")
    for text in (help_text, refused, spent):
        assert "Support" not in text, text
    assert refused.startswith("A custom persona isn't part of the free tier")


@pytest.mark.parametrize("value", ["@kith_help", "https://t.me/kith_help", "https://example.org/support?lang=en"])
def test_a_username_or_an_https_url_is_a_contact(tmp_path, value):
    path = tmp_path / "kith.yaml"
    path.write_text(f"bot:\n  support: {value!r}\n", encoding="utf-8")
    assert load_config(path, env={}).settings.bot.support == value


@pytest.mark.parametrize("value", ["kith_help", "@kit", "@kith help", "http://example.org/help", "https://", "mailto:help@example.org",
                                   "support@example.org"])
def test_anything_else_is_a_config_error_naming_the_key(tmp_path, value):
    path = tmp_path / "kith.yaml"
    path.write_text(textwrap.dedent(f"""\
        bot:
          name: Kith
          support: {value!r}
        """), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    err = info.value
    assert (err.key, err.line) == ("bot.support", 3), str(err)
    assert "neither a Telegram @username" in str(err) and value in str(err)
