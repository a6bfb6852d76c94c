"""The per-domain stores of a dialogue store: each made on first use over the store itself (its
``SqlBackend``: ``sql_query``, ``sql_transaction``, ``dialect``), so both engines run the same SQL.

``DuckDBStore`` and ``PostgresStore`` inherit ``DomainStores``; callers reach a domain through the
dialogue store they hold (``store.keys.token(...)``)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import cached_property

import anyio

from .api_keys import ApiKeyStore
from .billing_store import BillingStore
from .document_store import DocumentStore
from .index_bookkeeping import IndexBookkeeping
from .message_store import MessageStore
from .settings_store import SettingsStore
from .usage_store import UsageStore

__all__ = ["DomainStores"]


class DomainStores:
    """Mixin of the dialogue stores: one attribute per domain (see each module for its contract)."""

    _clock: Callable[[], datetime]
    _chat_rows: dict[int, tuple[str, str | None]]

    async def _open_domains(self, close: Callable[[], Awaitable[None]]) -> None:
        """At open, once the database is, before the writer starts: load what a domain answers
        without a round trip (``documents.has``). When that fails, ``close()`` the database
        (shielded) and re-raise."""
        try:
            await self.documents.load()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await close()
            raise

    @cached_property
    def keys(self) -> ApiKeyStore:
        """Members' and groups' own API keys (``memory.api_keys``)."""
        return ApiKeyStore(self, clock=self._clock)  # type: ignore[arg-type]

    @cached_property
    def billing(self) -> BillingStore:
        """Subscriptions and payments (``memory.billing_store``)."""
        return BillingStore(self)  # type: ignore[arg-type]

    @cached_property
    def usage(self) -> UsageStore:
        """Reads of the usage records and recalls (``memory.usage_store``); their writes stay on the
        dialogue store's write-behind queue (``record_usage``, ``record_recall``)."""
        return UsageStore(self)  # type: ignore[arg-type]

    @cached_property
    def documents(self) -> DocumentStore:
        """Documents read into memory and their chunks (``memory.document_store``)."""
        return DocumentStore(self)  # type: ignore[arg-type]

    @cached_property
    def index(self) -> IndexBookkeeping:
        """Vector-memory bookkeeping: the ids LanceDB should hold, evictions, the cleanups' log
        (``memory.index_bookkeeping``)."""
        return IndexBookkeeping(self, clock=self._clock)  # type: ignore[arg-type]

    @cached_property
    def messages(self) -> MessageStore:
        """The stored messages: reads, edits, deletes (``memory.message_store``); the writes are the
        store's own queue (``add``, ``add_many``, ``note_delivery``)."""
        return MessageStore(self)  # type: ignore[arg-type]

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
