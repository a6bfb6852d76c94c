"""A chat's and a member's settings, as typed, frozen models (stored as JSON objects in the dialogue
store: ``chats.settings``, ``users.settings``).

What a group's admins set with ``/settings`` and what a member sets with ``/model``, ``/role``,
``/language`` and ``/settings timezone``. A change makes a new model (``with_``); ``stored()`` is the
JSON object written back — only what was set, so a default that changes in a later version applies
to every chat that never chose. A key this version does not know (written by a newer one, or by an
older one that had it) is kept as it is and written back, and logged once when read: nothing stored
is lost by an upgrade or a downgrade.
"""
from __future__ import annotations

import logging
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ChatSettings", "UserSettings"]

log = logging.getLogger(__name__)

Who = Literal["admins", "members"]


class _Stored(BaseModel):
    """A settings object read from the store: typed fields, unknown keys kept (``model_extra``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    @classmethod
    def load(cls, raw: dict[str, Any] | None, *, where: str) -> Self:
        """The settings of ``raw`` (a stored JSON object; None or {} = all defaults). A value that
        does not fit its field is logged and left out (its default applies); unknown keys are kept.
        ``where`` names the owner in the log (``chat -100123``)."""
        data = dict(raw or {})
        try:
            model = cls.model_validate(data)
        except ValidationError as exc:
            bad = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
            log.warning("%s: stored settings %s are not valid here and are ignored: %s", where, sorted(bad), exc)
            model = cls.model_validate({k: v for k, v in data.items() if k not in bad})
        if model.model_extra:
            log.info("%s: stored settings this version does not use are kept: %s", where, sorted(model.model_extra))
        return model

    def with_(self, **changes: Any) -> Self:
        """A copy with ``changes`` set (None removes a setting: its default applies again)."""
        data = self.stored()
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        return type(self).model_validate(data)

    def stored(self) -> dict[str, Any]:
        """The JSON object to store: the fields that were set, and the unknown keys as read."""
        return self.model_dump(mode="json", exclude_unset=True)


class ChatSettings(_Stored):
    """A chat's settings (``/settings`` in a group, by its admins; some in a private chat too).

    persona: instructions for the model in this chat. keywords: words that make the bot answer in a
    group (None: ``bot.keywords``). always_on: answer every message in a group (None: ``bot.always_on``).
    persist: store new messages. language: the interface and answer language of a group (ISO 639-1).
    model: the chat's model alias. history / reset: who may use /history and /export, /reset here.
    allowed_users: only these members make the bot answer here. context_from: /reset's mark (older
    messages left the context). offline_intro: the offline model has said what it is here. title:
    the chat's title when Telegram gave none with the update.
    plugins: the plugins the chat chose (``/plugins``; names, in the order chosen; None: its tier's default).
    name: the bot's name in this chat (``/settings name``; answered to like a mention; tier feature ``custom_name``).
    """

    persona: str | None = None
    name: str | None = None
    keywords: tuple[str, ...] | None = None
    always_on: bool | None = None
    persist: bool = True
    language: str | None = None
    model: str | None = None
    history: Who = "admins"
    reset: Who = "admins"
    allowed_users: tuple[int, ...] = ()
    context_from: int | None = None
    offline_intro: bool = False
    title: str | None = None
    plugins: tuple[str, ...] | None = None


class UserSettings(_Stored):
    """A member's settings, shared by every chat of theirs: ``model`` (alias, ``/model``), ``role``
    (their persona in private chats, ``/role``), ``language`` (``/language``; None: their app's),
    ``timezone`` (IANA name, ``/settings timezone``; None: ``plugins.timezone``)."""

    model: str | None = None
    role: str | None = None
    language: str | None = None
    timezone: str | None = Field(None, max_length=64)
