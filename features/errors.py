"""Errors of the chat features (``features``); the plugins' own are in ``features.plugins.errors``."""
from __future__ import annotations

__all__ = ["FactLearningOff", "FeatureError"]


class FeatureError(Exception):
    """Root of the chat features' errors."""


class FactLearningOff(FeatureError):
    """Memory entries cannot be learned here: no real ``memory.memory_model`` is set (an offline
    ``kith/*`` model learns nothing), or the dialogue store keeps no memory entries."""

    def __init__(self, message: str = "memory entries are learned by memory.memory_model: set it to a real model's "
                                      "alias in kith.yaml (an offline kith/* model learns nothing)") -> None:
        super().__init__(message)
