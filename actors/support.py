"""The host's support contact (``bot.support`` in kith.yaml) under what members are told when they
need help: /help and /start, refusals (a tier, quota or plan that does not allow something) and
error replies ("something went wrong"). One helper, so the line reads the same everywhere."""
from __future__ import annotations

from i18n import _

from .services import Services

__all__ = ["with_support"]


def with_support(svc: Services, text: str) -> str:
    """``text`` and, on a line of its own, ``Support: @kith_help`` (in the current interface language)
    when the host set ``bot.support`` (a Telegram @username or an https:// URL); else ``text`` as it
    is. Read at each call, so a reloaded config applies at once."""
    contact = svc.config.settings.bot.support
    if not contact:
        return text
    line = _("Support: {contact}", contact=contact)  # (not inside an f-string: the catalog's extractor would miss it)
    return text + "\n\n" + line
