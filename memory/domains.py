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
from .message_store import MessageStore

__all__ = ["DomainStores"]


class DomainStores:
    """Mixin of the dialogue stores: one attribute per domain (see each module for its contract)."""

    _clock: Callable[[], datetime]

    @cached_property
    def keys(self) -> ApiKeyStore:
        """Members' and groups' own API keys (``memory.api_keys``)."""
        return ApiKeyStore(self, clock=self._clock)  # type: ignore[arg-type]

    @cached_property
    def billing(self) -> BillingStore:
        """Subscriptions and payments (``memory.billing_store``)."""
        return BillingStore(self)  # type: ignore[arg-type]

    @cached_property
    def messages(self) -> MessageStore:
        """The stored messages: reads, edits, deletes (``memory.message_store``); the writes are the
        store's own queue (``add``, ``add_many``, ``note_delivery``)."""
        return MessageStore(self)  # type: ignore[arg-type]
