"""How the features answer a command, and the small texts several of them share."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.events import PRIVATE, CommandEvent
from actors.handlers import ChatContext
from actors.outbox import Button
from i18n import N_, _

__all__ = ["FEATURE_LABELS", "features_line", "reply", "reply_privately", "short"]


async def reply(ctx: ChatContext, ev: CommandEvent, text: str, buttons: Sequence[Sequence[Button]] | None = None) -> None:
    """Answer the command ``ev`` in its chat and thread (with inline ``buttons`` when given)."""
    if buttons:
        await ctx.outbox.send_buttons(ctx.chat_id, text, buttons, reply_to=ev.message_id, thread_id=ev.thread_id)
    else:
        await ctx.outbox.send(ctx.chat_id, text, reply_to=ev.message_id, thread_id=ev.thread_id)


async def reply_privately(ctx: ChatContext, ev: CommandEvent, text: str) -> None:
    """Answer the command ``ev`` about its sender (``/memory``, ``/usage``, ``/profile``): in a group,
    seen by the sender only where the transport can (``Outbox.send_ephemeral``), else a normal reply."""
    if ev.chat_type == PRIVATE:
        await reply(ctx, ev, text)
        return
    await ctx.outbox.send_ephemeral(ctx.chat_id, ev.sender.user_id, text, reply_to=ev.message_id, thread_id=ev.thread_id)


def short(text: str, n: int) -> str:
    """``text`` on one line, at most ``n`` characters (``…`` where it is cut)."""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


FEATURE_LABELS = (("vision", N_("photos")), ("documents", N_("documents")), ("voice", N_("voice")),
                  ("image_generation", "/image"), ("custom_persona", N_("persona")), ("custom_name", N_("bot name")))


def features_line(features: Any) -> str:
    """``photos ✓ · documents ✓ · voice ✗ · /image ✗ · persona ✓ · bot name ✗`` for a tier's ``Features``."""
    return " · ".join(f"{_(label)} {'✓' if getattr(features, name) else '✗'}" for name, label in FEATURE_LABELS)
