"""``/key``: users' and groups' own API keys (bring your own key), set in private chats only.

::

    /key                                   your keys (provider and last four characters) and how to set one
    /key <provider> <key>                  set your key for a provider (e.g. /key openai sk-…)
    /key delete [provider]                 delete your key(s)
    /key group <chat id> [<provider> <key> | delete [provider]]   a group's keys (its admins, here)

The message that carried a key is deleted from the chat when the bot can; a key posted in a group
is never stored (the message is deleted and the sender told to revoke it). Keys are stored
encrypted by ``providers.keys.KeyVault``; replies show only the last four characters.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .events import PRIVATE, CommandEvent

if TYPE_CHECKING:
    from .chat import ChatActor

USAGE = ("`/key <provider> <key>` sets your own API key (e.g. `/key openai sk-…`); `/key delete` removes it.\n"
         "A group's admins set the group's key here: `/key group <chat id> <provider> <key>`.")


async def cmd_key(actor: "ChatActor", ev: CommandEvent) -> None:
    from .commands import reply

    args = ev.args.split()
    if ev.chat_type != PRIVATE:
        if len(args) >= 2:  # a key posted in the group: never stored
            deleted = await actor.outbox.delete(actor.chat_id, ev.message_id)
            gone = "I deleted your message, but" if deleted else "Delete your message now:"
            await reply(actor, ev, f"Keys are never set in a group. {gone} the key may have been seen — revoke it at "
                                   f"the provider and send me a new one in a private chat: `/key group {actor.chat_id} "
                                   "<provider> <key>`.")
        else:
            await reply(actor, ev, f"A group's key is set by its admins in a private chat with me: "
                                   f"`/key group {actor.chat_id} <provider> <key>`.")
        return
    vault = actor.svc.keys
    if vault is None or not vault.enabled:
        if len(args) >= 2:
            await _delete(actor, ev)
        await reply(actor, ev, "This bot does not keep personal API keys (its host has not set KITH_SECRET_KEY).")
        return
    from providers.keys import CHAT, USER

    scope, scope_id, whose = USER, ev.sender.user_id, "your"
    if args and args[0].lower() == "group":
        if len(args) < 2 or not _is_int(args[1]) or int(args[1]) >= 0:
            await reply(actor, ev, "`/key group <chat id> <provider> <key>`: the group's id is a negative number "
                                   "(send `/key` in the group to see it).")
            return
        scope, scope_id, whose = CHAT, int(args[1]), f"group {args[1]}'s"
        if not await actor.outbox.is_admin(scope_id, ev.sender.user_id):
            await reply(actor, ev, f"Only the admins of group {scope_id} can set or see its keys.")
            if len(args) >= 4:
                await _delete(actor, ev)
            return
        args = args[2:]
    if not args:
        keys = await vault.info(scope, scope_id)
        if not keys:
            who = "You have" if scope == USER else f"Group {scope_id} has"
            await reply(actor, ev, f"{who} no keys set; requests use the bot's own.\n\n{USAGE}")
            return
        lines = "\n".join(f"• {k.provider}: {k.hint} (set {k.updated_at:%Y-%m-%d})" for k in keys)
        await reply(actor, ev, f"{whose.capitalize()} keys:\n{lines}\n\n`/key{_group(scope, scope_id)} delete [provider]` removes them.")
        return
    if args[0].lower() == "delete":
        provider = args[1].lower() if len(args) > 1 else None
        n = await vault.delete(scope, scope_id, provider)
        what = f"{whose} {provider} key" if provider else f"{whose} keys"
        await reply(actor, ev, f"Deleted {what}." if n else f"No {what} to delete.")
        return
    if len(args) != 2:
        await reply(actor, ev, USAGE)
        if len(args) > 2:
            await _delete(actor, ev)
        return
    provider, key = args[0].lower(), args[1]
    known = getattr(actor.svc.llm, "providers", None)  # None: an LLM that does not say (accept any)
    if known is not None and provider not in known:
        await _delete(actor, ev)
        uses = f"they use: {', '.join(known)}" if known else "they need no key (the offline model answers)"
        await reply(actor, ev, f"This bot's models do not use {provider!r}; {uses}.")
        return
    info = await vault.set(scope, scope_id, provider, key)
    deleted = await _delete(actor, ev)
    tail = "" if deleted else " Delete your message with the key from this chat."
    where = "in every chat" if scope == USER else f"in group {scope_id} (a member's own key comes first)"
    await reply(actor, ev, f"Saved {whose} {provider} key {info.hint} (encrypted). It is used for requests to {provider} "
                           f"models {where}; `/key{_group(scope, scope_id)} delete {provider}` removes it.{tail}")


async def _delete(actor: "ChatActor", ev: CommandEvent) -> bool:
    return await actor.outbox.delete(actor.chat_id, ev.message_id)


def _group(scope: str, scope_id: int) -> str:
    return f" group {scope_id}" if scope == "chat" else ""


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True
