"""The plugins' exceptions. Each built-in tool turns them into an error ``ToolOutcome`` (its ``run``
raises none of them); they are public for code that uses the helpers (``net.fetch``, a ``SearchEngine``)
directly. The message is written for the model: it says what was refused and why, in English."""
from __future__ import annotations

__all__ = ["BadArguments", "BlockedURL", "CalculationError", "FetchError", "PluginError", "SearchError",
           "UnknownTimeZone"]


class PluginError(Exception):
    """The root of every plugin error."""


class BadArguments(PluginError):
    """The model called a tool with missing or ill-typed arguments."""


class CalculationError(PluginError):
    """An expression the calculator refuses (not arithmetic, too large) or cannot evaluate (1/0)."""


class UnknownTimeZone(PluginError):
    """A time zone that is not an IANA name known to this machine's tz database."""


class BlockedURL(PluginError):
    """A URL fetch_url will not reach: not http(s), or a host resolving to a private, loopback,
    link-local, multicast, reserved or unspecified address (the SSRF guard), first URL or redirect."""


class FetchError(PluginError):
    """A page that could not be read: unreachable, an HTTP error, too large, too slow, not text."""


class SearchError(PluginError):
    """The search engine failed: unreachable, an HTTP error, or an answer that is not its JSON."""
