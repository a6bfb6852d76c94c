"""The Telegram transport (kurigram, imported as ``pyrogram``): updates → chat events, and the Outbox.

- ``bot``: ``run_bot`` / ``serve`` — client, handlers, runtime, graceful shutdown, gap recovery.
- ``updates``: ``UpdateRouter`` — thin handlers converting updates to events; channel gate; privacy notice.
- ``outbox``: ``TelegramOutbox`` — sending, editing, streaming, documents, buttons, ``is_admin``.
- ``render``: Markdown → Telegram text + entities, split into ≤ 4096 UTF-16 units.
- ``limits``: per-chat / per-group / global budgets and FloodWait.

Importing this package imports pyrogram; the rest of ``actors`` never does.
"""
from .bot import COMMANDS, BotApp, build_client, run_bot, serve
from .limits import SendLimiter
from .outbox import DeliveryFailed, TelegramOutbox, TelegramReplyStream
from .render import Part, render, render_parts, split
from .updates import UpdateRouter, callback_to_event, message_to_event

__all__ = [
    "COMMANDS",
    "BotApp",
    "DeliveryFailed",
    "Part",
    "SendLimiter",
    "TelegramOutbox",
    "TelegramReplyStream",
    "UpdateRouter",
    "build_client",
    "callback_to_event",
    "message_to_event",
    "render",
    "render_parts",
    "run_bot",
    "serve",
    "split",
]
