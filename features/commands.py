"""Chat commands and inline-keyboard presses, handled inside the chat's ctx (docs/design.md §8).

Commands change the actor's own state (settings, windows) without locks because they run in the
actor's loop like every other event. Texts are Markdown; the transport renders them.
Group settings and destructive group actions are for group admins only (``Outbox.is_admin``).
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Literal

from babel import Locale, UnknownLocaleError
from babel.dates import format_time

import i18n
from actors.events import PRIVATE, ButtonPress, CommandEvent, is_group
from actors.handlers import ChatContext
from actors.outbox import Button
from actors.support import with_support
from i18n import N_, _, ngettext
from tiers.quotas import request_usage

from . import admin, billing, credits, facts, keys, media
from .capacity import describe
from .plugins import commands as plugins
from .plugins import reminders
from .replies import features_line, reply, reply_privately, short

__all__ = ["COMMANDS", "FACTS_WORDS", "HELP", "HISTORY_DEFAULT", "HISTORY_MAX", "NAME_MAX", "OFF", "ON", "SETTINGS_KEYS", "WHO",
           "cmd_export", "cmd_forget", "cmd_help", "cmd_history", "cmd_language", "cmd_memory", "cmd_model",
           "cmd_reset", "cmd_role", "cmd_settings", "handle_button", "handle_command", "language_name", "save_role"]

HISTORY_DEFAULT = 20
HISTORY_MAX = 100
SETTINGS_KEYS = ("persona", "name", "keywords", "always_on", "persist", "language", "model", "history", "reset",
                 "allowed_users", "timezone")
NAME_MAX = 32  # characters of a bot name a group's admins give it (/settings name)
FACTS_WORDS = frozenset({"facts", "факты"})  # /memory facts, /forget fact(s) N
WHO = ("admins", "members")  # who may use /history + /export ("history") and /reset ("reset") in a group
ON = {"on", "yes", "true", "1", "enable", "enabled"}
OFF = {"off", "no", "false", "0", "disable", "disabled"}

HELP = N_("""I'm **{name}**. I remember this chat and answer with what was said before.
In groups I answer when you mention me, reply to me, or use a keyword; I remember everything else quietly.

/model — choose the language model
/role — set my persona for you (private chats)
/profile — your tier, model and today's usage
/memory — what I keep about this chat and you; `/memory words` shows what I would recall; `/memory facts` the facts I keep
/remember — keep a fact about you: `/remember birthday: 12 March` (`/remember chat …`: about the group, admins)
/forget — erase your messages in this chat; `/forget fact 12` removes one fact
/reset (or /delete_context) — clear the conversation context (history kept); `/reset all` deletes this chat's history
/history — the last messages; /export — the conversation as a file
/image — draw a picture (`/image a cat on a bike`, `/image 3 a cat`); in reply to a photo `/image edit make the sky blue` or `/image variations`
/key — use your own API key (private chat): `/key openai sk-…`; `/key delete`
/language — the language I speak with you
/settings — group settings (admins): persona, name (`/settings name Jarvis`: I answer to it here), keywords, always_on, persist, language, model, history, reset
/plugins — the tools I may use here (calculator, reminders, web search…): on and off
/remind — a reminder: `/remind 10m stretch`, `/remind tomorrow 9:00 call Anna`; /reminders lists and cancels them

Send me photos, documents (PDF, DOCX, text) and voice notes: I read them into this chat's memory when your plan includes it.""")


async def handle_command(ctx: ChatContext, ev: CommandEvent) -> None:
    """Run ``ev`` in the chat of ``ctx``. Unknown commands get a pointer to /help."""
    handler = COMMANDS.get(ev.command)
    if handler is None:
        await reply(ctx, ev, _("Unknown command /{command}. Try /help.", command=ev.command))
        return
    await handler(ctx, ev)


# ---------------------------------------------------------------------- simple ones


async def cmd_help(ctx: ChatContext, ev: CommandEvent) -> None:
    await reply(ctx, ev, with_support(ctx.svc, _(HELP, name=ctx.svc.bot.name)))


async def _members_may(ctx: ChatContext, ev: CommandEvent, key: Literal["history", "reset"]) -> bool:
    """In a group, ``/history``/``/export`` (key ``history``) and ``/reset`` (``reset``) are the
    admins' unless the group's setting says ``members``; everyone may in a private chat."""
    who = ctx.settings.history if key == "history" else ctx.settings.reset
    if not is_group(ev.chat_type) or who == "members":
        return True
    if await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id):
        return True
    if key == "history":
        text = _("Only this group's admins can see its history (an admin can allow everyone: `/settings history members`).")
    else:
        text = _("Only this group's admins can reset its context (an admin can allow everyone: `/settings reset members`).")
    await reply(ctx, ev, text)
    return False


async def cmd_history(ctx: ChatContext, ev: CommandEvent) -> None:
    if not await _members_may(ctx, ev, "history"):
        return
    try:
        n = max(1, min(HISTORY_MAX, int(ev.args))) if ev.args.strip() else HISTORY_DEFAULT
    except ValueError:
        await reply(ctx, ev, _("Usage: /history [number of messages, up to {max}]", max=HISTORY_MAX))
        return
    msgs = await ctx.svc.memory.store.messages.recent(ctx.chat_id, n, thread_id=ev.thread_id)
    if not msgs:
        await reply(ctx, ev, _("Nothing stored in this chat yet."))
        return

    # in the member's locale (CLDR, via Babel): the date once per day, then each message's time
    lines = [ngettext("Last {n} message:", "Last {n} messages:", len(msgs), n=i18n.number(len(msgs)))]
    day = None
    for m in msgs:
        if m.date.date() != day:
            day = m.date.date()
            lines.append(f"**{i18n.date(m.date)}**")
        lines.append(f"`{format_time(m.date, format='short', locale=i18n.current())}` **{m.user_name}**: {short(m.text, 300)}")
    await reply(ctx, ev, "\n".join(lines))


async def cmd_export(ctx: ChatContext, ev: CommandEvent) -> None:
    """The chat's stored conversation as transcript JSONL (re-importable with ``kith import``)."""
    if not await _members_may(ctx, ev, "history"):
        return
    title = ctx.settings.title or ev.chat_title
    lines: list[str] = []
    async for batch in ctx.svc.memory.store.messages.iter(ctx.chat_id):
        for m in batch:
            row = {
                "chat_id": m.chat_id, "message_id": m.message_id, "date": m.date.isoformat(), "user": m.user_name,
                "user_id": m.user_id, "text": m.text, "role": m.role,
            }
            if m.reply_to is not None:
                row["reply_to"] = m.reply_to
            if m.thread_id is not None:
                row["thread_id"] = m.thread_id
            if title:
                row["chat_title"] = title
            lines.append(json.dumps(row, ensure_ascii=False))
    if not lines:
        await reply(ctx, ev, _("Nothing stored in this chat yet."))
        return
    data = ("\n".join(lines) + "\n").encode("utf-8")
    await ctx.outbox.send_document(
        ctx.chat_id, f"chat-{ctx.chat_id}.jsonl", data,
        caption=ngettext("{n} message (JSONL, one message per line)", "{n} messages (JSONL, one message per line)", len(lines),
                         n=i18n.number(len(lines))), reply_to=ev.message_id, thread_id=ev.thread_id,
    )


# ---------------------------------------------------------------------- model and role


async def _model_keyboard(ctx: ChatContext, user_id: int, current: str) -> list[list[Button]]:
    """One button per model: ✓ the current one, 🔒 those the member's tier lacks, today's quota."""
    models = ctx.svc.config.settings.models

    allowed, q, used = set(models), None, {}
    adm = ctx.svc.admission
    if adm is not None:
        p = await adm.profile(ctx.chat_id, user_id)
        allowed = set(adm.allowed_models(p.tier, models))
        q, used = p.quotas, p.today.requests
    if current not in allowed and allowed:
        current = next(a for a in models if a in allowed)  # what admission will actually use
    rows = []
    for alias, spec in models.items():
        label = spec.label or alias
        mark = "✓ " if alias == current else ("🔒 " if alias not in allowed else "")
        spent, limit = request_usage(q, used, alias) if q is not None else (0, -1)
        quota = ""
        if limit >= 0 and alias in allowed:
            left = max(0, limit - spent)
            if q is not None and alias not in q.requests_per_day:
                quota = _(" ({left}/{limit} shared today)", left=left, limit=limit)
            else:
                quota = _(" ({left}/{limit} today)", left=left, limit=limit)
        rows.append([Button(f"{mark}{label}{quota}", f"model:{alias}")])
    return rows


async def cmd_model(ctx: ChatContext, ev: CommandEvent) -> None:
    user = await ctx.user_settings(ev.sender.user_id)
    current = ctx.model_for(user)
    arg = ev.args.strip()
    if arg:
        await _set_model(ctx, ev.chat_id, ev.sender.user_id, arg, lambda t: reply(ctx, ev, t))
        return
    text = _("Current model: **{model}**. Choose one:", model=current)
    if ctx.svc.admission is not None:
        p = await ctx.svc.admission.profile(ctx.chat_id, ev.sender.user_id)
        text += "\n" + _("Your tier here: **{tier}** — {features}", tier=p.tier, features=features_line(p.features))
        prices = billing.model_prices_line(ctx, p.tier)
        if prices:
            text += "\n" + prices
    await reply(ctx, ev, text, await _model_keyboard(ctx, ev.sender.user_id, current))


async def _set_model(ctx: ChatContext, chat_id: int, user_id: int, alias: str, say) -> None:
    if alias not in ctx.svc.config.settings.models:
        await say(_("Unknown model {model!r}. Send /model to pick from the list.", model=alias))
        return
    adm = ctx.svc.admission
    if adm is not None:
        tier = await adm.tier_of(chat_id, user_id)
        if alias not in adm.allowed_models(tier, ctx.svc.config.settings.models):
            await say(with_support(ctx.svc, _("🔒 {model} is not part of the {tier} tier. See /billing to upgrade.", model=alias,
                                                tier=tier)))
            return
    await ctx.save_user_settings(user_id, (await ctx.user_settings(user_id)).with_(model=alias))
    await say(_("Model set to **{model}**.", model=alias))


async def cmd_role(ctx: ChatContext, ev: CommandEvent) -> None:
    if is_group(ev.chat_type):
        await reply(ctx, ev, _("In groups the persona is a group setting: an admin can use `/settings persona <text>`."))
        return
    if not await _feature_allowed(ctx, ev, "custom_persona"):
        return
    if ev.args.strip():
        await save_role(ctx, ev.sender.user_id, ev.args.strip())
        await reply(ctx, ev, _("Persona saved."))
        return
    user = await ctx.user_settings(ev.sender.user_id)
    current = user.role
    ctx.awaiting_role.add(ev.sender.user_id)
    text = _("Send me the persona as your next message (how I should behave and talk with you).")
    if current:
        text += "\n\n" + _("Current persona: {persona}", persona=short(current, 500))
    await reply(ctx, ev, text, [[Button(_("Cancel"), "role:cancel"), Button(_("Delete persona"), "role:delete")]])


async def _feature_allowed(ctx: ChatContext, ev: CommandEvent, feature: str) -> bool:
    """Whether the member's tier here has ``feature`` (``custom_persona``, ``custom_name``); refused once
    with a /billing button (and the support line)."""
    adm = ctx.svc.admission
    if adm is None:
        return True
    verdict = await adm.admit_feature(ctx.chat_id, ev.sender.user_id, feature)
    if verdict.allowed:
        return True
    await reply(ctx, ev, with_support(ctx.svc, verdict.refusal or _("That is not part of your plan.")), billing.plans_button(ctx))
    return False


async def save_role(ctx: ChatContext, user_id: int, role: str | None) -> None:
    """Store ``role`` as the member's persona (None or empty: delete it)."""
    await ctx.save_user_settings(user_id, (await ctx.user_settings(user_id)).with_(role=role or None))


# ---------------------------------------------------------------------- profile, memory, forget, reset


async def cmd_memory(ctx: ChatContext, ev: CommandEvent) -> None:
    mem = ctx.svc.memory
    query = ev.args.strip()
    if query.casefold() in FACTS_WORDS:
        await facts.list_facts(ctx, ev)
        return
    if query:
        recall = await mem.recall(ctx.chat_id, query, 5)
        if not recall.hits:
            await reply_privately(ctx, ev, _("Nothing in this chat's memory matches that."))
            return
        lines = [
            f"{i}. `{i18n.datetime_(h.date)}` **{h.user_name}**: {short(h.text, 200)} "
            + _("(score {score})", score=i18n.number(h.score, digits=3)
                + "".join(f", {k} {i18n.number(v, digits=2)}" for k, v in h.parts.items() if k != "rrf"))
            for i, h in enumerate(recall.hits, 1)
        ]
        await reply_privately(ctx, ev, _("What I would recall:") + "\n" + "\n".join(lines))
        return
    await mem.flush()
    chat_msgs = await mem.store.messages.count(ctx.chat_id)
    chat_mems = await mem.vectors.count(ctx.chat_id)
    mine = await mem.store.messages.count(ctx.chat_id, user_id=ev.sender.user_id)
    recent_mine = [m for m in await mem.store.messages.recent(ctx.chat_id, 200) if m.user_id == ev.sender.user_id][-3:]
    persist = _("on") if ctx.persist else _("off (nothing new is stored)")
    lines = [
        _("**This chat**: {messages} stored, {memories} searchable. Storing: {persist}.",
          messages=ngettext("{n} message", "{n} messages", chat_msgs, n=i18n.number(chat_msgs)),
          memories=ngettext("{n} memory", "{n} memories", chat_mems, n=i18n.number(chat_mems)), persist=persist),
        _("**About you here**: {messages} of yours.", messages=ngettext("{n} message", "{n} messages", mine, n=i18n.number(mine))),
    ]
    if mem.facts is not None:
        facts_here = await mem.facts.current(ctx.chat_id, [ev.sender.user_id])
        if facts_here:
            lines.append(ngettext("**Facts** about you and this chat: {n} (`/memory facts`).",
                                  "**Facts** about you and this chat: {n} (`/memory facts`).", len(facts_here),
                                  n=i18n.number(len(facts_here))))
    cleaned = await mem.store.index.cleanups(ctx.chat_id)
    if cleaned:
        lines.append(_("**Removed by the capacity cleanup**:"))
        lines += ["• " + describe(r) for r in cleaned]
    if recent_mine:
        lines.append(_("Your latest:"))
        lines += [f"• `{i18n.datetime_(m.date)}` {short(m.text, 150)}" for m in recent_mine]
    docs = await mem.store.documents.list(ctx.chat_id)
    if docs:
        lines.append(_("**Documents** ({n}):", n=len(docs)))
        lines += [_("• {file} — {summary}, from {user}, `{date}`", file=d.file_name, summary=media.summary_for_member(d), user=d.user_name,
                    date=i18n.date(d.date)) for d in docs[-10:]]
        if len(docs) > 10:
            lines.append(ngettext("… and {n} older one.", "… and {n} older ones.", len(docs) - 10, n=len(docs) - 10))
    lines.append(_("Memory never crosses chats. /forget erases your messages here; `/memory words` shows what I'd recall."))
    await reply_privately(ctx, ev, "\n".join(lines))


async def cmd_forget(ctx: ChatContext, ev: CommandEvent) -> None:
    first, _sep, rest = ev.args.strip().partition(" ")
    if first.casefold() in FACTS_WORDS or first.casefold() in ("fact", "факт"):
        await facts.forget_fact(ctx, ev, rest)
        return
    n = await ctx.forget_user(ev.sender.user_id)
    await reply(ctx, ev, ngettext("Done: {n} of your messages in this chat was erased and will not be recalled again.",
                                    "Done: {n} of your messages in this chat were erased and will not be recalled again.", n, n=n))


async def cmd_reset(ctx: ChatContext, ev: CommandEvent) -> None:
    if ev.args.strip().lower() in ("all", "delete", "history"):
        if is_group(ev.chat_type) and not await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id):
            await reply(ctx, ev, _("Only group admins can delete the group's history."))
            return
        await reply(
            ctx, ev, _("Delete **all** of this chat's stored history and memories? This cannot be undone."),
            [[Button(_("Delete everything"), f"reset:confirm:{ev.sender.user_id}"), Button(_("Cancel"), "reset:cancel")]],
        )
        return
    if not await _members_may(ctx, ev, "reset"):
        return
    await ctx.reset_context()
    await reply(ctx, ev, _("Context cleared: I start fresh from here (history is kept; `/reset all` deletes it)."))


# ---------------------------------------------------------------------- interface language


def language_name(code: str) -> str:
    """``ru`` → ``Русский``: a language's name in that language (CLDR data, via Babel)."""
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def _language_code(value: str) -> str | None:
    """``"RU"`` → ``"ru"``: a two-letter ISO 639-1 code CLDR knows (Babel), else None."""
    code = value.strip().lower()
    if len(code) != 2 or not code.isalpha():
        return None
    try:
        Locale.parse(code)
    except (UnknownLocaleError, ValueError):
        return None
    return code


async def cmd_language(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/language`` shows the interface languages as buttons; ``/language ru`` chooses one for the
    member (every chat of theirs); ``/language auto`` follows their Telegram app again."""
    arg = ev.args.strip()
    if arg:
        await _set_language(ctx, ev.sender, arg, lambda t: reply(ctx, ev, t))
        return
    current = i18n.current()
    text = _("I speak **{language}** with you. Choose a language:", language=language_name(current))
    group_language = i18n.normalize(ctx.settings.language) if is_group(ev.chat_type) else None
    if group_language:
        text += "\n" + _("In this group I speak {language}: its admins chose it (`/settings language`).",
                         language=language_name(group_language))
    rows = [[Button(("✓ " if code == current else "") + language_name(code), f"lang:{code}")] for code in i18n.available()]
    rows.append([Button(_("As in my Telegram app"), "lang:auto")])
    await reply(ctx, ev, text, rows)


async def _set_language(ctx: ChatContext, sender, arg: str, say) -> None:
    settings = await ctx.user_settings(sender.user_id)
    if arg.lower() in ("auto", "default", "reset"):
        settings = settings.with_(language=None)
        new = i18n.normalize(sender.language_code) or i18n.DEFAULT
    else:
        code = i18n.normalize(arg)
        if code is None:
            await say(_("I don't speak {code!r} yet. Languages: {languages}.", code=arg,
                        languages=", ".join(f"{c} ({language_name(c)})" for c in i18n.available())))
            return
        settings, new = settings.with_(language=code), code
    await ctx.save_user_settings(sender.user_id, settings)
    with i18n.use(new):
        await say(_("From now on I speak {language} with you.", language=language_name(new)))


# ---------------------------------------------------------------------- settings (group admins)


def _describe_settings(ctx: ChatContext) -> str:
    """The chat's settings, one ``key: value`` line each: the keys are what ``/settings KEY VALUE`` takes
    (not translated), the values in the member's language. (No ``_()`` inside an f-string: the catalog's
    extractor cannot see it there, and the string would stay untranslated.)"""
    bot = ctx.svc.config.settings.bot
    s = ctx.settings
    keywords = bot.keywords if s.keywords is None else s.keywords
    always_on = bot.always_on if s.always_on is None else s.always_on
    on, off = _("on"), _("off")
    who = {"admins": _("admins"), "members": _("members")}
    default, none, own, everyone = _("(default)"), _("(none)"), _("(each member their own)"), _("(everyone)")
    values = {
        "persona": short(s.persona, 200) if s.persona else default,
        "name": s.name or _("{name} (default)", name=ctx.svc.bot.name),
        "keywords": ", ".join(keywords) if keywords else none,
        "always_on": on if always_on else off,
        "persist": on if ctx.persist else off,
        "language": s.language or own,
        "model": s.model or ctx.svc.config.settings.default_model,
        "history": _("{who} (who may use /history and /export here)", who=who[s.history]),
        "reset": _("{who} (who may use /reset here)", who=who[s.reset]),
        "allowed_users": ", ".join(map(str, s.allowed_users)) if s.allowed_users else everyone,
    }
    return "\n".join(f"{key}: {value}" for key, value in values.items())


async def cmd_settings(ctx: ChatContext, ev: CommandEvent) -> None:
    """``/settings``: this chat's settings; ``/settings <key> <value>`` changes one (a group's admins
    only), ``default`` resets it; ``/settings timezone <zone>`` is the member's own."""
    key, _sep, value = ev.args.strip().partition(" ")
    if key.lower() == "timezone":  # the member's own setting (reminders, times): any member may set theirs
        await reminders.set_timezone(ctx, ev, value)
        return
    if ev.chat_type != PRIVATE and not await ctx.outbox.is_admin(ctx.chat_id, ev.sender.user_id):
        await reply(ctx, ev, _("Sorry, only this group's admins can change its settings."))
        return
    key, value = key.lower(), value.strip()
    if not key:
        zone = reminders.member_timezone(await ctx.user_settings(ev.sender.user_id), ctx.svc.config.settings.plugins.timezone)
        await reply(ctx, ev, _("Settings of this chat:") + "\n" + _describe_settings(ctx) + "\n"
                    + "timezone: " + _("{zone} (yours; each member sets their own)", zone=zone) + "\n\n"
                    + _("Change one with `/settings <key> <value>`; `/settings <key> default` resets it."))
        return
    if key not in SETTINGS_KEYS:
        await reply(ctx, ev, _("Unknown setting {key!r}. Settings: {keys}.", key=key, keys=", ".join(SETTINGS_KEYS)))
        return
    setting: object  # the new value of ``key``: None (default) removes it, its default applies again
    if value.lower() in ("default", "reset", "none"):
        setting = None
    else:
        setting = await _SETTING_PARSERS.get(key, _text_setting)(ctx, ev, key, value)
        if setting is _REFUSED:
            return
    new = ctx.settings.with_(**{key: setting})  # key is one of SETTINGS_KEYS: a ChatSettings field
    await ctx.save_chat_settings(new)
    await reply(ctx, ev, _("Saved. Settings of this chat:") + "\n" + _describe_settings(ctx))


# Each setting's parser: ``value`` (stripped, not a reset) → the setting's new value, or _REFUSED after
# saying why (a bad value, a tier without the feature).
_REFUSED = object()


async def _switch_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``always_on``, ``persist``: on or off."""
    if value.lower() not in ON | OFF:
        await reply(ctx, ev, _("`/settings {key} on` or `/settings {key} off`.", key=key))
        return _REFUSED
    return value.lower() in ON


async def _persona_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``persona``: any text, with the tier's ``custom_persona``."""
    if not await _feature_allowed(ctx, ev, "custom_persona"):
        return _REFUSED
    return await _text_setting(ctx, ev, key, value)


async def _name_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``name``: a name with a letter or digit, up to ``NAME_MAX`` characters, with the tier's
    ``custom_name``; ``off`` clears it."""
    if value.lower() in OFF:
        return None
    name = " ".join(value.split())
    if not await _feature_allowed(ctx, ev, "custom_name"):
        return _REFUSED
    if not name or len(name) > NAME_MAX or not any(c.isalnum() for c in name):
        await reply(ctx, ev, _("`/settings name Jarvis`: a name of up to {max} characters that I answer to in this group; "
                               "`/settings name off` clears it.", max=NAME_MAX))
        return _REFUSED
    return name


async def _users_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``allowed_users``: user ids, separated by commas, semicolons or spaces (sorted, each once)."""
    try:
        return sorted({int(x) for x in value.replace(";", ",").replace(" ", ",").split(",") if x.strip()})
    except ValueError:
        await reply(ctx, ev, _("`/settings allowed_users 12345, 67890` (user ids), or `/settings allowed_users default`."))
        return _REFUSED


async def _who_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``history``, ``reset``: who may use those commands in a group (one of ``WHO``)."""
    if value.lower() not in WHO:
        await reply(ctx, ev, _("`/settings {key} admins` or `/settings {key} members`.", key=key))
        return _REFUSED
    return value.lower()


async def _language_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``language``: an ISO 639-1 code."""
    setting = _language_code(value)
    if setting is None:
        await reply(ctx, ev, _("`/settings language ru`: an ISO 639-1 code (en, ru, de…); I speak {languages} myself, "
                                 "and the model answers in any.", languages=", ".join(i18n.available())))
        return _REFUSED
    return setting


async def _keywords_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``keywords``: words separated by commas or semicolons (none: the chat has no keywords)."""
    return [k.strip() for k in value.replace(";", ",").split(",") if k.strip()]


async def _model_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """``model``: one of the configured models' aliases."""
    if value not in ctx.svc.config.settings.models:
        await reply(ctx, ev, _("Unknown model {model!r}. Models: {models}.", model=value, models=", ".join(ctx.svc.config.settings.models)))
        return _REFUSED
    return value


async def _text_setting(ctx: ChatContext, ev: CommandEvent, key: str, value: str) -> object:
    """Any other setting: its text, which must not be empty."""
    if not value:
        await reply(ctx, ev, _("Usage: `/settings {key} <value>`", key=key))
        return _REFUSED
    return value


_SETTING_PARSERS: dict[str, Callable[[ChatContext, CommandEvent, str, str], Awaitable[object]]] = {
    "always_on": _switch_setting, "persist": _switch_setting, "persona": _persona_setting, "name": _name_setting,
    "allowed_users": _users_setting, "history": _who_setting, "reset": _who_setting, "language": _language_setting,
    "keywords": _keywords_setting, "model": _model_setting,
}


# ---------------------------------------------------------------------- buttons


async def handle_button(ctx: ChatContext, ev: ButtonPress) -> None:
    """Inline-keyboard presses: ``model:<alias>``, ``role:cancel|delete``, ``reset:confirm:<uid>|cancel``."""
    kind, _sep, rest = ev.data.partition(":")
    uid = ev.sender.user_id

    async def edit(text: str) -> None:
        await ctx.outbox.edit(ctx.chat_id, ev.message_id, text)

    if kind == "model":
        said: list[str] = []

        async def say(text: str) -> None:
            said.append(text)
            await edit(text)

        await _set_model(ctx, ctx.chat_id, uid, rest, say)
        await ctx.outbox.answer_button(ev.query_id, _("Model: {model}", model=rest) if said and said[0] == _("Model set to **{model}**.", model=rest) else None)
    elif kind == "lang":
        await _set_language(ctx, ev.sender, rest, edit)
        await ctx.outbox.answer_button(ev.query_id)
    elif kind == "buy":
        await billing.press_buy(ctx, ev, rest)
    elif kind == billing.SUB_BUTTON:
        await billing.press_subscription(ctx, ev, rest)
    elif kind == credits.BUTTON:
        await credits.press(ctx, ev, rest)
    elif kind == plugins.PREFIX:
        await plugins.handle_button(ctx, ev, rest)
    elif kind == reminders.BUTTON:
        await reminders.press(ctx, ev, rest)
    elif kind == "billing":
        await billing.send_plans(ctx, "user" if ctx.chat_id > 0 else "chat", None, None, uid)
        await ctx.outbox.answer_button(ev.query_id)
    elif kind == "role":
        ctx.awaiting_role.discard(uid)
        if rest == "delete":
            await save_role(ctx, uid, None)
            await edit(_("Persona deleted; I use the default one again."))
        else:
            await edit(_("Cancelled."))
        await ctx.outbox.answer_button(ev.query_id)
    elif kind == "reset" and rest.startswith("confirm:"):
        if rest != f"confirm:{uid}":
            await ctx.outbox.answer_button(ev.query_id, _("Only the person who asked can confirm."), alert=True)
            return
        n = await ctx.delete_history()
        await edit(ngettext("Deleted {n} message and its memories. This chat starts from nothing.",
                            "Deleted {n} messages and their memories. This chat starts from nothing.", n, n=n))
        await ctx.outbox.answer_button(ev.query_id, _("Deleted"))
    elif kind == "reset":
        await edit(_("Cancelled: nothing was deleted."))
        await ctx.outbox.answer_button(ev.query_id)
    else:
        await ctx.outbox.answer_button(ev.query_id, _("This button has expired."))


COMMANDS = {
    "admin": admin.cmd_admin,
    "image": media.cmd_image,
    "key": keys.cmd_key,
    "start": cmd_help,
    "help": cmd_help,
    "history": cmd_history,
    "export": cmd_export,
    "model": cmd_model,
    "role": cmd_role,
    "profile": billing.cmd_profile,
    "usage": billing.cmd_usage,
    "billing": billing.cmd_billing,
    "balance": credits.cmd_balance,
    "buy": credits.cmd_buy,
    "memory": cmd_memory,
    "forget": cmd_forget,
    "remember": facts.cmd_remember,
    "reset": cmd_reset,
    "delete_context": cmd_reset,  # the name users of earlier Russian-speaking bots know
    "language": cmd_language,
    "settings": cmd_settings,
    "plugins": plugins.cmd_plugins,
    "remind": reminders.cmd_remind,
    "reminders": reminders.cmd_reminders,
}
