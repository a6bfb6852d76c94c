"""Plugins governed by tiers and chats (``features.plugins.governance``, pure), the
``tool_calls_per_day`` quota (real DuckDB, rebuilt from the stored usage), ``kith usage --by plugin``
and ``kith plugins`` (typer's CliRunner over the shipped config)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actors.settings import ChatSettings
from config.models import McpServer, PluginsSettings, Quotas, Settings, Tier, TiersConfig, WebPluginSettings
from features.plugins.governance import (
    PluginInfo,
    chosen_of,
    default_plugins,
    enabled_plugins,
    limit_of,
    plugin_states,
    tier_allows,
    toggle,
)
from features.plugins.host import catalog_of
from features.plugins.registry import builtin_tools
from memory.duckdb_store import DuckDBStore
from memory.types import UsageRecord
from tests.clock import Clock
from tiers import Admission
from tiers.usage import usage_summary

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 3, 14, 21, 30, tzinfo=UTC)
CATALOG = [PluginInfo("time", ("time",)), PluginInfo("calculator", ("calculator",)),
           PluginInfo("memory_search", ("memory_search",)), PluginInfo("reminders", ("remind", "reminders")),
           PluginInfo("web", (), configured=False, error="no search_url"),
           PluginInfo("mcp:files", ("files__read",), connected=False, error="not started")]
FREE = Tier(plugins=("time", "calculator", "memory_search", "reminders", "web"), plugin_limit=2)
PREMIUM = Tier(plugins=("*",), plugin_limit=4)
UNLIMITED = Tier(plugins=("*",), plugin_limit=-1)
NONE = Tier(plugins=(), plugin_limit=-1)


# ---------------------------------------------------------------------- the matrix


def test_tier_allows_and_limits() -> None:
    assert tier_allows(FREE, "calculator") and not tier_allows(FREE, "mcp:files")
    assert tier_allows(PREMIUM, "mcp:files") and tier_allows(None, "anything")
    assert not tier_allows(NONE, "time")
    assert limit_of(FREE) == 2 and limit_of(UNLIMITED) == -1 and limit_of(None) == -1
    assert Tier().plugins == ("*",) and Tier().plugin_limit == -1  # a tiers.yaml without plugins: all of them


def test_default_is_the_allowed_configured_plugins_in_catalog_order_up_to_the_limit() -> None:
    assert default_plugins(CATALOG, FREE) == ["time", "calculator"]
    assert default_plugins(CATALOG, PREMIUM) == ["time", "calculator", "memory_search", "reminders"]
    # web is not configured: never on; an MCP server not connected is configured (its tools come back)
    assert default_plugins(CATALOG, UNLIMITED) == ["time", "calculator", "memory_search", "reminders", "mcp:files"]
    assert default_plugins(CATALOG, None) == default_plugins(CATALOG, UNLIMITED)
    assert default_plugins(CATALOG, NONE) == []


def test_an_explicit_choice_is_governed_by_the_members_tier() -> None:
    chosen = ["mcp:files", "reminders", "web", "calculator", "nonexistent"]
    assert enabled_plugins(CATALOG, UNLIMITED, chosen) == ["mcp:files", "reminders", "calculator"]
    assert enabled_plugins(CATALOG, FREE, chosen) == ["reminders", "calculator"]  # no MCP in free; at most 2
    assert enabled_plugins(CATALOG, Tier(plugins=("*",), plugin_limit=1), chosen) == ["mcp:files"]
    assert enabled_plugins(CATALOG, PREMIUM, []) == []  # everything turned off is a choice too


def test_states_say_why_not() -> None:
    states = {s.name: (s.status, s.chosen) for s in plugin_states(CATALOG, FREE, None)}
    assert states == {"time": ("enabled", True), "calculator": ("enabled", True), "memory_search": ("limit", False),
                      "reminders": ("limit", False), "web": ("unconfigured", False), "mcp:files": ("tier", False)}
    states = {s.name: s.status for s in plugin_states(CATALOG, PREMIUM, ["time"])}
    assert states == {"time": "enabled", "calculator": "available", "memory_search": "available",
                      "reminders": "available", "web": "unconfigured", "mcp:files": "available"}
    # a plugin chosen under a better tier stays chosen, shown as not in this tier
    lost = {s.name: (s.status, s.chosen) for s in plugin_states(CATALOG, FREE, ["mcp:files", "time"])}
    assert lost["mcp:files"] == ("tier", True) and lost["time"] == ("enabled", True)
    assert lost["calculator"] == ("available", False)


def test_toggle_within_the_limit_and_the_refusals() -> None:
    t = toggle(CATALOG, FREE, None, "calculator", False)  # from the default
    assert t.ok and t.chosen == ("time",)
    t = toggle(CATALOG, FREE, t.chosen, "reminders", True)
    assert t.ok and t.chosen == ("time", "reminders")
    over = toggle(CATALOG, FREE, t.chosen, "memory_search", True)
    assert not over.ok and over.refused == "limit" and over.limit == 2 and over.chosen == ("time", "reminders")
    assert toggle(CATALOG, FREE, t.chosen, "mcp:files", True).refused == "tier"
    assert toggle(CATALOG, PREMIUM, t.chosen, "web", True).refused == "unconfigured"
    assert toggle(CATALOG, PREMIUM, t.chosen, "telepathy", True).refused == "unknown"
    same = toggle(CATALOG, FREE, ["time"], "time", True)
    assert same.ok and not same.changed and same.chosen == ("time",)
    # a plugin kept from a better tier does not count against this tier's limit
    kept = toggle(CATALOG, FREE, ["mcp:files", "time"], "calculator", True)
    assert kept.ok and enabled_plugins(CATALOG, FREE, kept.chosen) == ["time", "calculator"]
    assert toggle(CATALOG, None, ["time"], "mcp:files", True).ok  # no tiers: no limit


def test_chosen_of_reads_only_a_list_of_names() -> None:
    def chosen(raw: dict) -> list[str] | None:
        return chosen_of(ChatSettings.load(raw, where="chat 1"))

    assert chosen({}) is None and chosen({"plugins": "time"}) is None and chosen({"plugins": [1]}) is None
    assert chosen({"plugins": ["time", "time", "web"]}) == ["time", "web"]


def test_catalog_from_the_config() -> None:
    bare = catalog_of(PluginsSettings(), builtin_tools(PluginsSettings()).values())
    assert [(p.name, p.tools, p.configured) for p in bare] == [
        ("time", ("time",), True), ("calculator", ("calculator",), True), ("web", (), False)]
    web = PluginsSettings(web=WebPluginSettings(search_url="http://127.0.0.1:9/", fetch=True),
                          mcp={"files": McpServer(command=["true"], label="Files")})
    infos = catalog_of(web, builtin_tools(web).values())
    assert [(p.name, p.tools, p.configured) for p in infos] == [
        ("time", ("time",), True), ("calculator", ("calculator",), True), ("web", ("web_search", "fetch_url"), True),
        ("mcp:files", (), True)]
    assert infos[-1].shown == "Files" and infos[-1].connected is None


def test_shipped_tiers_govern_plugins() -> None:
    from config import load_config

    tiers = load_config(None).tiers
    free, premium, unlimited = (tiers.tiers[n] for n in ("free", "premium", "unlimited"))
    assert set(free.plugins) == {"time", "calculator", "memory_search", "reminders"} and free.plugin_limit == 4
    assert free.quotas.tool_calls_per_day == 50 and premium.plugins == ("*",) and premium.plugin_limit > 4
    assert unlimited.plugin_limit == -1 and unlimited.quotas.tool_calls_per_day == -1
    assert tiers.owners_tier() == "unlimited"
    with pytest.raises(ValueError):
        Tier(plugin_limit=-2)
    with pytest.raises(ValueError):
        Quotas(tool_calls_per_day=-5)


# ---------------------------------------------------------------------- the quota, usage by plugin


def tool_call(clock: Clock, user: int, plugin: str, chat: int = 5) -> UsageRecord:
    return UsageRecord(clock(), chat, user, "tool", plugin, 0, 0, 0.0, 12.0)


async def test_tool_calls_per_day_refuses_after_n_and_is_rebuilt_from_stored_usage(tmp_path: Path) -> None:
    clock = Clock(T0)
    cfg = TiersConfig(tiers={"free": Tier(quotas=Quotas(tool_calls_per_day=3))})
    db = tmp_path / "kith.duckdb"
    async with DuckDBStore(db, flush_interval_s=0.01, clock=clock) as store:
        adm = Admission(store, cfg, clock)
        for i in range(3):
            d = await adm.admit_tools("free", 7)
            assert d.allowed and (d.used, d.limit) == (i, 3)
            rec = tool_call(clock, 7, "calculator")
            store.record_usage(rec)
            adm.record(rec)
        spent = await adm.admit_tools("free", 7)
        assert not spent.allowed and spent.quota == "tool_calls_per_day" and spent.used == 3
        assert "3 of today's tool calls" in adm.tools_refusal(spent, "free")
        assert (await adm.admit_tools("free", 8)).allowed  # per member
        # a tool call is not a request: the chat quotas do not move
        assert adm.quotas.today(5, 7).requests == {} and adm.quotas.today(5, 7).tool_calls == 3
        await store.flush()
    async with DuckDBStore(db, clock=clock) as store:  # a restart: counted again from the usage table
        adm = Admission(store, cfg, clock)
        assert not (await adm.admit_tools("free", 7)).allowed
        clock.advance(hours=3)  # past midnight UTC: a new day
        assert (await adm.admit_tools("free", 7)).allowed


@pytest.fixture(params=["duckdb", "postgresql"])
def open_store(request, tmp_path: Path):
    """A new store on this test's own storage: a DuckDB file, or a database of the session's PostgreSQL."""
    if request.param == "postgresql":
        from memory.postgres_store import PostgresStore

        url = request.getfixturevalue("pg_url")
        return lambda: PostgresStore(url, dump_dir=tmp_path)
    return lambda: DuckDBStore(tmp_path / "kith.duckdb", flush_interval_s=0.01)


async def test_usage_by_plugin_counts_the_tool_calls_only(open_store) -> None:
    clock = Clock(T0)
    async with open_store() as store:
        for plugin in ("calculator", "calculator", "web", "mcp:files"):
            store.record_usage(tool_call(clock, 7, plugin))
        store.record_usage(UsageRecord(clock(), 5, 7, "chat", "calculator", 100, 20, 0.001, 300.0))  # a model named so
        rep = await usage_summary(store, by="plugin")
        assert [(r["key"], r["requests"]) for r in rep["rows"]] == [("calculator", 2), ("mcp:files", 1), ("web", 1)]
        assert rep["total"]["requests"] == 4 and rep["total"]["tokens"] == 0
        kinds = {r["key"]: r["requests"] for r in (await usage_summary(store, by="kind"))["rows"]}
        assert kinds == {"chat": 1, "tool": 4}
        since = await usage_summary(store, by="plugin", since=T0 + timedelta(hours=1))
        assert since["rows"] == []


def test_kith_usage_by_plugin_and_kith_plugins(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    data = tmp_path / "data"

    async def seed() -> None:
        clock = Clock(datetime.now(UTC))
        data.mkdir()
        async with DuckDBStore(data / "kith.duckdb", clock=clock) as store:
            for plugin in ("calculator", "time", "calculator"):
                store.record_usage(tool_call(clock, 7, plugin))

    import anyio

    anyio.run(seed)
    runner = CliRunner()
    r = runner.invoke(app, ["usage", "--by", "plugin", "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    assert "tool calls" in r.output and "calculator" in r.output and "time" in r.output
    r = runner.invoke(app, ["usage", "--by", "plugin", "--json", "--data-dir", str(data)])
    rows = json.loads(r.output)["rows"]
    assert {x["key"]: x["requests"] for x in rows} == {"calculator": 2, "time": 1}

    r = runner.invoke(app, ["plugins", "--help"])
    assert r.exit_code == 0 and "--check" in r.output
    r = runner.invoke(app, ["plugins"])
    assert r.exit_code == 0, r.output
    for name in ("time", "calculator", "memory_search", "reminders", "web"):
        assert name in r.output
    assert "not configured" in r.output  # web without search_url
    r = runner.invoke(app, ["plugins", "--json"])
    got = json.loads(r.output)
    by_name = {p["name"]: p for p in got["plugins"]}
    assert by_name["web"]["configured"] is False and by_name["calculator"]["tools"] == ["calculator"]
    assert by_name["memory_search"]["tiers"] == ["free", "premium", "unlimited"]
    assert by_name["web"]["tiers"] == ["premium", "unlimited"]
    assert got["tiers"]["free"] == {"plugins": ["time", "calculator", "memory_search", "reminders"], "plugin_limit": 4,
                                    "tool_calls_per_day": 50}


def test_kith_plugins_check_connects_the_mcp_servers(tmp_path: Path) -> None:
    """--check connects each MCP server once: the real SDK server over stdio lists its tools; a server
    whose ${VAR} is not set says why, without connecting anything."""
    import sys

    import yaml
    from typer.testing import CliRunner

    from cli import app

    server = str(Path(__file__).resolve().parent / "mcp_server.py")
    config = tmp_path / "kith.yaml"
    config.write_text(yaml.safe_dump({"plugins": {"mcp": {
        "files": {"command": [sys.executable, server], "tools": ["add", "echo"], "label": "Files"},
        "broken": {"command": [sys.executable, server], "env": {"TOKEN": "${KITH_TEST_UNSET_VARIABLE_42}"}},
    }}}))
    runner = CliRunner()
    r = runner.invoke(app, ["plugins", "--config", str(config), "--json"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    unchecked = {p["name"]: p for p in json.loads(r.output)["plugins"]}
    assert unchecked["mcp:files"]["connected"] is None and unchecked["mcp:files"]["tiers"] == ["premium", "unlimited"]
    r = runner.invoke(app, ["plugins", "--config", str(config), "--check", "--json"])
    assert r.exit_code == 0, r.output
    checked = {p["name"]: p for p in json.loads(r.output)["plugins"]}
    assert checked["mcp:files"]["connected"] is True and checked["mcp:files"]["tools"] == ["files__add", "files__echo"]
    assert checked["mcp:broken"]["connected"] is False and "KITH_TEST_UNSET_VARIABLE_42" in checked["mcp:broken"]["error"]
    r = runner.invoke(app, ["plugins", "--config", str(config), "--check"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "connected" in r.output and "not connected" in r.output, r.output


async def test_past_tool_calls_per_day_a_tier_paying_with_credits_pays_per_call(tmp_path: Path) -> None:
    from config.models import Prices
    from memory.ledger import LedgerEntry

    clock = Clock(T0)
    cfg = TiersConfig(tiers={"free": Tier(quotas=Quotas(tool_calls_per_day=1), when_spent="credits")},
                      prices=Prices(per_message={"*": 1}, per_tool_call=2))
    async with DuckDBStore(tmp_path / "kith.duckdb", flush_interval_s=0.01, clock=clock) as store:
        adm = Admission(store, cfg, clock)
        rec = tool_call(clock, 7, "calculator")
        store.record_usage(rec)
        adm.record(rec)
        spent = await adm.admit_tools("free", 7)
        assert not spent.allowed
        assert await adm.pay_for_tool(5, 7, "free", spent) is None  # no balance: the quota is a limit
        await adm.ledger.append(LedgerEntry("grant:t", "user", 7, "grant", 3))
        paid = await adm.pay_for_tool(5, 7, "free", spent)
        assert paid is not None and paid.paid_by == ("user", 7) and paid.price == 2
        assert (await adm.charge_extra(paid, "tool:5:a", user_id=7, chat_id=5, note="tool calculator")).balance == 1
        assert (await adm.charge_extra(paid, "tool:5:a", user_id=7, chat_id=5, note="tool calculator")).status == "duplicate"
        assert await adm.pay_for_tool(5, 7, "free", spent) is None  # 1 credit left, a call costs 2
