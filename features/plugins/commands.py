"""``/plugins``: which tools the model may use in this chat, and turning them on and off.

``/plugins`` lists every plugin with its state — on, off, over the tier's limit, not in the tier,
not configured by the host, an MCP server not connected — today's tool calls against the tier's
``tool_calls_per_day``, and a line when the member's current model cannot call tools; under it, one
button per plugin that turns it on or off (``plug:<name>``). ``/plugins on NAME`` and
``/plugins off NAME`` do the same in text.

Who: in a group, its admins, for the whole group (``Outbox.is_admin``, as for ``/settings``); in a
private chat, the member, for themselves (a private chat is the member's). The chat's choice is its
setting ``plugins``. Limits are the tier of the member who asks (their own, or the chat's if better);
each member's turn gets no more than their own tier allows (``features.plugins.governance``).
Turning on a plugin the tier does not include, or one over its ``plugin_limit``, is refused with the
``/billing`` button.
"""
from __future__ import annotations

import i18n
from actors.events import PRIVATE, ButtonPress, CommandEvent
from actors.handlers import ChatContext
from actors.outbox import Button
from actors.support import with_support
from features.billing import plans_button
from features.replies import reply
from i18n import _, ngettext

from .governance import PluginState, Toggle, chosen_of, limit_of, toggle
from .host import PluginHost

__all__ = ["PREFIX", "cmd_plugins", "handle_button"]

PREFIX = "plug"  # the buttons' data: plug:<plugin name>
ON = {"on", "enable", "add", "+"}
OFF = {"off", "disable", "remove", "-"}


def _host(ctx: ChatContext) -> PluginHost | None:
    return ctx.plugins if isinstance(ctx.plugins, PluginHost) else None


async def _may_change(ctx: ChatContext, private: bool, user_id: int) -> bool:
    """Members in their private chat; a group's admins."""
    return private or await ctx.outbox.is_admin(ctx.chat_id, user_id)


def _line(state: PluginState, tier: str | None) -> str:
    """One plugin: its mark, name, tools and why it is off."""
    info = state.info
    name = f"**{info.shown}**"
    if state.status == "enabled":
        text = _("✅ {plugin}: on", plugin=name)
        if info.connected is False:
            text += " " + _("(not connected now: {why})", why=info.error or "?")
    elif state.status == "available":
        text = _("➕ {plugin}: off", plugin=name)
    elif state.status == "limit":
        text = _("⏸ {plugin}: off (this chat has as many plugins on as the {tier} tier allows)", plugin=name, tier=tier)
    elif state.status == "tier":
        text = _("🔒 {plugin}: not in the {tier} tier", plugin=name, tier=tier)
    else:
        text = _("⚫ {plugin}: not set up on this bot", plugin=name)
    if info.tools and state.status != "unconfigured":
        text += " — " + ", ".join(f"`{t}`" for t in info.tools[:6]) + (" …" if len(info.tools) > 6 else "")
    return text


async def _listing(ctx: ChatContext, host: PluginHost, user_id: int, tier: str | None, may: bool,
                   private: bool) -> tuple[str, list[list[Button]] | None]:
    """The /plugins text and its buttons (None when this member may not change anything)."""
    states = host.states(ctx, tier)
    on = sum(1 for s in states if s.enabled)
    limit = limit_of(host.tier(tier))
    if limit >= 0:
        head = ngettext("Plugins: tools I may use when I answer. {n} of at most {limit} is on here",
                        "Plugins: tools I may use when I answer. {n} of at most {limit} are on here", on,
                        n=i18n.number(on), limit=i18n.number(limit))
    else:
        head = _("Plugins: tools I may use when I answer. {n} on here", n=i18n.number(on))
    if tier is not None:
        head += " " + _("(tier {tier}).", tier=tier)
    else:
        head += "."
    lines = [head, *(_line(s, tier) for s in states)]
    quota = await host.tool_quota(tier, user_id)
    if quota is not None and quota.limit >= 0:
        lines.append(_("Tool calls today: {used} / {limit}.", used=i18n.number(quota.used), limit=i18n.number(quota.limit)))
        if not quota.allowed:
            resets = quota.resets_at.strftime("%H:%M") if quota.resets_at else "00:00"
            lines.append(_("Today's tool calls are used up: I answer without tools until {time} UTC.", time=resets))
    if host.settings.max_steps < 1:
        lines.append(_("Tools are off on this bot."))
    alias = ctx.model_for(await ctx.user_settings(user_id))
    if not _model_calls_tools(ctx, alias):
        lines.append(_("⚠️ The current model ({model}) cannot call tools: it answers without them. /model",
                       model=alias))
    if not may:
        lines.append(_("Only this group's admins can turn plugins on or off here."))
        return "\n".join(lines), None
    rows = [[Button(s.info.shown, f"{PREFIX}:{s.name}")] for s in states if s.status != "unconfigured"]
    if rows:
        lines.append(_("Press a plugin to turn it on or off for you.") if private
                     else _("Press a plugin to turn it on or off for the whole group."))
    return "\n".join(lines), rows or None


def _model_calls_tools(ctx: ChatContext, alias: str) -> bool:
    supports = getattr(ctx.svc.llm, "supports_tools", None)
    if supports is None:
        return True
    try:
        return bool(supports(alias))
    except Exception:  # an alias no longer configured: the turn falls back; say nothing here
        return True


def _refusal(t: Toggle, plugin: str, tier: str | None) -> str:
    if t.refused == "unknown":
        return _("There is no plugin {plugin!r}. /plugins lists them.", plugin=plugin)
    if t.refused == "unconfigured":
        return _("{plugin} is not set up on this bot.", plugin=plugin)
    if t.refused == "tier":
        return _("🔒 {plugin} is not part of the {tier} tier. See /billing to upgrade.", plugin=plugin, tier=tier)
    return ngettext("This chat already has {n} plugin on, the most the {tier} tier allows: turn one off first, "
                    "or upgrade with /billing.",
                    "This chat already has {n} plugins on, the most the {tier} tier allows: turn one off first, "
                    "or upgrade with /billing.", t.limit, n=i18n.number(t.limit), tier=tier)


async def _apply(ctx: ChatContext, host: PluginHost, tier: str | None, plugin: str, on: bool) -> Toggle:
    """Turn ``plugin`` on or off in this chat (stored when allowed)."""
    t = toggle(host.catalog(), host.tier(tier), chosen_of(ctx.settings), plugin, on)
    if t.ok and t.changed:
        await ctx.save_chat_settings(ctx.settings.with_(plugins=tuple(t.chosen)))
    return t


async def cmd_plugins(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/plugins`` · ``/plugins on NAME`` · ``/plugins off NAME``."""
    host = _host(ctx)
    if host is None:
        await reply(ctx, ev, _("This bot has no plugins."))
        return
    uid, private = ev.sender.user_id, ev.chat_type == PRIVATE
    tier = await host.tier_of(ctx, uid)
    may = await _may_change(ctx, private, uid)
    verb, _sep, name = ev.args.strip().partition(" ")
    verb, name = verb.lower(), name.strip()
    if verb and (verb not in ON | OFF or not name):
        await reply(ctx, ev, _("/plugins lists the plugins; `/plugins on NAME` or `/plugins off NAME` turns one on or off."))
        return
    if verb:
        if not may:
            await reply(ctx, ev, _("Only this group's admins can turn plugins on or off here."))
            return
        t = await _apply(ctx, host, tier, name, verb in ON)
        if not t.ok:
            rows = plans_button(ctx) if t.refused in ("tier", "limit") else None
            await reply(ctx, ev, with_support(ctx.svc, _refusal(t, name, tier)) if rows else _refusal(t, name, tier), rows)
            return
        done = _("{plugin} is on.", plugin=name) if verb in ON else _("{plugin} is off.", plugin=name)
        text, rows = await _listing(ctx, host, uid, tier, may, private)
        await reply(ctx, ev, done + "\n\n" + text, rows)
        return
    text, rows = await _listing(ctx, host, uid, tier, may, private)
    await reply(ctx, ev, text, rows)


async def handle_button(ctx: ChatContext, ev: ButtonPress, name: str) -> None:
    """A ``plug:<name>`` press: turn the plugin on when it is off, off when it is on; the list is
    edited in place (its buttons stay: they name the plugins, the text shows their state)."""
    host = _host(ctx)
    if host is None:
        await ctx.outbox.answer_button(ev.query_id, _("This button has expired."))
        return
    uid = ev.sender.user_id
    private = ctx.chat_id > 0  # Telegram: private chats have positive ids, groups negative (a button press carries no chat type)
    if not await _may_change(ctx, private, uid):
        await ctx.outbox.answer_button(ev.query_id, _("Only this group's admins can turn plugins on or off here."),
                                       alert=True)
        return
    tier = await host.tier_of(ctx, uid)
    on = name not in host.enabled(ctx, tier)
    t = await _apply(ctx, host, tier, name, on)
    if not t.ok:
        text = _refusal(t, name, tier)
        rows = plans_button(ctx) if t.refused in ("tier", "limit") else None
        if rows:
            await ctx.outbox.send_buttons(ctx.chat_id, with_support(ctx.svc, text), rows)
            await ctx.outbox.answer_button(ev.query_id)
        else:
            await ctx.outbox.answer_button(ev.query_id, text, alert=True)
        return
    text, _rows = await _listing(ctx, host, uid, tier, True, private)
    await ctx.outbox.edit(ctx.chat_id, ev.message_id, text)
    await ctx.outbox.answer_button(ev.query_id, _("{plugin}: on", plugin=name) if on else _("{plugin}: off", plugin=name))
