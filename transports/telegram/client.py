"""The kurigram client of the Telegram transport: the options Kith relies on, building it from the
credentials, connecting with retries, stopping the intake of updates, and the command menu."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pyrogram
from pyrogram import types
from pyrogram.errors import RPCError

import i18n
from actors.errors import TelegramRefused
from config.models import Config, TelegramSettings
from config.secrets import TelegramCredentials, telegram_credentials
from i18n import N_

from .updates import UpdateRouter

__all__ = ["CLIENT_OPTIONS", "COMMANDS", "TRANSIENT", "WORKERS", "build_client", "connect", "set_commands", "stop_receiving"]

log = logging.getLogger(__name__)

# One dispatcher worker: pyrogram hands updates to its workers from one queue, so with more than one
# two messages of the same chat can overtake each other while being parsed. Handlers only convert
# and queue (the work happens in the chat actors), so one worker keeps up (see the benchmark).
WORKERS = 1

# Client options Kith relies on (the test harness builds its client with the same ones).
CLIENT_OPTIONS: dict[str, Any] = {
    "workers": WORKERS,
    "skip_updates": False,  # recover what was missed while offline (kurigram's default skips it)
    "fetch_replies": False,  # no GetMessages round trip per reply; reply_to_bot uses the cache and the outbox's ids
    "fetch_stickers": False,  # no sticker-set lookups while parsing
}

COMMANDS: tuple[tuple[str, str], ...] = (  # the menu; descriptions are translated per language (set_commands)
    ("start", N_("Start talking with me")),
    ("help", N_("What I can do and how to address me")),
    ("model", N_("Choose the model that answers you")),
    ("role", N_("Set my role in our private chat")),
    ("profile", N_("Your tier and settings")),
    ("usage", N_("What you used today")),
    ("billing", N_("Plans and payments")),
    ("balance", N_("Your credits and what an answer costs")),
    ("buy", N_("Buy credits")),
    ("reset", N_("Start a fresh conversation context")),
    ("delete_context", N_("Start a fresh conversation context")),
    ("history", N_("Recent messages I keep")),
    ("export", N_("Export this chat's history")),
    ("memory", N_("What I remember here")),
    ("forget", N_("Forget what you said in this chat")),
    ("remember", N_("Keep a fact: /remember birthday: 12 March")),
    ("image", N_("Draw a picture: /image a cat on a bike; reply to a photo: /image edit …")),
    ("key", N_("Use your own API key (private chat)")),
    ("language", N_("The language I speak with you")),
    ("settings", N_("Group settings (admins only)")),
    ("plugins", N_("The tools I may use here")),
    ("remind", N_("Set a reminder: /remind 10m stretch")),
    ("reminders", N_("Your reminders here")),
)


def build_client(config: Config, data_dir: Path, credentials: TelegramCredentials | None = None) -> Any:
    """The kurigram client for ``config`` (session file ``data_dir/<session_name>.session``).

    Call inside the running event loop (pyrogram binds its locks and queues to the current loop).
    """
    creds = credentials or telegram_credentials()
    return pyrogram.Client(
        name=config.settings.telegram.session_name,
        api_id=creds.api_id,
        api_hash=creds.api_hash,
        bot_token=creds.bot_token,
        workdir=str(data_dir),
        **CLIENT_OPTIONS,
    )


TRANSIENT = (OSError, TimeoutError, EOFError, KeyError)


async def connect(client: Any, stopped: anyio.Event, settings: TelegramSettings,
                  on_state: Callable[[str], None] = lambda state: None) -> bool:
    """Start ``client``, retrying while Telegram cannot be reached: one log line per failed attempt
    (``telegram: cannot connect (…); retry 3 in 8 s``), waits doubling from
    ``reconnect_initial_s`` to ``reconnect_max_s``; ``on_state`` hears the same (``"connecting, retry
    3 in 8 s (…)"``) for /readyz. Returns False when ``stopped`` is set first.
    raises TelegramRefused when Telegram answers with an error (bad bot token, API id or hash)."""
    delay, attempt = settings.reconnect_initial_s, 0
    on_state("connecting")
    while True:
        if stopped.is_set():  # e.g. SIGTERM while the stores and the model were loading
            return False
        attempt += 1
        try:
            await client.start()
            if attempt > 1:
                log.info("telegram: connected (attempt %d)", attempt)
            return True
        except RPCError as e:
            raise TelegramRefused(f"Telegram refused to log the bot in: {e.ID or type(e).__name__} — {e.MESSAGE.format(value=e.value)}. "
                                  "Check TELEGRAM_BOT_TOKEN, TELEGRAM_API_ID and TELEGRAM_API_HASH.") from None
        except TRANSIENT as e:
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if isinstance(e, KeyError):  # kurigram's auth key exchange got no answer from Telegram
                reason = f"no answer to the handshake, {reason}"
            log.warning("telegram: cannot connect (%s); retry %d in %.0f s", reason, attempt, delay)
            on_state(f"connecting, retry {attempt} in {delay:.0f} s ({reason})")
        with anyio.move_on_after(delay):
            await stopped.wait()
        if stopped.is_set():
            return False
        delay = min(settings.reconnect_max_s, delay * 2)


def stop_receiving(client: Any, router: UpdateRouter) -> None:
    """Stop taking updates (idempotent): queued ones are dropped and rewound by the router; new ones
    are not acknowledged (their state is not stored), so Telegram delivers them after the restart."""
    if router.closing:
        return
    router.close()
    client.skip_updates = True  # no gap recovery while draining

    async def not_now(updates: Any) -> None:  # shadows Client.handle_updates on this instance
        return None

    client.handle_updates = not_now


async def set_commands(client: Any) -> None:
    """Register the command menu: the default (English) one, then one per interface language, which
    Telegram shows to users whose app speaks it (``language_code``). A failure is logged: the bot
    works without a menu."""
    for lang in i18n.available():
        menu = [types.BotCommand(c, i18n.in_language(lang, d)) for c, d in COMMANDS]
        try:
            await client.set_bot_commands(menu, language_code="" if lang == i18n.DEFAULT else lang)
        except RPCError as e:
            log.warning("could not set the command menu (%s): %s", lang, e)
