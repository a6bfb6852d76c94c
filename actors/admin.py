"""/admin: the bot's owners (``telegram.owners`` in kith.yaml) run it from Telegram.

In a private chat with the bot, an owner gets, in one message: health (actors, queues, embedding
backend), today's usage and cost (UTC day, by model), the largest chats, the active subscriptions;
and can grant or revoke a subscription:

    /admin
    /admin grant user:12345 premium 30     (days; none = no expiry)   ·   /admin grant here premium
    /admin revoke chat:-100123             ·   /admin revoke here
    /admin grant premium 30 · /admin revoke   (as a reply to a member's message: that member)

``here`` is the chat the command is sent in. Anyone else gets the same answer as for an unknown
command (the command is not advertised), and in a group the overview is refused (it names other
chats). Grants go through the running admission's subscription store, so they apply at once.
"""
from __future__ import annotations

from datetime import UTC, datetime, time
from typing import TYPE_CHECKING

from tiers.errors import TierError
from tiers.subscriptions import parse_target

from .events import PRIVATE, CommandEvent

if TYPE_CHECKING:
    from .chat import ChatActor

USAGE = ("/admin · /admin grant user:ID|chat:ID|here TIER [DAYS] · /admin revoke user:ID|chat:ID|here "
         "(or, replying to a member's message: /admin grant TIER [DAYS] · /admin revoke)")
TOP_CHATS = 5


async def cmd_admin(actor: "ChatActor", ev: CommandEvent) -> None:
    from .commands import reply

    if ev.sender.user_id not in actor.svc.config.settings.telegram.owners:
        await reply(actor, ev, f"Unknown command /{ev.command}. Try /help.")
        return
    args = ev.args.split()
    if not args:
        if ev.chat_type != PRIVATE:
            await reply(actor, ev, "The overview names other chats: send /admin in a private chat with me.")
            return
        await reply(actor, ev, await overview(actor))
        return
    verb, rest = args[0].lower(), args[1:]
    if ev.reply_to_user is not None and not (rest and _is_target(rest[0])):
        rest = [f"user:{ev.reply_to_user}", *rest]  # a reply names the member
    try:
        if verb == "grant" and len(rest) in (2, 3):
            scope, scope_id = _target(rest[0], ev)
            days = float(rest[2]) if len(rest) == 3 else None
            sub = await _subs(actor).grant(scope, scope_id, rest[1], days, f"admin:{ev.sender.user_id}")
            until = "no expiry" if sub.expires_at is None else f"until {sub.expires_at:%Y-%m-%d %H:%M} UTC"
            await reply(actor, ev, f"{sub.target}: {sub.tier}, {until}.")
            return
        if verb == "revoke" and len(rest) == 1:
            scope, scope_id = _target(rest[0], ev)
            gone = await _subs(actor).revoke(scope, scope_id)
            await reply(actor, ev, f"{scope}:{scope_id}: {'revoked' if gone else 'had no subscription'}.")
            return
    except ValueError:
        await reply(actor, ev, f"DAYS must be a number. {USAGE}")
        return
    except TierError as exc:
        await reply(actor, ev, f"{exc}. {USAGE}")
        return
    await reply(actor, ev, USAGE)


def _subs(actor: "ChatActor"):
    adm = actor.svc.admission
    if adm is None:
        raise TierError("this bot runs without tiers")
    return adm.subs


def _is_target(text: str) -> bool:
    return text.lower() == "here" or ":" in text


def _target(text: str, ev: CommandEvent) -> tuple[str, int]:
    """``here`` → this chat (a private chat's id is its user's); else ``user:ID`` / ``chat:ID``."""
    if text.lower() == "here":
        return ("user", ev.chat_id) if ev.chat_type == PRIVATE else ("chat", ev.chat_id)
    return parse_target(text)


async def overview(actor: "ChatActor") -> str:
    """The owner's one-message overview (Markdown)."""
    from tiers.usage import usage_summary

    svc = actor.svc
    now = svc.clock()
    sup, mem = svc.supervisor, svc.memory
    emb = mem.embedder
    actors = (f"chat actors: {sup.active} running, {sup.stats.spawned} started, {sup.stats.restarted} restarted after a crash"
              if sup is not None else "no supervisor")
    lines = ["**Admin overview**",
             f"Health: {actors}; indexer queue {mem.indexer.pending}, store queue {mem.store.pending}; "
             f"embedding {emb.backend} ({emb.encoder.precision})"]
    day = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    rep = await usage_summary(mem.store, by="model", since=day)
    t = rep["total"]
    lines.append(f"Today (UTC): {t['requests']:,} requests, {t['prompt_tokens'] + t['completion_tokens']:,} tokens, "
                 f"cost {t['cost']}")
    lines += [f"• {g['key']}: {g['requests']:,} requests, {g['cost']}" for g in rep["rows"]]
    chats = sorted(await mem.store.chats(), key=lambda c: c.messages, reverse=True)[:TOP_CHATS]
    if chats:
        lines.append("Largest chats:")
        lines += [f"• {c.title or c.type} ({c.chat_id}): {c.messages:,} messages" for c in chats]
    if svc.admission is not None:
        subs = await svc.admission.subs.list()
        lines.append(f"Subscriptions: {len(subs)} active" + (": " + ", ".join(f"{s.target} {s.tier}" for s in subs[:10]) if subs else ""))
    lines.append(USAGE)
    return "\n".join(lines)
