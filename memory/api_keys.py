"""Members' and groups' own API keys, stored encrypted (``providers.keys`` encrypts and decrypts;
this module only keeps the tokens): the ``api_keys`` table of the dialogue store's database.

One SQL text per statement for DuckDB and PostgreSQL (``memory.sql_domain``); every write is
committed before it returns. The table comes with the dialogue store's schema (version 3).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from .sql_domain import SqlBackend, SqlDomainStore, ts, us

__all__ = ["ApiKeyStore"]


class ApiKeyStore(SqlDomainStore):
    """The encrypted keys of a scope (``"user"`` or ``"chat"``, and its id), one per litellm provider.

    clock: the current tz-aware UTC time (``updated_at``). raises MemoryStoreError when the database
    fails."""

    DOMAIN = "api keys"

    def __init__(self, backend: SqlBackend, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        super().__init__(backend)
        self._clock = clock

    async def set(self, scope: str, scope_id: int, provider: str, token: bytes, hint: str) -> None:
        """Store ``token`` (a Fernet token of the key) for ``provider`` in ``scope:scope_id``,
        replacing the one there; ``hint``: the key's last characters, shown to say which is set."""
        await self._query(
            "INSERT INTO api_keys (scope, scope_id, provider, token, hint, updated_at) VALUES (?, ?, ?, ?, ?, {ts})"
            " ON CONFLICT (scope, scope_id, provider)"
            " DO UPDATE SET token = excluded.token, hint = excluded.hint, updated_at = excluded.updated_at",
            [scope, scope_id, provider, token, hint, us(self._clock())])

    async def token(self, scope: str, scope_id: int, provider: str) -> bytes | None:
        """The stored token of ``scope:scope_id``'s key for ``provider``; None when none is set."""
        rows = await self._query("SELECT token FROM api_keys WHERE scope = ? AND scope_id = ? AND provider = ?",
                                 [scope, scope_id, provider])
        return bytes(rows[0][0]) if rows else None

    async def list(self, scope: str, scope_id: int) -> list[tuple[str, str, datetime]]:
        """``(provider, hint, updated_at)`` of the scope's keys, by provider."""
        rows = await self._query(
            f"SELECT provider, hint, {self._us('updated_at')} FROM api_keys WHERE scope = ? AND scope_id = ?"
            " ORDER BY provider", [scope, scope_id])
        return [(p, h, ts(t)) for p, h, t in rows]

    async def delete(self, scope: str, scope_id: int, provider: str | None = None) -> int:
        """Delete the scope's key for ``provider`` (every key of the scope when None); how many."""
        sql, params = "DELETE FROM api_keys WHERE scope = ? AND scope_id = ?", [scope, scope_id]
        if provider is not None:
            sql += " AND provider = ?"
            params.append(provider)
        return len(await self._query(sql + " RETURNING provider", params))
