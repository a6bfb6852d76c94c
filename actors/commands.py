"""Chat commands (``/start``, ``/help``, ...), handled inside the chat's actor."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .events import CommandEvent

if TYPE_CHECKING:
    from .chat import ChatActor

HELP = (
    "I'm {name}: I remember this chat and answer with what was said before.\n"
    "In groups, mention me, reply to me, or use a keyword.\n"
    "/help — this text"
)


async def handle_command(actor: "ChatActor", ev: CommandEvent) -> None:
    name = actor.svc.bot.name
    match ev.command:
        case "start" | "help":
            await actor.outbox.send(actor.chat_id, HELP.format(name=name), reply_to=ev.message_id, thread_id=ev.thread_id)
        case _:
            await actor.outbox.send(
                actor.chat_id, f"Unknown command /{ev.command}. Try /help.", reply_to=ev.message_id, thread_id=ev.thread_id
            )
