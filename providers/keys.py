"""Users' own API keys ("bring your own key", ``/key``), encrypted at rest.

A user sets a key for a provider in a private chat; a group admin sets the group's key there too
(``/key group <chat id> <provider> <key>``), never in the group. A turn uses the member's key first,
then the group's, then the host's (``kith.yaml`` / the environment).

A key goes only to its provider's own API: a model with an ``api_base`` (a server of the host's) never
gets it, unless the host marked that model ``accepts_user_keys: true`` (``providers.llm.takes_user_keys``;
``LLM.key_use`` says which models a key is used for).

Keys are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, ``cryptography``) under the host's
``KITH_SECRET_KEY`` (a Fernet key: ``python -c "from cryptography.fernet import Fernet;
print(Fernet.generate_key().decode())"``; several, comma-separated, rotate: the first encrypts,
any decrypts). Without it ``/key`` is off. The store keeps only the token and the key's last four
characters (to show which key is set); keys are never logged, echoed or kept in plain text.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from .errors import ProviderError

__all__ = ["SECRET_ENV", "KeyInfo", "KeyStore", "KeyUse", "KeyVault", "KeysUnavailable", "cipher_from_env"]

SECRET_ENV = "KITH_SECRET_KEY"
USER, CHAT = "user", "chat"


class KeysUnavailable(ProviderError):
    """``/key`` cannot work: the host has not set ``KITH_SECRET_KEY`` (or it is not a Fernet key),
    or a stored key cannot be decrypted with it."""


@dataclass(frozen=True, slots=True)
class KeyUse:
    """Where a key for one provider goes (``LLM.key_use``): ``used``, the aliases it is sent to;
    ``not_used``, that provider's aliases on the host's own servers, which keep the host's key."""

    used: tuple[str, ...]
    not_used: tuple[str, ...]


class KeyStore(Protocol):
    """What the vault needs to keep tokens (``memory.api_keys.ApiKeyStore``: a dialogue store's ``keys``)."""

    async def set(self, scope: str, scope_id: int, provider: str, token: bytes, hint: str) -> None: ...
    async def token(self, scope: str, scope_id: int, provider: str) -> bytes | None: ...
    async def list(self, scope: str, scope_id: int) -> list[tuple[str, str, datetime]]: ...
    async def delete(self, scope: str, scope_id: int, provider: str | None = None) -> int: ...


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A stored key, as shown to its owner: provider, ``…abcd`` (its last four characters), when set."""

    provider: str
    hint: str
    updated_at: datetime


def cipher_from_env(env: Mapping[str, str] | None = None):
    """A ``MultiFernet`` over the keys in ``KITH_SECRET_KEY``, or None when it is unset.
    raises KeysUnavailable when it is set but not a Fernet key."""
    from cryptography.fernet import Fernet, MultiFernet  # deferred: cryptography (~10 ms), only when a key is stored or read

    raw = ((os.environ if env is None else env).get(SECRET_ENV) or "").strip()
    if not raw:
        return None
    try:
        return MultiFernet([Fernet(k.strip().encode()) for k in raw.split(",") if k.strip()])
    except (ValueError, TypeError):
        raise KeysUnavailable(f"{SECRET_ENV} is not a Fernet key (44 characters of URL-safe base64); make one with "
                              "python -c \"from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"") from None


class KeyVault:
    """Encrypts, stores and finds users' and groups' API keys. ``cipher``: a Fernet/MultiFernet;
    None: the vault is off (``enabled`` False, ``set`` raises KeysUnavailable, ``keys_for`` is empty)."""

    def __init__(self, store: KeyStore, cipher) -> None:
        self.store = store
        self.cipher = cipher
        self._cache: dict[tuple[str, int], dict[str, str]] = {}  # decrypted, per scope (in RAM only)

    @property
    def enabled(self) -> bool:
        return self.cipher is not None

    async def set(self, scope: str, scope_id: int, provider: str, key: str) -> KeyInfo:
        """Encrypt and store ``key`` for ``provider`` (replacing the scope's earlier one)."""
        if self.cipher is None:
            raise KeysUnavailable(f"this bot does not keep personal keys (its host has not set {SECRET_ENV})")
        key = key.strip()
        hint = "…" + key[-4:]
        await self.store.set(scope, scope_id, provider, self.cipher.encrypt(key.encode()), hint)
        self._cache.pop((scope, scope_id), None)
        return next(k for k in await self.info(scope, scope_id) if k.provider == provider)

    async def info(self, scope: str, scope_id: int) -> list[KeyInfo]:
        """The scope's keys, without the keys themselves."""
        return [KeyInfo(p, h, at) for p, h, at in await self.store.list(scope, scope_id)]

    async def delete(self, scope: str, scope_id: int, provider: str | None = None) -> int:
        """Delete the scope's key for ``provider`` (all its keys when None); returns how many."""
        self._cache.pop((scope, scope_id), None)
        return await self.store.delete(scope, scope_id, provider)

    async def _decrypted(self, scope: str, scope_id: int) -> dict[str, str]:
        cached = self._cache.get((scope, scope_id))
        if cached is not None:
            return cached
        from cryptography.fernet import InvalidToken  # deferred: cryptography (~10 ms), only when a key is stored or read

        out: dict[str, str] = {}
        for info in await self.info(scope, scope_id):
            token = await self.store.token(scope, scope_id, info.provider)
            if token is None:
                continue
            try:
                out[info.provider] = self.cipher.decrypt(token).decode()
            except InvalidToken:
                raise KeysUnavailable(f"a stored {info.provider} key cannot be decrypted: {SECRET_ENV} changed "
                                      "(put the old key after the new one, comma-separated)") from None
        self._cache[(scope, scope_id)] = out
        return out

    async def keys_for(self, user_id: int, chat_id: int | None) -> dict[str, str]:
        """provider → key for a turn of ``user_id`` in ``chat_id``: the user's own keys, then the
        group's for the providers the user has none for. Empty when the vault is off."""
        if self.cipher is None:
            return {}
        keys = dict(await self._decrypted(CHAT, chat_id)) if chat_id is not None and chat_id < 0 else {}
        keys.update(await self._decrypted(USER, user_id))
        return keys
