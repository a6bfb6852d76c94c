"""Which plugins a chat may use, as tiers.yaml and the chat's own choice govern them (pure functions).

- A tier names the plugins it may use (``plugins: ["*"]`` or a list of names) and how many a chat may
  have enabled at once (``plugin_limit``, -1: no limit). No tiers at all (``tier`` None): every
  plugin, no limit.
- A chat's choice is its setting ``plugins`` (``ChatSettings.plugins``: names, set by ``/plugins``); without one, the
  default: the plugins its tier allows that are configured, in catalog order, up to the limit.
- What is enabled for a member is that choice (or default) less what their tier does not allow or
  the host has not configured, cut to the tier's limit in the choice's order. So a member gets no
  more than their own tier allows, whoever chose; a choice is kept when a tier changes (a plugin
  the tier lost comes back with a better tier).

The catalog (``PluginInfo``, one per plugin the bot knows) comes from ``features.plugins.host``;
nothing here does I/O.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from actors.settings import ChatSettings
from config.models import UNLIMITED, Tier

__all__ = ["ANY", "BUILTIN_ORDER", "PluginInfo", "PluginState", "Status", "Toggle", "chosen_of",
           "default_plugins", "enabled_plugins", "limit_of", "plugin_states", "tier_allows", "toggle"]

ANY = "*"
BUILTIN_ORDER = ("time", "calculator", "memory_search", "reminders", "web")  # catalog order; MCP servers follow

Status = Literal["enabled", "available", "limit", "tier", "unconfigured"]


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One plugin the bot knows. name: as tiers.yaml and /plugins name it (``web``, ``mcp:files``).
    tools: its tools' names (now). configured: the host set it up (``web`` needs ``plugins.web``; an
    MCP server is configured by being listed). connected: an MCP server's connection (None for a
    built-in one). error: why it is not configured or not connected (English, for the host). label:
    as members see it (an MCP server's ``label``); None: the name."""

    name: str
    tools: tuple[str, ...] = ()
    configured: bool = True
    connected: bool | None = None
    error: str | None = None
    label: str | None = None

    @property
    def shown(self) -> str:
        return self.label or self.name


@dataclass(frozen=True, slots=True)
class PluginState:
    """One plugin for one member in one chat. status: ``enabled`` (its tools are offered), ``available``
    (may be turned on), ``limit`` (allowed, but the chat already has as many on as the tier allows),
    ``tier`` (the tier does not include it), ``unconfigured`` (the host has not set it up).
    chosen: it is in the chat's choice (or the default) — a ``limit`` or ``tier`` plugin may be."""

    info: PluginInfo
    status: Status
    chosen: bool = False

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def enabled(self) -> bool:
        return self.status == "enabled"


@dataclass(frozen=True, slots=True)
class Toggle:
    """What ``toggle`` decided. ok: the change is allowed, and ``chosen`` is the chat's new choice
    (store it as the ``plugins`` setting). Else ``refused`` says why: ``unknown`` (no such plugin),
    ``unconfigured``, ``tier`` or ``limit``; ``limit`` is the tier's ``plugin_limit``."""

    ok: bool
    chosen: tuple[str, ...] = ()
    refused: Literal["unknown", "unconfigured", "tier", "limit"] | None = None
    limit: int = UNLIMITED
    changed: bool = True


def tier_allows(tier: Tier | None, plugin: str) -> bool:
    """Does ``tier`` include ``plugin``? (None: no tiers, every plugin.)"""
    return tier is None or ANY in tier.plugins or plugin in tier.plugins


def limit_of(tier: Tier | None) -> int:
    """How many plugins a chat may have enabled at ``tier`` (-1: no limit)."""
    return UNLIMITED if tier is None else tier.plugin_limit


def chosen_of(settings: ChatSettings) -> list[str] | None:
    """The chat's own choice (its ``plugins`` setting: names, in the order chosen, each once); None
    when it has made none (the default applies; a stored value that is not a list of names counts as
    none: ``ChatSettings.load``)."""
    return None if settings.plugins is None else list(dict.fromkeys(settings.plugins))


def _usable(info: PluginInfo, tier: Tier | None) -> bool:
    return info.configured and tier_allows(tier, info.name)


def _cut(names: Sequence[str], limit: int) -> list[str]:
    return list(names) if limit == UNLIMITED else list(names)[:max(0, limit)]


def default_plugins(catalog: Sequence[PluginInfo], tier: Tier | None) -> list[str]:
    """The plugins a chat without a choice has: those ``tier`` allows and the host configured, in
    catalog order, up to the tier's limit."""
    return _cut([p.name for p in catalog if _usable(p, tier)], limit_of(tier))


def enabled_plugins(catalog: Sequence[PluginInfo], tier: Tier | None, chosen: Sequence[str] | None) -> list[str]:
    """The plugins whose tools a member at ``tier`` gets in a chat whose choice is ``chosen`` (None:
    the default): the chosen ones the tier allows and the host configured, in the choice's order, up
    to the tier's limit."""
    if chosen is None:
        return default_plugins(catalog, tier)
    known = {p.name: p for p in catalog}
    usable = [n for n in dict.fromkeys(chosen) if n in known and _usable(known[n], tier)]
    return _cut(usable, limit_of(tier))


def plugin_states(catalog: Sequence[PluginInfo], tier: Tier | None, chosen: Sequence[str] | None) -> list[PluginState]:
    """Every plugin of ``catalog`` (in its order) with its status for a member at ``tier`` in a chat
    whose choice is ``chosen`` (None: the default)."""
    enabled = set(enabled_plugins(catalog, tier, chosen))
    picked = set(default_plugins(catalog, tier) if chosen is None else chosen)
    limit = limit_of(tier)
    full = limit != UNLIMITED and len(enabled) >= limit
    states = []
    for p in catalog:
        status: Status
        if not p.configured:
            status = "unconfigured"
        elif not tier_allows(tier, p.name):
            status = "tier"
        elif p.name in enabled:
            status = "enabled"
        elif full:
            status = "limit"
        else:
            status = "available"
        states.append(PluginState(p, status, p.name in picked))
    return states


def toggle(catalog: Sequence[PluginInfo], tier: Tier | None, chosen: Sequence[str] | None, plugin: str,
           on: bool) -> Toggle:
    """Turn ``plugin`` on (``on``) or off in a chat whose choice is ``chosen`` (None: the default), as
    a member at ``tier`` asks. Turning one off always works (and is kept even when it was not on).
    Turning one on is refused when the host does not know or configure it, the tier does not allow
    it, or the chat already has the tier's limit enabled. The new choice starts from the current one
    (or the default), keeping plugins the tier does not allow, for a better tier later."""
    limit = limit_of(tier)
    base = list(default_plugins(catalog, tier) if chosen is None else dict.fromkeys(chosen))
    if not on:
        return Toggle(True, tuple(n for n in base if n != plugin), limit=limit, changed=plugin in base or chosen is None)
    info = next((p for p in catalog if p.name == plugin), None)
    if info is None:
        return Toggle(False, tuple(base), refused="unknown", limit=limit)
    if not info.configured:
        return Toggle(False, tuple(base), refused="unconfigured", limit=limit)
    if not tier_allows(tier, plugin):
        return Toggle(False, tuple(base), refused="tier", limit=limit)
    enabled = enabled_plugins(catalog, tier, base)
    if plugin in enabled:
        return Toggle(True, tuple(base), limit=limit, changed=chosen is None)
    if limit != UNLIMITED and len(enabled) >= limit:
        return Toggle(False, tuple(base), refused="limit", limit=limit)
    # (below the limit every usable plugin of the choice is enabled: the new one is too, at the end)
    return Toggle(True, (*(n for n in base if n != plugin), plugin), limit=limit)
