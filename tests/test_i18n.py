"""The interface in the member's language: the catalogs (i18n), the actor's choice of language,
the per-language command menu, and `kith chat --lang` — real stores, the real model, kith/recall."""
from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

import i18n
from actors.events import CommandEvent, Incoming, Sender
from cli import app
from config.models import Config, ModelSpec, Plan, Quotas, Settings, Tier, TiersConfig
from features.app import open_runtime
from transports.local import IdAllocator, LocalOutbox

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("actors", "features", "transports", "tiers", "providers", "i18n")  # where the bot's user-visible strings live (not the operator's CLI)
GROUP = -1007
ADMIN = Sender(70, "Ada", language_code="en")
IVAN = Sender(71, "Иван", language_code="ru-RU")
BOB = Sender(72, "Bob", language_code="en-GB")
NOBODY = Sender(73, "Anon")  # Telegram did not send a language


def extracted() -> dict[str | tuple[str, ...], str]:
    """Every message id in the source (Babel's Python extractor, the keywords ``make messages`` uses)
    -> where it is (file:line)."""
    from babel.messages.extract import extract_from_dir

    out: dict[str | tuple[str, ...], str] = {}
    for top in SOURCES:
        for filename, lineno, message, _comments, _context in extract_from_dir(
            ROOT / top, method_map=[("**.py", "python")], keywords={"_": None, "N_": None, "ngettext": (1, 2)},
        ):
            out.setdefault(message, f"{top}/{filename}:{lineno}")
    return out


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w*)[^{}]*\}", text))


def test_every_interface_string_has_a_russian_translation_with_the_same_placeholders():
    from babel.messages.pofile import read_po

    with (ROOT / "i18n" / "locales" / "ru.po").open("rb") as f:
        ru = read_po(f, locale="ru")
    messages = extracted()
    assert len(messages) > 150  # the extraction sees the code
    untranslated, broken = [], []
    for msgid, where in messages.items():
        entry = ru.get(msgid)
        strings = entry and (entry.string if isinstance(entry.string, tuple) else (entry.string,))
        if entry is None or entry.fuzzy or not all(strings):
            untranslated.append(f"{where}: {msgid!r}")
            continue
        ids = msgid if isinstance(msgid, tuple) else (msgid,)
        want = set().union(*(placeholders(i) for i in ids))
        for s in strings:
            if placeholders(s) != want and placeholders(s) | {"n"} != want | {"n"}:
                broken.append(f"{where}: {msgid!r} -> {s!r}")
    assert untranslated == [], "untranslated (run `make messages`, then translate i18n/locales/ru.po):\n" + "\n".join(untranslated)
    assert broken == [], "placeholders differ:\n" + "\n".join(broken)


def test_languages_fallback_and_locale_formatting():
    assert i18n.available()[0] == "en" and "ru" in i18n.available()
    assert [i18n.normalize(c) for c in ("ru-RU", "RU", "en_GB", "pt-br", "", None)] == ["ru", "ru", "en", None, None, None]
    with i18n.use("ru"):
        assert i18n._("Nothing stored in this chat yet.") == "В этом чате пока ничего не сохранено."
        assert i18n._("A sentence no catalog has, {x}.", x=1) == "A sentence no catalog has, 1."  # English fallback
        assert [i18n.ngettext("{n} message", "{n} messages", n, n=n) for n in (1, 3, 5, 21)] == [
            "1 сообщение", "3 сообщения", "5 сообщений", "21 сообщение"]
        assert i18n.number(1234.5) == "1\xa0234,5" and i18n.money(0.04, "USD") == "0,04\xa0$"
        assert i18n.datetime_(datetime(2026, 11, 30, 14, 5)) == "30.11.2026, 14:05"
    with i18n.use("xx"):  # unknown: English
        assert i18n.current() == "en" and i18n.number(1234.5) == "1,234.5" and i18n.money(0.04, "USD") == "$0.04"


# ---------------------------------------------------------------------- through the chat actors


def cfg() -> Config:
    models = {"cheap": ModelSpec(model="kith/recall", label="Cheap"), "smart": ModelSpec(model="kith/recall", label="Smart")}
    tiers = TiersConfig(
        default_tier="free",
        tiers={"free": Tier(models=("cheap", "smart"), quotas=Quotas(requests_per_day={"smart": 1, "cheap": 1})),
               "premium": Tier(models=("*",))},
        plans={"month": Plan(tier="premium", days=30, price=250, currency="XTR")},
    )
    return Config(settings=Settings(models=models, default_model="smart"), tiers=tiers)


class Bot:
    def __init__(self, rt, outbox):
        self.rt, self.outbox, self.n = rt, outbox, 1000

    async def _go(self, chat_id, ev):
        await self.rt.supervisor.tell(chat_id, ev)
        await self.rt.supervisor.wait_idle(chat_id)

    async def cmd(self, who, command, args="", chat_id=None):
        chat_id = who.user_id if chat_id is None else chat_id
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        await self._go(chat_id, CommandEvent(chat_id, ctype, self.n, who, command, args, datetime.now(UTC)))
        return self.outbox.sent[-1]

    async def say(self, who, text, chat_id=None):
        chat_id = who.user_id if chat_id is None else chat_id
        self.n += 1
        ctype = "private" if chat_id > 0 else "supergroup"
        await self._go(chat_id, Incoming(chat_id, ctype, self.n, who, text, datetime.now(UTC), respond=True))
        return self.outbox.sent[-1]


def runtime(tmp_path, st_model, holder):
    def make(memory):
        holder["outbox"] = LocalOutbox(IdAllocator(memory.store.messages.max_id), admins={(GROUP, ADMIN.user_id)})
        return holder["outbox"]

    return open_runtime(cfg(), tmp_path, make, model=st_model)


def cyrillic(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return sum("а" <= c.lower() <= "я" or c in "ёЁ" for c in letters) > len(letters) / 2


async def test_a_russian_member_is_answered_in_russian_an_english_one_in_english(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        bot = Bot(rt, holder["outbox"])
        for command in ("start", "help", "profile", "billing", "usage"):
            ru, en = await bot.cmd(IVAN, command), await bot.cmd(BOB, command)
            assert cyrillic(ru.text) and not cyrillic(en.text), (command, ru.text, en.text)
        menu = await bot.cmd(IVAN, "model")
        assert menu.text.startswith("Текущая модель: **smart**")
        assert [b.text for row in menu.buttons for b in row] == ["Cheap (1/1 сегодня)", "✓ Smart (1/1 сегодня)"]
        assert [b.text for row in (await bot.cmd(BOB, "model")).buttons for b in row] == ["Cheap (1/1 today)", "✓ Smart (1/1 today)"]
        # a quota refusal in the member's language
        await bot.say(IVAN, "привет, как дела?")
        refusal = await bot.say(IVAN, "и ещё вопрос?")
        assert cyrillic(refusal.text) and "тариф" in refusal.text
        await bot.say(BOB, "hello there?")
        refusal = await bot.say(BOB, "one more?")
        assert not cyrillic(refusal.text) and "today" in refusal.text
        # in a group with no language set, each member is answered in their own
        ru, en = await bot.cmd(IVAN, "help", chat_id=GROUP), await bot.cmd(BOB, "help", chat_id=GROUP)
        assert cyrillic(ru.text) and not cyrillic(en.text)
        # a member Telegram sent no language for: the language most members here use
        await bot.cmd(IVAN, "help", chat_id=GROUP)
        assert cyrillic((await bot.cmd(Sender(74, "Олег", language_code="ru"), "help", chat_id=GROUP)).text)
        assert cyrillic((await bot.cmd(NOBODY, "help", chat_id=GROUP)).text)


async def test_language_command_group_setting_and_restart(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        bot = Bot(rt, holder["outbox"])
        shown = await bot.cmd(IVAN, "language")
        assert [b.text for row in shown.buttons for b in row] == ["English", "✓ Русский", "Как в моём Telegram"]
        assert (await bot.cmd(IVAN, "language", "en")).text == "From now on I speak English with you."
        assert not cyrillic((await bot.cmd(IVAN, "help")).text)  # the choice beats the app's language
        assert "klingon" in (await bot.cmd(BOB, "language", "klingon")).text
        # /delete_context is /reset
        assert (await bot.cmd(BOB, "delete_context")).text.startswith("Context cleared")
        # a group's language, chosen by an admin, for everyone there
        assert cyrillic((await bot.cmd(BOB, "settings", "language ru", chat_id=GROUP)).text) is False  # members may not
        await bot.cmd(ADMIN, "settings", "language ru", chat_id=GROUP)
        assert cyrillic((await bot.cmd(BOB, "help", chat_id=GROUP)).text)
        assert not cyrillic((await bot.cmd(BOB, "help")).text)  # his private chat keeps his own
    async with runtime(tmp_path, st_model, holder) as rt:  # a restart keeps both choices
        bot = Bot(rt, holder["outbox"])
        assert cyrillic((await bot.cmd(BOB, "help", chat_id=GROUP)).text)
        assert not cyrillic((await bot.cmd(IVAN, "help")).text)
        assert (await bot.cmd(IVAN, "language", "auto")).text == "Теперь я говорю с вами на языке: Русский."


async def test_the_command_menu_is_registered_per_language():
    from transports.telegram.client import COMMANDS, set_commands

    class Client:  # Telegram's servers are out of reach: record what would be sent
        calls: list = []

        async def set_bot_commands(self, commands, language_code=""):
            self.calls.append((language_code, [(c.command, c.description) for c in commands]))

    client = Client()
    await set_commands(client)
    by_lang = dict(client.calls)
    assert set(by_lang) == {"", "ru"}
    assert [c for c, _d in by_lang[""]] == [c for c, _d in COMMANDS] and "delete_context" in dict(by_lang[""])
    assert dict(by_lang[""])["language"] == "The language I speak with you"
    assert all(cyrillic(d) for c, d in by_lang["ru"] if c != "image")


def test_kith_chat_lang_ru(tmp_path):
    res = CliRunner().invoke(app, ["chat", "--data-dir", str(tmp_path / "d"), "--lang", "ru", "-m", "/help"])
    assert res.exit_code == 0, res.output
    assert "Я **Kith**" in res.stdout or "Я Kith" in res.stdout
    res = CliRunner().invoke(app, ["chat", "--data-dir", str(tmp_path / "d"), "--lang", "tlh", "-m", "/help"])
    assert res.exit_code == 0 and "no interface catalog for 'tlh'" in res.stderr and "I'm" in res.stdout


def test_plan_titles_per_language_from_tiers_yaml(tmp_path):
    from config.errors import ConfigError
    from config.loader import load_config
    from tiers.payments import invoice_for

    tiers = load_config(None, env={}).tiers  # the shipped tiers.yaml: English and Russian titles
    plans = tiers.plans
    with i18n.use("ru"):
        assert i18n.pick(plans["month"].title) == "Премиум на месяц"
        invoice = invoice_for("month", tiers, scope_id=5)
        assert invoice.title == "Премиум на месяц" and invoice.description.startswith("Больше сообщений")
    with i18n.use("en"):
        assert i18n.pick(plans["month"].title) == "Premium for a month"
    assert i18n.pick("One title for all") == "One title for all" and i18n.pick(None) is None
    with i18n.use("ru"):
        assert i18n.pick({"en": "Only English"}) == "Only English"  # no Russian text: English
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers:\n  free: {}\nplans:\n  m:\n    tier: free\n    days: 1\n    price: 5\n    title: {english: x}\n", encoding="utf-8")
    (tmp_path / "kith.yaml").write_text("tiers_file: tiers.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tiers.yaml:8.*title.*ISO 639-1"):
        load_config(tmp_path / "kith.yaml", env={})


async def test_a_group_language_must_be_a_language(tmp_path, st_model):
    holder: dict = {}
    async with runtime(tmp_path, st_model, holder) as rt:
        bot = Bot(rt, holder["outbox"])
        bad = await bot.cmd(ADMIN, "settings", "language klingon", chat_id=GROUP)
        assert "ISO 639-1" in bad.text
        assert (await bot.cmd(ADMIN, "settings", "", chat_id=GROUP)).text.count("language: (each member their own)") == 1
        await bot.cmd(ADMIN, "settings", "language DE", chat_id=GROUP)  # no interface catalog: members keep theirs,
        assert "language: de" in (await bot.cmd(ADMIN, "settings", "", chat_id=GROUP)).text  # the model answers in German
        assert cyrillic((await bot.cmd(IVAN, "help", chat_id=GROUP)).text)
