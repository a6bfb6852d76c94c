"""The per-domain stores of a dialogue store: each made on first use over the store itself (its
``SqlBackend``: ``sql_query``, ``sql_transaction``, ``dialect``), so both engines run the same SQL.

``DuckDBStore`` and ``PostgresStore`` inherit ``DomainStores``; callers reach a domain through the
dialogue store they hold (``store.keys.token(...)``)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cached_property

from .api_keys import ApiKeyStore
from .billing_store import BillingStore
from .settings_store import SettingsStore

__all__ = ["DomainStores"]


class DomainStores:
    """Mixin of the dialogue stores: one attribute per domain (see each module for its contract)."""

    _clock: Callable[[], datetime]
    _chat_rows: dict[int, tuple[str, str | None]]

    @cached_property
    def keys(self) -> ApiKeyStore:
        """Members' and groups' own API keys (``memory.api_keys``)."""
        return ApiKeyStore(self, clock=self._clock)  # type: ignore[arg-type]

    @cached_property
    def billing(self) -> BillingStore:
        """Subscriptions and payments (``memory.billing_store``)."""
        return BillingStore(self)  # type: ignore[arg-type]

    @cached_property
    def settings(self) -> SettingsStore:
        """Chats' and members' settings, and the list of chats (``memory.settings_store``)."""
        return SettingsStore(self, clock=self._clock, on_chat_row=self._know_chat)  # type: ignore[arg-type]

    def _know_chat(self, chat_id: int) -> None:
        """``knows_chat`` from now on: a settings write may have created the chat's row (type unknown)."""
        self._chat_rows.setdefault(chat_id, ("unknown", None))

    def _settings_moved(self) -> None:
        """``migrate_chat`` moved a chat's settings in the database: ``store.settings`` reads them anew."""
        if "settings" in self.__dict__:
            self.settings.forget()
