"""Errors of the config package. Root: ``ConfigError``."""
from __future__ import annotations

__all__ = ["ConfigError", "MissingSecret"]


class ConfigError(Exception):
    """A config file is missing, not YAML, or invalid.

    ``file``, ``line`` (1-based, or None) and ``key`` (dotted path, e.g. ``tiers.free.quotas``) say
    where; ``str(err)`` reads ``kith.yaml:12: models.fast.timeout_s: Input should be a valid number``.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None) -> None:
        self.file, self.line, self.key, self.reason = file, line, key, message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(f"{where}{key + ': ' if key else ''}{message}")


class MissingSecret(ConfigError):
    """A required environment variable (e.g. TELEGRAM_BOT_TOKEN) is not set."""
