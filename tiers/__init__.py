"""Tiers, subscriptions, quotas and payments (docs/design.md §7).

- ``resolve.effective_tier``: the better of a user's and a chat's active subscription.
- ``subscriptions.SubscriptionStore``: the ``subscriptions`` table (grant/extend/revoke/list), cached.
- ``quotas.QuotaTracker`` / ``quotas.RateLimiter``: daily quotas (UTC) per user and per chat, counted
  from the ``usage`` table at start and in memory after; a sliding per-member message rate in groups.
- ``admission.Admission``: the one object the chat actor asks before a turn (``admit``) and tells
  after it (``record``).
- ``payments``: Telegram invoices, pre-checkout checks and applying a successful payment once.
- ``cli``: ``kith tiers``, ``kith sub …``, ``kith usage``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BadScope, PaymentError, TierError, UnknownTier

# the rest loads on first use (PEP 562): ``kith sub list`` and ``--help`` need no DuckDB import
_LAZY = {"Admission": "admission", "Admit": "admission", "QuotaDecision": "quotas", "QuotaTracker": "quotas",
         "RateLimiter": "quotas", "effective_tier": "resolve", "Subscription": "subscriptions",
         "SubscriptionStore": "subscriptions", "open_admission": "admission"}

if TYPE_CHECKING:
    from .admission import Admission, Admit, open_admission
    from .quotas import QuotaDecision, QuotaTracker, RateLimiter
    from .resolve import effective_tier
    from .subscriptions import Subscription, SubscriptionStore


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Admission", "Admit", "BadScope", "PaymentError", "QuotaDecision", "QuotaTracker", "RateLimiter",
    "Subscription", "SubscriptionStore", "TierError", "UnknownTier", "effective_tier", "open_admission",
]
