"""``kith/recall``: the built-in offline model that answers from this chat's recalled memories alone.

Registered with litellm as the custom provider ``kith`` (``register()``, idempotent; done on import of
``providers.llm``), so it goes through the same Router, streaming, usage and fallback path as any
other model, and needs no key, no network and no weights.

How it answers (``answer(messages)``):
- the question is the last ``user`` message; the memories are the ``<memories>`` block(s) of the
  framed data message (a user message starting with ``memory_block.DATA_FRAME``, where Kith puts
  recalled history) or of ``system`` messages (``providers.memory_block``), ranked best first;
- it re-ranks them lightly by word overlap with the question (ties keep the retrieval order); when
  some memory shares a word with the question, those that share none are dropped; it keeps at most
  ``MAX_QUOTES`` and quotes them oldest first (by message id) as ``> name, date: text``;
- the conversation's earlier turns (the recent window, ``name: text`` user messages) that share a
  word with the question are candidates too, quoted without a date after the recalled memories;
- with nothing relevant it says so honestly (``NOTHING_FOUND``).

Its own words (``HEADER``, ``NOTHING_FOUND``, "someone") are in the current ``i18n`` language, read when
it answers: the chat actor's ``i18n.use(lang)`` around the call reaches it both in process
(``LLM._recall_in_process``) and through litellm (an async custom handler is awaited in the caller's
task; a sync one runs in litellm's executor under ``contextvars.copy_context()``).

Usage is estimated with ``estimate_tokens`` (UTF-8 bytes / 4, see there); the price is registered as
0 per token, so litellm's cost is 0.0: free and known (unlike a model with no price, whose cost is None).
"""
from __future__ import annotations

from . import _offline  # noqa: F401  (before litellm)

import math
import os
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")  # as providers._offline does for the price map
os.environ.setdefault("LITELLM_LOCAL_BLOG_POSTS", "True")

import litellm
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, Usage

from i18n import N_, _

from .memory_block import DATA_FRAME, QuotedMemory, parse_memories

__all__ = [
    "PROVIDER", "MODEL", "MAX_QUOTES", "HEADER", "NOTHING_FOUND", "CONTEXT_TOKENS",
    "RecallLLM", "register", "answer", "estimate_tokens", "estimate_messages_tokens",
]

PROVIDER = "kith"
MODEL = "kith/recall"
MAX_QUOTES = 3
QUOTE_CHARS = 300  # a quoted memory is shortened to this many characters
CONTEXT_TOKENS = 32_768  # what the prompt may hold: it only reads the memories and the question
# The answer's words are the member's language (``i18n``: translated where used, at answer time).
HEADER = N_("From this chat's memory:")
NOTHING_FOUND = N_("I don't have anything in this chat's memory about that yet.")

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, per message
REPLY_PRIMING_TOKENS = 3

_STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be been being am
    do does did have has had i me my you your he him his she her it its we us our they them their this that
    these those there here what which who whom whose when where why how can could would should will shall may
    might must not no yes just about into over under again also too very any some all up down out off only own
    same than s t don isn aren wasn weren hasn haven hadn doesn didn won wouldn shouldn couldn mustn ll re ve d m
    anyone someone something anything know knows tell told say said please thanks thank hi hello hey ok okay""".split()
)
_WORD_RE = re.compile(r"\w+")


# ---------------------------------------------------------------- token estimates


def estimate_tokens(text: str) -> int:
    """Estimated tokens of ``text``: ceil(UTF-8 bytes / 4).

    Cheap and tokenizer-free (no model's tokenizer is right for every model, and tiktoken would try
    to download its tables). Against OpenAI's cl100k it is within a few % for English, ~5 % low for
    Cyrillic, ~25 % low for CJK and ~40 % low for dense code; keep a safety margin.
    """
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; images etc. count as nothing here
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def estimate_messages_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Estimated prompt tokens of OpenAI-style ``messages``: each content's estimate + 4 per message + 3."""
    total = REPLY_PRIMING_TOKENS
    for m in messages:
        total += estimate_tokens(_content_text(m.get("content"))) + MESSAGE_OVERHEAD_TOKENS
    return total


# ---------------------------------------------------------------- the answer


def _words(text: str) -> set[str]:
    return {w for w in _WORD_RE.findall(text.lower()) if w not in _STOPWORDS and (len(w) > 1 or w.isdigit())}


def _question(messages: Sequence[Mapping[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return _content_text(m.get("content"))
    return ""


def _memories(messages: Sequence[Mapping[str, Any]]) -> list[QuotedMemory]:
    """Memory blocks of the system/developer messages and of the framed data message (a user
    message starting with ``DATA_FRAME``); a block a member typed into their own message is not one."""
    found: list[QuotedMemory] = []
    for m in messages:
        text = _content_text(m.get("content"))
        if m.get("role") in ("system", "developer") or (m.get("role") == "user" and text.startswith(DATA_FRAME)):
            found.extend(parse_memories(text))
    return found


WINDOW_ID_BASE = 1 << 62  # earlier turns of the conversation sort after every recalled memory


def _earlier_turns(messages: Sequence[Mapping[str, Any]], question: str) -> list[QuotedMemory]:
    """The conversation's earlier user-role turns (``name: text``, oldest first) that share a word
    with ``question`` and are not questions themselves: the recent window is memory too, though no
    recall block quotes it."""
    users = [i for i, m in enumerate(messages)
             if m.get("role") == "user" and not _content_text(m.get("content")).startswith(DATA_FRAME)]
    q = _words(question)
    found: list[QuotedMemory] = []
    for pos in users[:-1]:
        text = _content_text(messages[pos].get("content"))
        name, sep, said = text.partition(": ")
        if not sep or "\n" in name or len(name) > 64:
            name, said = "", text
        if said.strip() and not said.rstrip().endswith("?") and q & _words(said):  # a question answers nothing
            found.append(QuotedMemory(WINDOW_ID_BASE + pos, "", name, said))
    return found


def choose(question: str, memories: list[QuotedMemory], k: int = MAX_QUOTES) -> list[QuotedMemory]:
    """At most ``k`` memories for ``question``: re-ranked by word overlap (ties keep the given order),
    zero-overlap ones dropped when any memory overlaps, returned oldest first (by message id)."""
    q = _words(question)
    seen: set[int] = set()
    scored = []
    for rank, mem in enumerate(memories):
        if mem.message_id in seen:
            continue
        seen.add(mem.message_id)
        overlap = len(q & _words(f"{mem.user_name} {mem.text}"))
        scored.append((-overlap, rank, mem))
    scored.sort(key=lambda t: (t[0], t[1]))
    if scored and scored[0][0] < 0:
        scored = [t for t in scored if t[0] < 0]
    return sorted((t[2] for t in scored[:k]), key=lambda m: m.message_id)


def _quote(mem: QuotedMemory) -> str:
    text = " ".join(mem.text.split())
    if len(text) > QUOTE_CHARS:
        text = text[: QUOTE_CHARS - 1].rstrip() + "…"
    when = f", {mem.date_str}" if mem.date_str else ""
    name = mem.user_name or _("someone")
    return f"> {name}{when}: {text}"


def answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """The recall model's answer to OpenAI-style ``messages`` (see the module docstring)."""
    question = _question(messages)
    chosen = choose(question, _memories(messages) + _earlier_turns(messages, question))
    if not chosen:
        return _(NOTHING_FOUND)
    return "\n".join([_(HEADER), *(_quote(m) for m in chosen)])


def pieces(text: str, words_per_piece: int = 3) -> list[str]:
    """``text`` cut into several pieces that concatenate back to it exactly."""
    tokens = re.findall(r"\s*\S+\s*", text) or [text]
    return ["".join(tokens[i : i + words_per_piece]) for i in range(0, len(tokens), words_per_piece)]


# ---------------------------------------------------------------- litellm provider


class RecallLLM(CustomLLM):
    """litellm custom provider ``kith``: ``completion``/``acompletion`` and ``streaming``/``astreaming``."""

    def _respond(self, kwargs: dict[str, Any]) -> tuple[str, dict[str, int]]:
        messages = list(kwargs.get("messages") or [])
        text = answer(messages)
        optional = kwargs.get("optional_params") or {}
        limit = optional.get("max_tokens") or optional.get("max_completion_tokens")
        if isinstance(limit, int) and limit > 0 and estimate_tokens(text) > limit:
            text = text.encode()[: limit * 4].decode("utf-8", "ignore")
        prompt = estimate_messages_tokens(messages)
        completion = estimate_tokens(text)
        return text, {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        text, usage = self._respond(kwargs)
        response: ModelResponse = kwargs.get("model_response") or ModelResponse()
        response.choices[0].message.content = text  # type: ignore[union-attr]
        response.choices[0].finish_reason = "stop"
        response.model = MODEL
        response.created = int(time.time())
        response.usage = Usage(**usage)  # type: ignore[attr-defined,arg-type]  # litellm's stubs lag its runtime
        return response

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)

    def _chunks(self, kwargs: dict[str, Any]) -> Iterator[GenericStreamingChunk]:
        text, usage = self._respond(kwargs)
        for piece in pieces(text):
            yield {"text": piece, "is_finished": False, "finish_reason": "", "usage": None, "index": 0, "tool_use": None}
        yield {"text": "", "is_finished": True, "finish_reason": "stop", "usage": usage, "index": 0, "tool_use": None}  # type: ignore[typeddict-item]

    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        yield from self._chunks(kwargs)

    async def astreaming(self, *args: Any, **kwargs: Any) -> AsyncIterator[GenericStreamingChunk]:  # type: ignore[override]
        for chunk in self._chunks(kwargs):
            yield chunk


_handler = RecallLLM()


def register() -> None:
    """Register provider ``kith`` and the price/context of ``kith/recall`` with litellm (idempotent)."""
    if not any(item.get("provider") == PROVIDER for item in litellm.custom_provider_map):
        litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": _handler})
    from litellm.utils import custom_llm_setup

    custom_llm_setup()  # litellm does this on each call too; done now so the Router accepts the provider
    if MODEL not in litellm.model_cost:
        litellm.register_model({
            MODEL: {
                "litellm_provider": PROVIDER,
                "mode": "chat",
                "max_input_tokens": CONTEXT_TOKENS,
                "cache_creation_input_token_cost": 0.0,
                "cache_read_input_token_cost": 0.0,
                "max_output_tokens": 4096,
                "max_tokens": 4096,
                "input_cost_per_token": 0.0,
                "output_cost_per_token": 0.0,
            }
        })
