"""The effective tier of a user in a chat (docs/design.md §7)."""
from __future__ import annotations

from datetime import datetime

from config.models import TiersConfig

from .subscriptions import Subscription

__all__ = ["effective_tier"]


def effective_tier(cfg: TiersConfig, user_sub: Subscription | None, chat_sub: Subscription | None, now: datetime) -> str:
    """The better (by ``cfg.rank``) of the user's own subscription and the chat's, and never worse
    than ``cfg.default_tier``: a premium user is premium everywhere; everyone in a premium group is
    premium there. A missing or expired subscription, or one to a tier that tiers.yaml no longer
    defines, counts as ``default_tier``.
    """
    best = cfg.default_tier
    for sub in (user_sub, chat_sub):
        if sub is None or sub.tier not in cfg.tiers or not sub.active(now):
            continue
        if cfg.rank(sub.tier) > cfg.rank(best):
            best = sub.tier
    return best
