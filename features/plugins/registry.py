"""The built-in tools, as configured in kith.yaml's ``plugins:`` section."""
from __future__ import annotations

from config.models import PluginsSettings
from features.plugins.base import Tool
from features.plugins.calculator import Calculator
from features.plugins.clock import Clock
from features.plugins.net import AllowList
from features.plugins.web import FetchUrl, SearxngEngine, WebSearch

__all__ = ["builtin_tools"]


def builtin_tools(settings: PluginsSettings) -> dict[str, Tool]:
    """Tool name → tool, for the tools ``settings`` turn on: ``calculator`` and ``time`` always,
    ``web_search`` when ``web.search_url`` is set (a SearXNG instance), ``fetch_url`` when
    ``web.fetch`` is true. Output limits come from ``tool_output_chars``; nothing is connected yet."""
    web = settings.web
    tools: list[Tool] = [Calculator(), Clock()]
    if web.search_url:
        engine = SearxngEngine(web.search_url, timeout_s=web.timeout_s, max_bytes=web.max_bytes)
        tools.append(WebSearch(engine, output_chars=settings.tool_output_chars))
    if web.fetch:
        tools.append(FetchUrl(max_bytes=web.max_bytes, timeout_s=web.timeout_s, allow=AllowList.parse(web.allow_private),
                              output_chars=settings.tool_output_chars))
    return {tool.spec.name: tool for tool in tools}
