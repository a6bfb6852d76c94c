"""/admin: the bot's owners (``telegram.owners`` in kith.yaml; the host in ``kith chat``) run it from Telegram.

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

import i18n
from i18n import N_, _, ngettext
from tiers.errors import TierError
from tiers.subscriptions import parse_target

from actors.handlers import ChatContext
from actors.events import PRIVATE, CommandEvent
from .replies import reply


USAGE = N_("/admin · /admin grant user:ID|chat:ID|here TIER [DAYS] · /admin revoke user:ID|chat:ID|here "
           "(or, replying to a member's message: /admin grant TIER [DAYS] · /admin revoke)")
TOP_CHATS = 5


async def cmd_admin(ctx: ChatContext, ev: CommandEvent) -> None:

    if ev.sender.user_id not in ctx.svc.owners:
        await reply(ctx, ev, _("Unknown command /{command}. Try /help.", command=ev.command))
        return
    args = ev.args.split()
    if not args:
        if ev.chat_type != PRIVATE:
            await reply(ctx, ev, _("The overview names other chats: send /admin in a private chat with me."))
            return
        await reply(ctx, ev, await overview(ctx))
        return
    verb, rest = args[0].lower(), args[1:]
    if ev.reply_to_user is not None and not (rest and _is_target(rest[0])):
        rest = [f"user:{ev.reply_to_user}", *rest]  # a reply names the member
    try:
        if verb == "grant" and len(rest) in (2, 3):
            scope, scope_id = _target(rest[0], ev)
            days = float(rest[2]) if len(rest) == 3 else None
            sub = await _subs(ctx).grant(scope, scope_id, rest[1], days, f"admin:{ev.sender.user_id}")
            if sub.expires_at is None:
                granted = _("{target}: {tier}, no expiry.", target=sub.target, tier=sub.tier)
            else:
                granted = _("{target}: {tier}, until {when} UTC.", target=sub.target, tier=sub.tier,
                            when=i18n.datetime_(sub.expires_at.astimezone(UTC)))
            await reply(ctx, ev, granted)
            return
        if verb == "revoke" and len(rest) == 1:
            scope, scope_id = _target(rest[0], ev)
            gone = await _subs(ctx).revoke(scope, scope_id)
            target = f"{scope}:{scope_id}"
            await reply(ctx, ev, _("{target}: revoked.", target=target) if gone else
                        _("{target}: had no subscription.", target=target))
            return
    except ValueError:
        await reply(ctx, ev, _("DAYS must be a number. {usage}", usage=_(USAGE)))
        return
    except TierError as exc:
        await reply(ctx, ev, f"{exc}. {_(USAGE)}")  # (a TierError's text is English: tiers has no catalog)
        return
    await reply(ctx, ev, _(USAGE))


def _subs(ctx: ChatContext):
    adm = ctx.svc.admission
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


async def overview(ctx: ChatContext) -> str:
    """The owner's one-message overview (Markdown)."""
    from tiers.usage import usage_summary

    svc = ctx.svc
    now = svc.clock()
    sup, mem = svc.supervisor, svc.memory
    emb = mem.embedder
    num = i18n.number
    actors = (_("chat actors: {running} running, {started} started, {restarted} restarted after a crash",
                running=num(sup.active), started=num(sup.stats.spawned), restarted=num(sup.stats.restarted))
              if sup is not None else _("no supervisor"))
    lines = [_("**Admin overview**"),
             _("Health: {actors}; indexer queue {indexer}, store queue {store}; embedding {backend} ({precision})",
               actors=actors, indexer=num(mem.indexer.pending), store=num(mem.store.pending), backend=emb.backend,
               precision=emb.encoder.precision)]
    day = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    rep = await usage_summary(mem.store, by="model", since=day)
    t = rep["total"]
    tokens = t["prompt_tokens"] + t["completion_tokens"]
    lines.append(_("Today (UTC): {requests}, {tokens}, cost {cost}", requests=_requests(t["requests"]),
                   tokens=ngettext("{n} token", "{n} tokens", tokens, n=num(tokens)), cost=t["cost"]))
    lines += [f"• {g['key']}: {_requests(g['requests'])}, {g['cost']}" for g in rep["rows"]]
    chats = sorted(await mem.store.chats(), key=lambda c: c.messages, reverse=True)[:TOP_CHATS]
    if chats:
        lines.append(_("Largest chats:"))
        lines += [f"• {c.title or c.type} ({c.chat_id}): " + ngettext("{n} message", "{n} messages", c.messages, n=num(c.messages))
                  for c in chats]
    cleaned = await mem.store.cleanups()
    if cleaned:
        from .capacity import describe

        lines.append(_("Capacity cleanup (the host's imports are never removed):"))
        lines += [f"• {r.chat_id}: {describe(r)}" for r in cleaned[-TOP_CHATS:]]
    if svc.admission is not None:
        subs = await svc.admission.subs.list()
        lines.append(_("Subscriptions: {n} active", n=num(len(subs)))
                     + (": " + ", ".join(f"{s.target} {s.tier}" for s in subs[:10]) if subs else ""))
    lines.append(_(USAGE))
    return "\n".join(lines)


def _requests(n: int) -> str:
    return ngettext("{n} request", "{n} requests", n, n=i18n.number(n))
