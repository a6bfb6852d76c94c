"""Usage reports from the ``usage`` table: requests, tokens, audio seconds, images, pages and cost,
grouped by user, chat, model, UTC day, kind or plugin (the tool calls; ``kith usage``, ``/admin``)."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from memory.types import USAGE_GROUPINGS

if TYPE_CHECKING:
    from memory.store import DialogueStore

from .errors import TierError

__all__ = ["BY", "format_cost", "usage_summary"]

BY = USAGE_GROUPINGS  # the groupings of UsageStore.totals


def format_cost(known_usd: float, unpriced: int, requests: int) -> str:
    """``$0.0123``; ``unknown`` when no call had a price; ``≥ $0.0123 + unknown`` when some had none."""
    if not unpriced:
        return f"${known_usd:.4f}"
    if unpriced >= requests:
        return "unknown"
    return f"≥ ${known_usd:.4f} + unknown"


def _group(key: str, n: int, prompt: int, completion: int, known: float, unpriced: int, seconds: float = 0.0,
           images: int = 0, pages: int = 0) -> dict[str, Any]:
    return {"key": key, "requests": n, "prompt_tokens": prompt, "completion_tokens": completion,
            "tokens": prompt + completion, "seconds": round(seconds, 3), "images": images, "pages": pages,
            "cost_usd": None if n and unpriced >= n else round(known, 10),
            "unpriced_requests": unpriced, "cost": format_cost(known, unpriced, n)}


async def usage_summary(store: DialogueStore, *, by: str = "model", since: datetime | None = None) -> dict[str, Any]:
    """Requests, tokens, audio seconds, images, document pages and cost from the ``usage`` table,
    grouped ``by`` user|chat|model|day (UTC)|kind (chat, vision, transcription, image, document, tool)|
    plugin (the tool calls alone, per plugin), from ``since`` on. ``cost_usd`` sums the priced calls only (None when none was priced);
    ``unpriced_requests`` counts the calls of models with no known price. raises TierError (bad ``by``)."""
    if by not in BY:
        raise TierError(f"--by must be one of {', '.join(BY)}, not {by!r}")
    rows = await store.usage.totals(by, since=since)
    groups = [_group(r.key, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_usd, r.unpriced, r.seconds,
                     r.images, r.pages) for r in rows]
    total = _group("total", sum(g["requests"] for g in groups), sum(g["prompt_tokens"] for g in groups),
                   sum(g["completion_tokens"] for g in groups), sum(r.cost_usd for r in rows),
                   sum(g["unpriced_requests"] for g in groups), sum(g["seconds"] for g in groups),
                   sum(g["images"] for g in groups), sum(g["pages"] for g in groups))
    return {"by": by, "since": since.isoformat() if since else None, "rows": groups, "total": total}
