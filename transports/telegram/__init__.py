"""The Telegram transport (kurigram, imported as ``pyrogram``): updates → chat events, and the Outbox.

- ``client``: the kurigram client (options, credentials, connecting with retries, the command menu).
- ``updates``: ``UpdateRouter`` — thin handlers converting updates to events; channel gate; privacy notice.
- ``outbox``: ``TelegramOutbox`` — sending, editing, streaming, documents, buttons, ``is_admin``.
- ``render``: Markdown → Telegram text + entities, split into ≤ 4096 UTF-16 units.
- ``limits``: per-chat / per-group / global budgets and FloodWait.

Importing this package imports pyrogram; the actor runtime never does. ``operations.bot`` runs the
bot (``run_bot`` / ``serve``: client, handlers, runtime, control server, graceful shutdown).
"""
from .client import CLIENT_OPTIONS, COMMANDS, build_client, connect, set_commands, stop_receiving
from .limits import SendLimiter
from .outbox import DeliveryFailed, TelegramOutbox, TelegramReplyStream
from .render import Part, render, render_parts, split
from .updates import UpdateRouter, callback_to_event, message_to_event

__all__ = [
    "CLIENT_OPTIONS",
    "COMMANDS",
    "DeliveryFailed",
    "Part",
    "SendLimiter",
    "TelegramOutbox",
    "TelegramReplyStream",
    "UpdateRouter",
    "build_client",
    "callback_to_event",
    "connect",
    "message_to_event",
    "render",
    "render_parts",
    "set_commands",
    "split",
    "stop_receiving",
]
