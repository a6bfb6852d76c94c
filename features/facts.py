"""Memory entries in the chat (issue #27): ``/remember``, ``/memory facts``, ``/forget fact``.

An entry is a fact about a member or about the chat (``memory.facts``): ``/remember birthday: 12
March`` (about you), ``/remember chat standup: 10:00`` (about the chat: a group's admins only). A
new value for the same subject supersedes the old one, which is kept as history. ``/memory facts``
lists what is current: a member sees the facts about them and the chat's; a group's admins see
every fact of the chat. ``/forget fact 12`` (its number) or ``/forget fact birthday`` removes one
with its history: a member their own, admins the chat's and anyone's.

Each tier's ``entry_limit`` (per member over all chats, per chat; ``tiers.yaml``) caps the current
facts; past it ``/remember`` is refused with the upgrade buttons.
"""
from __future__ import annotations

import re

import i18n
from actors.events import PRIVATE, CommandEvent, is_group
from actors.handlers import ChatContext
from actors.services import Services
from actors.support import with_support
from i18n import _
from memory.facts import MemoryEntry, normalize_key

from .credits import upgrade_buttons
from .replies import reply, short

__all__ = ["CHAT_WORDS", "cmd_remember", "forget_fact", "list_facts", "over_entry_limit", "parse_fact"]

CHAT_WORDS = frozenset({"chat", "group", "чат", "группа"})  # ``/remember chat …``: a fact about the chat
_SEPARATOR = re.compile(r"\s*(?::|=|\s[—–-]\s)\s*")
LIST_MAX = 30


def parse_fact(text: str) -> tuple[str, str] | None:
    """``"birthday: 12 March"`` → ``("birthday", "12 March")`` (also ``=`` and `` — ``); a statement
    without a subject is its own subject (``"I'm vegetarian"``). None when empty."""
    text = " ".join(text.split())
    if not text:
        return None
    parts = _SEPARATOR.split(text, maxsplit=1)
    if len(parts) == 2 and parts[0].strip() and parts[1].strip():
        return parts[0].strip(), parts[1].strip()
    return text, text


def _line(e: MemoryEntry, names: dict[int, str]) -> str:
    who = _("the chat") if e.user_id is None else names.get(e.user_id, str(e.user_id))
    what = short(e.value, 200) if normalize_key(e.label) == normalize_key(e.value) else f"{short(e.label, 60)}: {short(e.value, 200)}"
    return f"#{e.id} · {who} · {what} `{i18n.date(e.learned)}`"


async def cmd_remember(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/remember [chat] SUBJECT: VALUE``."""
    facts = ctx.svc.memory.facts
    if facts is None:
        await reply(ctx, ev, _("Memory entries need the DuckDB or PostgreSQL dialogue store."))
        return
    words = ev.args.split(maxsplit=1)
    about_chat = bool(words) and words[0].casefold() in CHAT_WORDS and ev.chat_type != PRIVATE
    parsed = parse_fact(words[1] if about_chat and len(words) > 1 else ("" if about_chat else ev.args))
    if parsed is None:
        await reply(ctx, ev, _("Usage: `/remember birthday: 12 March` (about you) · `/remember chat standup: 10:00 on "
                               "weekdays` (about this group, admins)"))
        return
    if about_chat and not await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id):
        await reply(ctx, ev, _("Only this group's admins can add facts about the group."))
        return
    user_id = None if about_chat else ev.sender.user_id
    refusal = await over_entry_limit(ctx.svc, ctx.chat_id, ev.sender.user_id, user_id, parsed[0])
    if refusal is not None:
        await reply(ctx, ev, with_support(ctx.svc, refusal), upgrade_buttons(ctx))
        return
    done = await facts.remember(ctx.chat_id, user_id, parsed[0], parsed[1], origin="manual", author_id=ev.sender.user_id,
                                user_name=None if user_id is None else ev.sender.name)
    what = parsed[1] if parsed[0] == parsed[1] else f"{parsed[0]}: {parsed[1]}"
    if done.status == "unchanged":
        text = _("I already know that: {fact}", fact=short(what, 300))
    elif done.replaced is not None:
        text = _("Updated (#{id}): {fact} — it was “{old}”.", id=done.entry.id, fact=short(what, 300),
                 old=short(done.replaced.value, 200))
    else:
        text = _("Remembered (#{id}): {fact}", id=done.entry.id, fact=short(what, 300))
    await reply(ctx, ev, text)


async def over_entry_limit(svc: Services, chat_id: int, member: int, user_id: int | None, subject: str) -> str | None:
    """The refusal (one sentence, the current language) when a new fact about ``user_id`` (None: the
    chat) would pass ``member``'s tier's ``entry_limit`` in ``chat_id`` — per chat, and per member
    over all chats; a new value of a current fact adds none. None when it fits."""
    adm, facts = svc.admission, svc.memory.facts
    if adm is None or facts is None:
        return None
    key = normalize_key(subject)
    if any(e.key == key for e in await facts.current(chat_id, [] if user_id is None else [user_id], chat=user_id is None)):
        return None  # supersedes: the count stays
    tier = await adm.tier_of(chat_id, member)
    per_user, per_chat = adm.storage_limits(tier)
    if per_chat.entry_limit >= 0 and await facts.count(chat_id=chat_id) >= per_chat.entry_limit:
        return _("This chat keeps at most {n} facts on the {tier} tier: /forget fact one first.",
                 n=i18n.number(per_chat.entry_limit), tier=tier)
    if user_id is not None and per_user.entry_limit >= 0 and await facts.count(user_id=user_id) >= per_user.entry_limit:
        return _("I keep at most {n} facts about you on the {tier} tier: /forget fact one first.",
                 n=i18n.number(per_user.entry_limit), tier=tier)
    return None


async def list_facts(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/memory facts``: the current facts this member may see here."""
    facts = ctx.svc.memory.facts
    if facts is None:
        await reply(ctx, ev, _("Memory entries need the DuckDB or PostgreSQL dialogue store."))
        return
    admin = is_group(ev.chat_type) and await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id)
    entries = await facts.current(ctx.chat_id, None if admin else [ev.sender.user_id])
    if not entries:
        await reply(ctx, ev, _("No facts yet. Add one: `/remember birthday: 12 March`."))
        return
    names = {e.user_id: e.user_name for e in entries if e.user_id is not None and e.user_name}
    names[ev.sender.user_id] = ev.sender.name
    lines = [_line(e, names) for e in entries[-LIST_MAX:]]
    head = _("Facts I keep here ({n}):", n=i18n.number(len(entries)))
    await reply(ctx, ev, head + "\n" + "\n".join(lines) + "\n" + _("`/forget fact NUMBER` removes one."))


async def forget_fact(ctx: ChatContext, ev: CommandEvent, what: str) -> None:
    """``/forget fact NUMBER|SUBJECT``: remove one fact with its history."""
    facts = ctx.svc.memory.facts
    what = what.strip().lstrip("#")
    if facts is None or not what:
        await reply(ctx, ev, _("Usage: `/forget fact 12` (its number in /memory facts) or `/forget fact birthday`"))
        return
    admin = is_group(ev.chat_type) and await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id)
    entry = await facts.get(ctx.chat_id, int(what)) if what.isdigit() else None
    if entry is None and not what.isdigit():  # a subject: the member's own first, then (admins) the chat's
        mine = await facts.history(ctx.chat_id, ev.sender.user_id, what)
        chat = await facts.history(ctx.chat_id, None, what) if admin else []
        found = mine or chat
        entry = found[-1] if found else None
    if entry is None:
        await reply(ctx, ev, _("No fact “{what}” here (see /memory facts).", what=short(what, 60)))
        return
    if entry.user_id != ev.sender.user_id and not admin:
        await reply(ctx, ev, _("That fact is not about you: only this group's admins can remove it."))
        return
    n = await facts.forget(ctx.chat_id, entry.user_id, entry.key)
    await reply(ctx, ev, _("Forgotten: {fact} ({n} with its history).", fact=short(entry.label, 80), n=i18n.number(n)))

