"""Context assembly: the prompt for one turn, within the model's token budget (docs/design.md §3.4).

Order: the system prompt (persona, instructions only) → one user-role message framed as quoted data
(``DATA_FRAME``) with the recalled memories of *this chat* and the reply chain that is not in the
recent window → the recent window, oldest first, ending with the message being answered. Chat text
never enters the system message: a planted "ignore previous instructions" is a quote, not an order.
Speakers are named (``alice: text``) so the model knows who said what in groups.

Token counts are estimates (≈ 4 UTF-8 bytes per token, +4 per message; within ~5 % for Latin and
Cyrillic, ~25 % for CJK): cheap enough for every turn, and the budget keeps a safety margin.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memory.types import ROLE_ASSISTANT, MemoryHit, StoredMessage
from providers.memory_block import DATA_FRAME, render_memories

__all__ = [
    "BYTES_PER_TOKEN",
    "MEMORY_SHARE",
    "MESSAGE_OVERHEAD",
    "PROFILE_SHARE",
    "SAFETY",
    "Prompt",
    "build_prompt",
    "estimate_tokens",
]

BYTES_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
MEMORY_SHARE = 0.4  # at most this share of the budget goes to recalled memories
PROFILE_SHARE = 0.1  # … and this share to the memory entries' profile block
SAFETY = 0.9  # use 90 % of the computed budget


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text`` (≈ UTF-8 bytes / 4, rounded up), plus per-message overhead."""
    n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return -(-n // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD


@dataclass(frozen=True, slots=True)
class Prompt:
    """The assembled prompt: OpenAI-style ``messages``, the memories that fit, and its token estimate."""

    messages: list[dict[str, Any]]
    memories: tuple[MemoryHit, ...]
    tokens: int
    dropped_window: int  # recent messages left out for lack of budget


def _speaker_line(m: StoredMessage) -> dict[str, Any]:
    if m.role == ROLE_ASSISTANT:
        return {"role": "assistant", "content": m.text}
    return {"role": "user", "content": f"{m.user_name}: {m.text}"}


def _clip(text: str, tokens: int) -> str:
    limit = max(0, (tokens - MESSAGE_OVERHEAD) * BYTES_PER_TOKEN)
    if estimate_tokens(text) <= tokens:
        return text
    clipped = text.encode("utf-8", "surrogatepass")[: max(0, limit - 3)].decode("utf-8", "ignore")
    return clipped + "…"


def build_prompt(
    *,
    system: str,
    window: Sequence[StoredMessage],
    memories: Sequence[MemoryHit] = (),
    reply_chain: Sequence[StoredMessage] = (),
    budget_tokens: int,
    profile: str = "",
) -> Prompt:
    """Assemble the prompt for the last message of ``window`` within ``budget_tokens``.

    window: recent messages, oldest → newest; its last item is the message being answered and is
    always kept (clipped if it alone exceeds the budget). profile: the ``<profile>`` block of the
    memory entries (``render_profile``), quoted data ahead of the memories, kept when it fits in
    10 % of the budget. memories: best first; they fill at most 40 % of the budget. Then older
    window messages fill the rest, newest first.
    """
    budget = int(budget_tokens * SAFETY)
    sys_tokens = estimate_tokens(system) + estimate_tokens(DATA_FRAME)
    current = window[-1] if window else None
    used = sys_tokens
    cur_msg = None
    if current is not None:
        cur_msg = _speaker_line(current)
        room = max(64, budget - used - 64)
        cur_msg["content"] = _clip(cur_msg["content"], room)
        used += estimate_tokens(cur_msg["content"])

    if profile and (estimate_tokens(profile) > int(budget * PROFILE_SHARE) or used + estimate_tokens(profile) > budget):
        profile = ""
    if profile:
        used += estimate_tokens(profile)

    kept: list[MemoryHit] = []
    mem_block = ""
    mem_cap = int(budget * MEMORY_SHARE)
    for hit in memories:
        candidate = render_memories([*kept, hit])
        if estimate_tokens(candidate) > mem_cap or used + estimate_tokens(candidate) > budget:
            break
        kept.append(hit)
        mem_block = candidate
    if mem_block:
        used += estimate_tokens(mem_block)

    window_ids = {m.message_id for m in window}
    chain = [m for m in reply_chain if m.message_id not in window_ids]
    chain_text = ""
    if chain:
        lines = "\n".join(f"{m.user_name}: {m.text}" for m in chain)
        candidate = f"The message being answered replies to:\n{lines}"
        if used + estimate_tokens(candidate) <= budget:
            chain_text = candidate
            used += estimate_tokens(candidate)

    history: list[dict[str, Any]] = []
    older = list(window[:-1]) if current is not None else list(window)
    dropped = 0
    for m in reversed(older):
        msg = _speaker_line(m)
        cost = estimate_tokens(msg["content"])
        if used + cost > budget:
            dropped = len(older) - len(history)
            break
        history.append(msg)
        used += cost
    history.reverse()

    if any(h.citation for h in kept):
        system += "\nRecalled memories from documents name their file and page: cite them like (report.pdf, p. 3)."
    messages = [{"role": "system", "content": system}]
    data = "\n\n".join(p for p in (profile, mem_block, chain_text) if p)
    if data:
        messages.append({"role": "user", "content": f"{DATA_FRAME}\n\n{data}"})
    messages += history
    if cur_msg is not None:
        messages.append(cur_msg)
    return Prompt(messages, tuple(kept), used, dropped)
