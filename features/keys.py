"""``/key``: users' and groups' own API keys (bring your own key), set in private chats only.

::

    /key                                   your keys (provider and last four characters) and how to set one
    /key <provider> <key>                  set your key for a provider (e.g. /key openai sk-…)
    /key delete [provider]                 delete your key(s)
    /key group <chat id> [<provider> <key> | delete [provider]]   a group's keys (its admins, here)

The message that carried a key is deleted from the chat when the bot can; a key posted in a group
is never stored (the message is deleted and the sender told to revoke it). Keys are stored
encrypted by ``providers.keys.KeyVault``; replies show only the last four characters, and which of
the configured models each key is used for (``LLM.key_use``: a model on the host's own server,
``api_base``, never gets a user's key unless the host set ``accepts_user_keys``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import i18n
from actors.events import PRIVATE, CommandEvent
from actors.handlers import ChatContext
from i18n import N_, _
from providers.keys import CHAT, USER

from .replies import reply

if TYPE_CHECKING:
    from providers.keys import KeyVault

__all__ = ["USAGE", "cmd_key", "key_use_text"]

USAGE = N_("`/key <provider> <key>` sets your own API key (e.g. `/key openai sk-…`); `/key delete` removes it.\n"
           "A group's admins set the group's key here: `/key group <chat id> <provider> <key>`.")


async def cmd_key(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/key`` (the module's docstring): in a group only says where keys are set; in a private chat
    lists, deletes or sets the sender's keys, or a group's (``/key group <chat id> …``) for its admins."""
    args = ev.args.split()
    if ev.chat_type != PRIVATE:
        await _key_in_group(ctx, ev, args)
        return
    vault = ctx.svc.keys
    if vault is None or not vault.enabled:
        if len(args) >= 2:
            await _delete(ctx, ev)
        await reply(ctx, ev, _("This bot does not keep personal API keys (its host has not set KITH_SECRET_KEY)."))
        return
    owner = await _key_owner(ctx, ev, args)
    if owner is None:
        return
    scope, scope_id, args = owner
    if not args:
        await _list_keys(ctx, ev, vault, scope, scope_id)
    elif args[0].lower() == "delete":
        await _delete_keys(ctx, ev, vault, scope, scope_id, args)
    else:
        await _set_key(ctx, ev, vault, scope, scope_id, args)


async def _key_in_group(ctx: ChatContext, ev: CommandEvent, args: list[str]) -> None:
    """``/key`` sent in a group: a key in it (two words or more) is deleted, never stored; either way
    the sender is told to set the group's key in a private chat."""
    if len(args) >= 2:  # a key posted in the group: never stored
        if await ctx.outbox.delete(ctx.chat_id, ev.message_id):
            text = _("Keys are never set in a group. I deleted your message, but the key may have been seen — revoke it "
                     "at the provider and send me a new one in a private chat: `/key group {chat_id} <provider> <key>`.",
                     chat_id=ctx.chat_id)
        else:
            text = _("Keys are never set in a group. Delete your message now: the key may have been seen — revoke it "
                     "at the provider and send me a new one in a private chat: `/key group {chat_id} <provider> <key>`.",
                     chat_id=ctx.chat_id)
        await reply(ctx, ev, text)
    else:
        await reply(ctx, ev, _("A group's key is set by its admins in a private chat with me: "
                                 "`/key group {chat_id} <provider> <key>`.", chat_id=ctx.chat_id))


async def _key_owner(ctx: ChatContext, ev: CommandEvent, args: list[str]) -> tuple[str, int, list[str]] | None:
    """(scope, its id, the rest of ``args``): the sender's own keys, or with ``group <chat id>`` that
    group's when the sender is one of its admins; None (said) for a bad id or a non-admin."""
    if not (args and args[0].lower() == "group"):
        return USER, ev.sender.user_id, args
    if len(args) < 2 or not _is_int(args[1]) or int(args[1]) >= 0:
        await reply(ctx, ev, _("`/key group <chat id> <provider> <key>`: the group's id is a negative number "
                                 "(send `/key` in the group to see it)."))
        return None
    scope_id = int(args[1])
    if not await ctx.outbox.is_admin(scope_id, ev.sender.user_id):
        await reply(ctx, ev, _("Only the admins of group {chat_id} can set or see its keys.", chat_id=scope_id))
        if len(args) >= 4:
            await _delete(ctx, ev)
        return None
    return CHAT, scope_id, args[2:]


async def _list_keys(ctx: ChatContext, ev: CommandEvent, vault: KeyVault, scope: str, scope_id: int) -> None:
    """``/key [group ID]``: the keys set (provider, last four characters, date, the models they serve)."""
    mine = scope == USER
    keys = await vault.info(scope, scope_id)
    if not keys:
        text = (_("You have no keys set; requests use the bot's own.") if mine else
                _("Group {chat_id} has no keys set; requests use the bot's own.", chat_id=scope_id))
        await reply(ctx, ev, f"{text}\n\n{_(USAGE)}")
        return
    listed = []
    for k in keys:
        listed.append(_("• {provider}: {hint} (set {date})", provider=k.provider, hint=k.hint, date=i18n.date(k.updated_at)))
        use = key_use_text(ctx, k.provider)
        if use:
            listed.append(f"  {use}")
    lines = "\n".join(listed)
    await reply(ctx, ev, _("Your keys:\n{lines}\n\n`/key delete [provider]` removes them.", lines=lines) if mine else
                _("Group {chat_id}'s keys:\n{lines}\n\n`/key group {chat_id} delete [provider]` removes them.",
                  chat_id=scope_id, lines=lines))


async def _delete_keys(ctx: ChatContext, ev: CommandEvent, vault: KeyVault, scope: str, scope_id: int, args: list[str]) -> None:
    """``/key [group ID] delete [provider]``: ``args`` starts with ``delete``."""
    provider = args[1].lower() if len(args) > 1 else None
    n = await vault.delete(scope, scope_id, provider)
    await reply(ctx, ev, _deleted(bool(n), scope == USER, scope_id, provider))


async def _set_key(ctx: ChatContext, ev: CommandEvent, vault: KeyVault, scope: str, scope_id: int, args: list[str]) -> None:
    """``/key [group ID] <provider> <key>``: stored encrypted for a provider this bot's models use; the
    message that carried it is deleted (or the sender asked to delete it)."""
    mine = scope == USER
    if len(args) != 2:
        await reply(ctx, ev, _(USAGE))
        if len(args) > 2:
            await _delete(ctx, ev)
        return
    provider, key = args[0].lower(), args[1]
    known = getattr(ctx.svc.llm, "providers", None)  # None: an LLM that does not say (accept any)
    if known is not None and provider not in known:
        await _delete(ctx, ev)
        if known:
            text = _("This bot's models do not use {provider!r}; they use: {providers}.", provider=provider,
                     providers=", ".join(known))
        else:
            text = _("This bot's models do not use {provider!r}; they need no key (the offline model answers).",
                     provider=provider)
        await reply(ctx, ev, text)
        return
    info = await vault.set(scope, scope_id, provider, key)
    deleted = await _delete(ctx, ev)
    if mine:
        text = _("Saved your {provider} key {hint} (encrypted), for your requests in every chat; "
                 "`/key delete {provider}` removes it.", provider=provider, hint=info.hint)
    else:
        text = _("Saved group {chat_id}'s {provider} key {hint} (encrypted), for requests in group {chat_id} "
                 "(a member's own key comes first); `/key group {chat_id} delete {provider}` removes it.",
                 chat_id=scope_id, provider=provider, hint=info.hint)
    if not deleted:
        text += " " + _("Delete your message with the key from this chat.")
    use = key_use_text(ctx, provider)
    await reply(ctx, ev, f"{text}\n{use}" if use else text)


def key_use_text(ctx: ChatContext, provider: str) -> str | None:
    """Which configured models a ``provider`` key is used for, in one or two sentences (``Used for:
    fast, smart. Not used for: local (…)``), or that it is used for none; None when the LLM does not
    say (``LLM.key_use`` missing, as in fakes)."""
    key_use = getattr(ctx.svc.llm, "key_use", None)
    if key_use is None:
        return None
    use = key_use(provider)
    if not use.used:
        if use.not_used:
            return _("It is used for none of this bot's models: {models} run on the host's own servers, which never get "
                     "users' keys.", models=", ".join(use.not_used))
        return _("It is used for none of this bot's models: none of them is a {provider} model.", provider=provider)
    text = _("Used for: {models}.", models=", ".join(use.used))
    if use.not_used:
        text += " " + _("Not used for: {models} (the host's own servers, which never get users' keys).",
                        models=", ".join(use.not_used))
    return text


def _deleted(done: bool, mine: bool, chat_id: int, provider: str | None) -> str:
    """The answer to ``/key [group ID] delete [provider]``."""
    if mine:
        if provider:
            return (_("Deleted your {provider} key.", provider=provider) if done else
                    _("You have no {provider} key to delete.", provider=provider))
        return _("Deleted your keys.") if done else _("You have no keys to delete.")
    if provider:
        return (_("Deleted group {chat_id}'s {provider} key.", chat_id=chat_id, provider=provider) if done else
                _("Group {chat_id} has no {provider} key to delete.", chat_id=chat_id, provider=provider))
    return (_("Deleted group {chat_id}'s keys.", chat_id=chat_id) if done else
            _("Group {chat_id} has no keys to delete.", chat_id=chat_id))


async def _delete(ctx: ChatContext, ev: CommandEvent) -> bool:
    return await ctx.outbox.delete(ctx.chat_id, ev.message_id)


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True
