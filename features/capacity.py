"""Capacity cleanup in the chat: telling a chat what the cleanup removed, why, and how to keep more.

``memory.cleanup`` removes (and logs in the store) what passes a tier's ``dialogue_limit`` or
``memory_limit``; the runtime then tells the chats concerned with a ``CapacityCleaned`` event, and
their ctx says it once per cleanup — to the member in a private chat, to the admins in a group —
with a /billing button when the bot sells plans. ``/memory``, ``/admin`` and ``kith memory stats``
read the same log (``store.index.cleanups``) through ``describe``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import i18n
from actors.events import CapacityCleaned
from actors.handlers import ChatContext
from i18n import _, ngettext
from memory.types import CleanupRecord

from .billing import plans_button

__all__ = ["describe", "notice", "on_capacity_cleaned"]


def _reason(rec: CleanupRecord) -> str:
    """Which limit of which tier, in the member's language."""
    limit = i18n.number(rec.limit)
    if rec.scope == "user":
        if rec.limit_name == "dialogue_limit":
            return _("the {tier} tier keeps {limit} of a member's messages over all chats", tier=rec.tier, limit=limit)
        return _("the {tier} tier keeps {limit} memories of a member's messages over all chats", tier=rec.tier, limit=limit)
    if rec.limit_name == "dialogue_limit":
        return _("the {tier} tier keeps {limit} messages per chat", tier=rec.tier, limit=limit)
    return _("the {tier} tier keeps {limit} memories per chat", tier=rec.tier, limit=limit)


def describe(rec: CleanupRecord) -> str:
    """One line for ``/memory`` and ``/admin``: what was removed, why, and when (latest)."""
    if rec.messages:
        what = ngettext("{n} message deleted", "{n} messages deleted", rec.messages, n=i18n.number(rec.messages))
    else:
        what = ngettext("{n} memory dropped", "{n} memories dropped", rec.memories, n=i18n.number(rec.memories))
    return _("{what} ({reason}; last on {date})", what=what, reason=_reason(rec), date=i18n.date(rec.at))


def _summed(records: Sequence[CleanupRecord]) -> list[CleanupRecord]:
    """The records summed per reason (scope, tier, limit): a user's cleanup spans several chats."""
    out: dict[tuple[str, str, str, int], CleanupRecord] = {}
    for r in records:
        key = (r.scope, r.tier, r.limit_name, r.limit)
        prev = out.get(key)
        out[key] = r if prev is None else replace(prev, messages=prev.messages + r.messages, memories=prev.memories + r.memories)
    return list(out.values())


def _line(rec: CleanupRecord) -> str:
    reason, n = _reason(rec), i18n.number(rec.messages or rec.memories)
    if rec.scope == "user":
        if rec.messages:
            return ngettext("🧹 I deleted your oldest message and its memory: {reason}.",
                            "🧹 I deleted your {n} oldest messages and their memories: {reason}.", rec.messages, n=n, reason=reason)
        return ngettext("🧹 I stopped recalling {n} of your old messages: {reason}. It stays in /history and /export.",
                        "🧹 I stopped recalling {n} of your old messages: {reason}. They stay in /history and /export.",
                        rec.memories, n=n, reason=reason)
    if rec.messages:
        return ngettext("🧹 I deleted this chat's oldest message and its memory: {reason}.",
                        "🧹 I deleted this chat's {n} oldest messages and their memories: {reason}.", rec.messages, n=n, reason=reason)
    return ngettext("🧹 I stopped recalling {n} old message of this chat: {reason}. It stays in /history and /export.",
                    "🧹 I stopped recalling {n} old messages of this chat: {reason}. They stay in /history and /export.",
                    rec.memories, n=n, reason=reason)


def notice(records: Sequence[CleanupRecord], *, group: bool) -> str:
    """What a chat is told after a cleanup removed ``records`` (one per chat and limit)."""
    lines = [_line(r) for r in _summed(records)]
    lines.append(_("To keep more, a premium plan raises the limits (/billing); history the bot's host imports is always kept."))
    text = "\n".join(lines)
    return _("For the admins: {text}", text=text) if group else text


async def on_capacity_cleaned(ctx: ChatContext, ev: CapacityCleaned) -> None:
    """Tell the chat, once, what the cleanup removed from it (with a /billing button)."""
    records = [r for r in ev.records if r.chat_id == ctx.chat_id or r.scope == "user"]
    if not records:
        return
    text = notice(records, group=ctx.chat_id < 0)
    rows = plans_button(ctx)
    if rows:
        await ctx.outbox.send_buttons(ctx.chat_id, text, rows)
    else:
        await ctx.outbox.send(ctx.chat_id, text)
