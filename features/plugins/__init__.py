"""Plugins: tools the model may call through function calling (issue #25).

The built-in ones (``builtin_tools``): ``calculator``, ``time``, and with the ``web`` plugin
configured ``web_search`` (SearXNG) and ``fetch_url`` (behind an SSRF guard). Each is a ``Tool``:
a ``ToolSpec`` for the model, ``run(args, ctx) -> ToolOutcome`` that reports failures as error
outcomes, and ``notice(args)``, the line a chat shows per call.
"""
from __future__ import annotations

from features.plugins.base import Tool, ToolContext
from features.plugins.calculator import Calculator
from features.plugins.clock import Clock
from features.plugins.errors import PluginError
from features.plugins.registry import builtin_tools
from features.plugins.web import FetchUrl, SearchEngine, SearchResult, SearxngEngine, WebSearch

__all__ = ["Calculator", "Clock", "FetchUrl", "PluginError", "SearchEngine", "SearchResult", "SearxngEngine",
           "Tool", "ToolContext", "WebSearch", "builtin_tools"]
