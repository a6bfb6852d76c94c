"""Secrets come only from the environment, never from YAML.

Telegram: ``TELEGRAM_API_ID``, ``TELEGRAM_API_HASH`` (from my.telegram.org), ``TELEGRAM_BOT_TOKEN``
(from @BotFather); payments: ``TELEGRAM_PAYMENT_PROVIDER_TOKEN`` (optional; Stars need none);
models: the variable named by ``api_key_env`` (or litellm's own, such as ``OPENAI_API_KEY``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ConfigError, MissingSecret
from .models import ModelSpec

__all__ = ["TELEGRAM_VARS", "TelegramCredentials", "model_api_key", "payment_provider_token", "telegram_credentials"]

TELEGRAM_VARS = ("TELEGRAM_API_ID", "TELEGRAM_API_HASH", "TELEGRAM_BOT_TOKEN")


@dataclass(frozen=True)
class TelegramCredentials:
    """What ``pyrogram.Client`` needs to log in as the bot. The secrets are kept out of ``repr``."""

    api_id: int
    api_hash: str = field(repr=False)
    bot_token: str = field(repr=False)


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    return value or None


def telegram_credentials(env: Mapping[str, str] | None = None) -> TelegramCredentials:
    """``TelegramCredentials`` from ``env`` (default ``os.environ``).

    Raises ``MissingSecret`` (``.key`` = the comma-separated names) listing every variable among
    TELEGRAM_API_ID, TELEGRAM_API_HASH, TELEGRAM_BOT_TOKEN that is unset or empty, and
    ``ConfigError`` (``.key`` = "TELEGRAM_API_ID") when the API id is not a whole number.
    """
    env = os.environ if env is None else env
    values = {name: _get(env, name) for name in TELEGRAM_VARS}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise MissingSecret(f"environment variable{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)} "
                            "(api id and hash from https://my.telegram.org, the bot token from @BotFather)",
                            key=", ".join(missing))
    api_id_text, api_hash, bot_token = (values[name] or "" for name in TELEGRAM_VARS)  # all set (checked above)
    try:
        api_id = int(api_id_text)
    except ValueError:
        raise ConfigError("must be a whole number (the api_id shown at https://my.telegram.org)",
                          key="TELEGRAM_API_ID") from None
    if api_id <= 0:
        raise ConfigError("must be a positive number (the api_id shown at https://my.telegram.org)", key="TELEGRAM_API_ID")
    return TelegramCredentials(api_id=api_id, api_hash=api_hash, bot_token=bot_token)


def payment_provider_token(env: Mapping[str, str] | None = None) -> str | None:
    """``TELEGRAM_PAYMENT_PROVIDER_TOKEN`` from ``env`` (default ``os.environ``), or None when unset/empty
    (then ``/billing`` sells in Telegram Stars, XTR, which need no provider)."""
    return _get(os.environ if env is None else env, "TELEGRAM_PAYMENT_PROVIDER_TOKEN")


def model_api_key(spec: ModelSpec, env: Mapping[str, str] | None = None) -> str | None:
    """The API key for ``spec``: the value of ``spec.api_key_env`` in ``env`` (default ``os.environ``).

    None when the model names no variable (litellm then reads its own, e.g. OPENAI_API_KEY);
    ``MissingSecret`` (``.key`` = the variable) when it names one that is unset or empty.
    """
    if not spec.api_key_env:
        return None
    value = _get(os.environ if env is None else env, spec.api_key_env)
    if value is None:
        raise MissingSecret(f"environment variable not set (api_key_env of model {spec.model!r})", key=spec.api_key_env)
    return value
