"""The plugins of a running bot: the one ``actors.handlers.Plugins`` (issue #25).

``open_plugins(services)`` (``Handlers.open_plugins``; the runtime enters it around the supervisor)
builds the catalog — plugin → tools — from:

- the built-in tools (``registry.builtin_tools``): ``time``, ``calculator``, and ``web`` when
  ``plugins.web`` is configured;
- ``memory_search`` (``MemorySearch`` over the bot's memory, this chat only);
- ``reminders`` (``Reminders``, entered here: its scheduler runs while the bot does; ``host.reminders``
  is what ``/remind`` uses);
- the MCP servers of ``plugins.mcp`` (an ``McpHub``, entered here), each a plugin ``mcp:<key>``.

``tools_for`` gives a turn the tools of the plugins the member may use now (``governance``: the
tier allows them, the chat enabled them, the host configured them), unless today's
``tool_calls_per_day`` is spent (``why_no_tools`` says so). Each call of a ``TurnTools.run`` builds
the tool's ``ToolContext`` (the chat from the turn's context only, never the model's arguments),
runs it, logs it with its arguments' names (never their values: they may hold secrets) and records
it as usage ``kind="tool"``, ``model=<plugin>`` — which counts the quota (``tiers.Admission.record``).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import i18n
from actors.handlers import ChatContext, TurnTools
from actors.settings import UserSettings
from config.models import PluginsSettings, Tier
from i18n import _
from memory.types import UsageRecord
from providers.tools import ToolCall, ToolOutcome

from .base import Tool, ToolContext, short
from .governance import BUILTIN_ORDER, PluginInfo, PluginState, chosen_of, enabled_plugins, plugin_states
from .mcp import McpHub
from .memory_search import MemorySearch
from .registry import builtin_tools
from .reminders import Reminders, member_timezone

if TYPE_CHECKING:
    from actors.services import Services
    from tiers.quotas import QuotaDecision

__all__ = ["PluginHost", "catalog_of", "offline_catalog", "open_plugins", "tools_of"]

log = logging.getLogger(__name__)

_NO_PLUGINS = Tier(plugins=(), plugin_limit=0)
WEB_UNCONFIGURED = "plugins.web in kith.yaml sets neither search_url (a SearXNG instance) nor fetch: true"


def tools_of(source: Any) -> list[Tool]:
    """The tools a part offers, as a list: a ``Mapping`` name → tool, or an iterable of tools."""
    if source is None:
        return []
    if isinstance(source, Mapping):
        return list(source.values())
    return list(source)


def catalog_of(settings: PluginsSettings, tools: Iterable[Tool], mcp_status: Iterable[Any] | None = None
               ) -> list[PluginInfo]:
    """Every plugin the bot knows, in catalog order (``governance.BUILTIN_ORDER``, then other built-in
    plugins, then the MCP servers in kith.yaml's order), with its tools among ``tools``. ``web`` is
    listed unconfigured when ``plugins.web`` turns on nothing. mcp_status: ``McpHub.status()`` (a
    connected hub); None: the servers are listed as configured, their connection unknown."""
    by_plugin: dict[str, list[str]] = {}
    for tool in tools:
        by_plugin.setdefault(tool.plugin, []).append(tool.spec.name)
    infos: list[PluginInfo] = []
    builtin = [p for p in BUILTIN_ORDER if p in by_plugin or p == "web"]
    builtin += sorted(p for p in by_plugin if p not in BUILTIN_ORDER and not p.startswith("mcp:"))
    for name in builtin:
        if name == "web" and name not in by_plugin:
            infos.append(PluginInfo("web", (), configured=False, error=WEB_UNCONFIGURED))
        else:
            infos.append(PluginInfo(name, tuple(by_plugin[name])))
    if mcp_status is not None:
        for s in mcp_status:
            connected = s.state == "connected"
            infos.append(PluginInfo(f"mcp:{s.name}", tuple(s.tools), connected=connected,
                                    error=None if connected else (s.error or s.state), label=s.label))
    else:
        for key, server in settings.mcp.items():
            infos.append(PluginInfo(f"mcp:{key}", tuple(sorted(by_plugin.get(f"mcp:{key}", ()))), label=server.label))
    return infos


def offline_catalog(settings: PluginsSettings, mcp_tools: Iterable[Tool] = (), mcp_status: Iterable[Any] | None = None
                    ) -> list[PluginInfo]:
    """The catalog as the config alone tells it (``kith plugins``): nothing is opened or connected
    but what the caller connected (an ``McpHub``'s tools and status; none: the servers' tools are
    unknown). ``memory_search`` and ``reminders`` are listed with their tools' names."""
    tools: list[Tool] = [*builtin_tools(settings).values(), MemorySearch(cast(Any, None))]
    tools += tools_of(Reminders.offline_tools())
    return catalog_of(settings, [*tools, *mcp_tools], mcp_status)


def _arg_names(args: Any) -> str:
    """The names of a call's arguments (never their values), for the log."""
    if not isinstance(args, dict) or not args:
        return "none"
    return ", ".join(short(str(k), 40) for k in list(args)[:20])


class PluginHost:
    """The bot's plugins: the catalog, the governed tools of a turn, and the parts it owns (MCP hub,
    reminders). Built by ``open_plugins``; tests may build one from parts.

    services: the runtime's services (config, memory, admission, clock, usage). tools: the tools of
    every plugin but MCP (name → tool, or a list). hub: the entered ``McpHub`` (None: no MCP servers).
    reminders: the entered ``Reminders`` (None: none).
    """

    def __init__(self, services: Services, tools: Mapping[str, Tool] | Iterable[Tool], *, hub: McpHub | None = None,
                 reminders: Any = None) -> None:
        self.svc = services
        self._tools = tools_of(tools)
        self.hub = hub
        self.reminders = reminders

    # ------------------------------------------------------------ the catalog

    @property
    def settings(self) -> PluginsSettings:
        return self.svc.config.settings.plugins

    def all_tools(self) -> list[Tool]:
        """Every tool of every plugin, as of now (an MCP server's as last listed)."""
        return [*self._tools, *(self.hub.tools().values() if self.hub is not None else ())]

    def catalog(self) -> list[PluginInfo]:
        """Every plugin the bot knows, in order, with its tools and state (``catalog_of``)."""
        return catalog_of(self.settings, self.all_tools(), self.hub.status() if self.hub is not None else None)

    def tier(self, tier: str | None) -> Tier | None:
        """The tiers.yaml entry of ``tier`` (as the running admission has it); None without tiers (every
        plugin, no limit)."""
        if tier is None:
            return None
        cfg = self.svc.admission.cfg if self.svc.admission is not None else self.svc.config.tiers
        return cfg.tiers.get(tier) or _NO_PLUGINS  # a tier gone from tiers.yaml (a reload): none

    async def tier_of(self, ctx: ChatContext, user_id: int) -> str | None:
        """The member's tier in ``ctx``'s chat (None: the bot has no tiers)."""
        adm = self.svc.admission
        return None if adm is None else await adm.tier_of(ctx.chat_id, user_id)

    def states(self, ctx: ChatContext, tier: str | None) -> list[PluginState]:
        """Every plugin's state in ``ctx``'s chat for a member at ``tier`` (``governance.plugin_states``)."""
        return plugin_states(self.catalog(), self.tier(tier), chosen_of(ctx.settings))

    def enabled(self, ctx: ChatContext, tier: str | None) -> list[str]:
        """The plugins whose tools a member at ``tier`` gets in ``ctx``'s chat."""
        return enabled_plugins(self.catalog(), self.tier(tier), chosen_of(ctx.settings))

    async def tool_quota(self, tier: str | None, user_id: int) -> QuotaDecision | None:
        """Today's ``tool_calls_per_day`` of the member (None: no tiers, no quota)."""
        adm = self.svc.admission
        if adm is None or tier is None:
            return None
        return await adm.admit_tools(tier, user_id)

    # ------------------------------------------------------------ a turn's tools

    async def tools_for(self, ctx: ChatContext, user_id: int, tier: str | None,
                        user_settings: UserSettings, thread_id: int | None = None) -> TurnTools | None:
        """The tools member ``user_id`` may have the model call in ``ctx``'s chat now (see
        ``actors.handlers.Plugins``); None when there are none — ``why_no_tools`` says why."""
        offered, _why = await self._offered(ctx, user_id, tier)
        if not offered:
            return None
        return self._turn_tools(ctx, user_id, tier, user_settings, offered, self.settings, thread_id)

    async def why_no_tools(self, ctx: ChatContext, user_id: int, tier: str | None) -> str | None:
        """Why member ``user_id`` gets no tools in ``ctx``'s chat now, one sentence in the current
        language: tools are off on this bot, today's ``tool_calls_per_day`` is spent (when it resets,
        how to upgrade), or no plugin is enabled here. None when they get some. (Whether the model
        can call tools at all is the turn's to say: ``LLM.supports_tools``.)"""
        offered, why = await self._offered(ctx, user_id, tier)
        return None if offered else why

    async def _offered(self, ctx: ChatContext, user_id: int, tier: str | None) -> tuple[dict[str, Tool], str | None]:
        """Tool name → tool for the member now (in the order of the chat's plugins, then of their
        tools), or nothing and why."""
        if self.settings.max_steps < 1:
            return {}, _("Tools are off on this bot.")
        quota = await self.tool_quota(tier, user_id)
        if quota is not None and not quota.allowed:
            assert self.svc.admission is not None and tier is not None
            if await self.svc.admission.pay_for_tool(ctx.chat_id, user_id, tier, quota) is None:
                return {}, self.svc.admission.tools_refusal(quota, tier)
        offered: dict[str, Tool] = {}
        tools = self.all_tools()
        for plugin in self.enabled(ctx, tier):
            for tool in tools:
                if tool.plugin == plugin and tool.spec.name not in offered:
                    offered[tool.spec.name] = tool
        return offered, None if offered else _("No plugins are enabled in this chat (/plugins).")

    def _turn_tools(self, ctx: ChatContext, user_id: int, tier: str | None, user_settings: UserSettings,
                    offered: dict[str, Tool], settings: PluginsSettings, thread_id: int | None = None) -> TurnTools:
        chat_id = ctx.chat_id  # the chat is the turn's, never an argument of the model's
        timezone = member_timezone(user_settings, settings.timezone)  # theirs (a known zone), else kith.yaml's
        language = i18n.current()
        svc, adm = self.svc, self.svc.admission
        pending = 0  # calls running now (parallel calls of one round): counted against the quota too

        async def run(call: ToolCall) -> ToolOutcome:
            nonlocal pending
            tool = offered.get(call.name)
            if tool is None:  # (the loop offers only these: a guard)
                return ToolOutcome(f"there is no tool {call.name!r}", error=True)
            paid = None  # past the quota, paid with credits (per_tool_call), debited once it ran
            if adm is not None and tier is not None:
                d = adm.quotas.check_tools(tier, user_id)
                if d.limit >= 0 and d.used + pending >= d.limit:
                    paid = await adm.pay_for_tool(chat_id, user_id, tier, replace(d, allowed=False))
                    if paid is None:
                        log.info("chat %s: tool %s not run for user %s: tool_calls_per_day (%d) spent", chat_id,
                                 call.name, user_id, d.limit)
                        return ToolOutcome("the member's daily quota of tool calls is spent: answer without tools",
                                           error=True)
            tctx = ToolContext(chat_id=chat_id, user_id=user_id, timezone=timezone, now=svc.clock(), language=language,
                               thread_id=thread_id)
            pending += 1
            started = time.perf_counter()
            how = "cancelled"
            try:
                with i18n.use(language):
                    outcome = await tool.run(call.args or {}, tctx)
                how = "error outcome" if outcome.error else "ok"
                if paid is not None and adm is not None and not outcome.error:
                    await adm.charge_extra(paid, f"tool:{chat_id}:{uuid.uuid4().hex}", user_id=user_id, chat_id=chat_id,
                                           note=f"tool {tool.plugin}")
                return outcome
            except Exception as exc:
                how = f"failed ({type(exc).__name__})"
                raise
            finally:
                pending -= 1
                ms = (time.perf_counter() - started) * 1000
                log.info("chat %s: tool %s (plugin %s) for user %s, arguments: %s: %s in %.0f ms", chat_id,
                         call.name, tool.plugin, user_id, _arg_names(call.args), how, ms)
                svc.record_usage(UsageRecord(svc.clock(), chat_id, user_id, "tool", tool.plugin, 0, 0, 0.0, ms))

        def notice(call: ToolCall) -> str:
            tool = offered.get(call.name)
            with i18n.use(language):
                try:
                    return tool.notice(call.args or {}) if tool is not None else _("🔧 used {tool}", tool=call.name)
                except Exception:  # a notice never breaks a turn
                    log.exception("notice of tool %s failed", call.name)
                    return _("🔧 used {tool}", tool=short(call.name, 40))

        return TurnTools(specs=[t.spec for t in offered.values()], run=run, notice=notice,
                         max_steps=settings.max_steps, timeout_s=settings.tool_timeout_s,
                         output_chars=settings.tool_output_chars)


@asynccontextmanager
async def open_plugins(services: Services) -> AsyncIterator[PluginHost]:
    """The bot's plugins, for the runtime's lifetime (``Handlers.open_plugins``): the built-in tools,
    ``memory_search``, the reminders (entered: their scheduler runs until the runtime stops) and the
    MCP servers of ``plugins.mcp`` (entered: connected and supervised, closed when it stops)."""
    settings = services.config.settings.plugins
    async with AsyncExitStack() as stack:
        tools: list[Tool] = [*builtin_tools(settings).values(), MemorySearch(services.memory)]
        reminders = await stack.enter_async_context(Reminders(services))
        tools += tools_of(reminders.tools)
        hub = None
        if settings.mcp:
            hub = await stack.enter_async_context(McpHub(settings.mcp, output_chars=settings.tool_output_chars))
        host = PluginHost(services, tools, hub=hub, reminders=reminders)
        log.info("plugins: %s", ", ".join(f"{p.name} ({len(p.tools)} tools)" if p.configured else f"{p.name} (off)"
                                          for p in host.catalog()))
        yield host
