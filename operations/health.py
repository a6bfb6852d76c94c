"""Readiness of a running bot, part by part, for the control server's ``/readyz``.

Parts: ``stores`` (DuckDB and LanceDB open), ``embedder`` (the model loaded), ``telegram``
(connected). Each holds ``(ready, detail)``; the transport updates them as it starts
(``"connecting, retry 3 in 8 s"``, ``"connected as @kith_bot"``, ``"stopping"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PARTS", "Health"]

PARTS = ("stores", "embedder", "telegram")


@dataclass
class Health:
    """``set(part, ready, detail)``; ``report() -> (ready, {part: {"ready": bool, "detail": str}})``."""

    parts: dict[str, tuple[bool, str]] = field(default_factory=lambda: {p: (False, "starting") for p in PARTS})

    def set(self, part: str, ready: bool, detail: str) -> None:
        """raises KeyError for a part not in ``PARTS``."""
        if part not in self.parts:
            raise KeyError(f"unknown health part {part!r} (one of {', '.join(PARTS)})")
        self.parts[part] = (ready, detail)

    def report(self) -> tuple[bool, dict[str, dict[str, object]]]:
        """Ready when every part is; and each part's state."""
        return all(ok for ok, _ in self.parts.values()), {p: {"ready": ok, "detail": d} for p, (ok, d) in self.parts.items()}
