"""The per-domain stores of a dialogue store: each made on first use over the store itself (its
``SqlBackend``: ``sql_query``, ``sql_transaction``, ``dialect``), so both engines run the same SQL.

``DuckDBStore`` and ``PostgresStore`` inherit ``DomainStores``; callers reach a domain through the
dialogue store they hold (``store.keys.token(...)``)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from functools import cached_property

from .api_keys import ApiKeyStore
from .index_bookkeeping import IndexBookkeeping

__all__ = ["DomainStores"]


class DomainStores:
    """Mixin of the dialogue stores: one attribute per domain (see each module for its contract)."""

    _clock: Callable[[], datetime]

    @cached_property
    def keys(self) -> ApiKeyStore:
        """Members' and groups' own API keys (``memory.api_keys``)."""
        return ApiKeyStore(self, clock=self._clock)  # type: ignore[arg-type]

    @cached_property
    def index(self) -> IndexBookkeeping:
        """Vector-memory bookkeeping: the ids LanceDB should hold, evictions, the cleanups' log
        (``memory.index_bookkeeping``)."""
        return IndexBookkeeping(self, clock=self._clock)  # type: ignore[arg-type]
