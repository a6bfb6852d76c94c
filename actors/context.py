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
from providers.language import NAMES
from providers.memory_block import DATA_FRAME, render_memories

from .events import PRIVATE, Incoming

__all__ = [
    "BYTES_PER_TOKEN",
    "MEMORY_SHARE",
    "MESSAGE_OVERHEAD",
    "PROFILE_SHARE",
    "SAFETY",
    "Prompt",
    "build_prompt",
    "estimate_tokens",
    "system_prompt",
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


def system_prompt(base: str, ev: Incoming, *, chat_name: str | None, chat_title: str | None, persona: str | None,
                  answer_language: str | None) -> str:
    """The system message for answering ``ev``: ``base`` (the bot's prompt, its name filled in), the
    name this chat gave the bot, which chat this is (private with ``ev``'s sender, or a group and its
    ``chat_title``), the ``persona`` set for it, ``ev``'s date (UTC) and the language to answer in
    (ISO 639-1; None: the model picks). Instructions only: no chat text enters it."""
    parts = [base]
    if chat_name:
        parts.append(f"In this chat your name is {chat_name}: the members call you so.")
    if ev.chat_type == PRIVATE:
        parts.append(f"This is a private chat with {ev.sender.name}.")
    else:
        titled = f" titled {chat_title!r}" if chat_title else ""
        parts.append(f"This is a group chat{titled}; messages are prefixed with the speaker's name.")
    if persona:
        parts.append(f"Persona and instructions for this chat: {persona}")
    parts.append(f"Current date: {ev.date:%Y-%m-%d %H:%M} UTC.")
    if answer_language is not None:
        parts.append(f"Answer in {NAMES.get(answer_language, answer_language)} unless the user asks for another language.")
    return "\n".join(parts)


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
    budget = _Budget(int(budget_tokens * SAFETY))
    budget.take(estimate_tokens(system) + estimate_tokens(DATA_FRAME))
    current = window[-1] if window else None
    cur_msg = _current_line(current, budget) if current is not None else None
    profile = _fit_profile(profile, budget)
    kept, mem_block = _fit_memories(memories, budget)
    chain_text = _fit_reply_chain(reply_chain, window, budget)
    older = list(window[:-1]) if current is not None else list(window)
    history, dropped = _fit_history(older, budget)

    if any(h.citation for h in kept):
        system += "\nRecalled memories from documents name their file and page: cite them like (report.pdf, p. 3)."
    messages = [{"role": "system", "content": system}]
    data = "\n\n".join(p for p in (profile, mem_block, chain_text) if p)
    if data:
        messages.append({"role": "user", "content": f"{DATA_FRAME}\n\n{data}"})
    messages += history
    if cur_msg is not None:
        messages.append(cur_msg)
    return Prompt(messages, tuple(kept), budget.used, dropped)


@dataclass(slots=True)
class _Budget:
    """The prompt's token budget (``total``) and what the parts placed so far ``used`` of it."""

    total: int
    used: int = 0

    def fits(self, tokens: int) -> bool:
        return self.used + tokens <= self.total

    def take(self, tokens: int) -> None:
        self.used += tokens


def _current_line(current: StoredMessage, budget: _Budget) -> dict[str, Any]:
    """The message being answered, clipped to what the budget leaves (at least 64 tokens); always placed."""
    cur_msg = _speaker_line(current)
    room = max(64, budget.total - budget.used - 64)
    cur_msg["content"] = _clip(cur_msg["content"], room)
    budget.take(estimate_tokens(cur_msg["content"]))
    return cur_msg


def _fit_profile(profile: str, budget: _Budget) -> str:
    """``profile`` when it fits in ``PROFILE_SHARE`` of the budget and in what is left, else ""."""
    if profile and (estimate_tokens(profile) > int(budget.total * PROFILE_SHARE) or not budget.fits(estimate_tokens(profile))):
        profile = ""
    if profile:
        budget.take(estimate_tokens(profile))
    return profile


def _fit_memories(memories: Sequence[MemoryHit], budget: _Budget) -> tuple[list[MemoryHit], str]:
    """(the best memories that fit in ``MEMORY_SHARE`` of the budget and in what is left, their rendered block)."""
    kept: list[MemoryHit] = []
    mem_block = ""
    mem_cap = int(budget.total * MEMORY_SHARE)
    for hit in memories:
        candidate = render_memories([*kept, hit])
        if estimate_tokens(candidate) > mem_cap or not budget.fits(estimate_tokens(candidate)):
            break
        kept.append(hit)
        mem_block = candidate
    if mem_block:
        budget.take(estimate_tokens(mem_block))
    return kept, mem_block


def _fit_reply_chain(reply_chain: Sequence[StoredMessage], window: Sequence[StoredMessage], budget: _Budget) -> str:
    """The reply chain's messages not in ``window``, as one quoted block when it fits, else ""."""
    window_ids = {m.message_id for m in window}
    chain = [m for m in reply_chain if m.message_id not in window_ids]
    if not chain:
        return ""
    lines = "\n".join(f"{m.user_name}: {m.text}" for m in chain)
    candidate = f"The message being answered replies to:\n{lines}"
    if not budget.fits(estimate_tokens(candidate)):
        return ""
    budget.take(estimate_tokens(candidate))
    return candidate


def _fit_history(older: list[StoredMessage], budget: _Budget) -> tuple[list[dict[str, Any]], int]:
    """(the newest of ``older`` that fit, oldest first; how many older ones were left out)."""
    history: list[dict[str, Any]] = []
    dropped = 0
    for m in reversed(older):
        msg = _speaker_line(m)
        cost = estimate_tokens(msg["content"])
        if not budget.fits(cost):
            dropped = len(older) - len(history)
            break
        history.append(msg)
        budget.take(cost)
    history.reverse()
    return history, dropped
