"""Errors of the tiers package. Root: ``TierError``."""
from __future__ import annotations

__all__ = ["BadScope", "PaymentError", "TierError", "UnknownTier"]


class TierError(Exception):
    """Something about tiers, subscriptions or payments is wrong (the message says what, for a person)."""


class UnknownTier(TierError):
    """A tier name that ``tiers.yaml`` does not define."""


class BadScope(TierError):
    """A subscription target that is not ``user:<id>`` or ``chat:<id>``."""


class PaymentError(TierError):
    """An invoice cannot be made, or a payment's payload/plan/amount does not match the config."""
