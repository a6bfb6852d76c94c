"""``kith/recall``: the built-in offline model that answers from this chat's recalled memories alone.

Registered with litellm as the custom provider ``kith`` (``register()``, idempotent; done on import of
``providers.llm``), so it goes through the same Router, streaming, usage and fallback path as any
other model, and needs no key, no network and no weights.

How it answers (``answer(messages)``):
- the question is the last ``user`` message; the memories are the ``<memories>`` block(s) of the
  framed data message (a user message starting with ``memory_block.DATA_FRAME``, where Kith puts
  recalled history) or of ``system`` messages (``providers.memory_block``), ranked best first;
- small talk (``is_small_talk``: a greeting, thanks, "how are you", "who are you", "what can you
  do", "привет", "спасибо", "кто ты"…, i.e. a message whose words are only stop words and
  greeting/thanks/identity words, at least one of the latter) is answered with ``intro()``
  (``INTRO``: what this model is and how the host connects an LLM), not from memory;
- it re-ranks the memories lightly by term overlap with the question (``_stems``: ``_words``
  stemmed per script by ``providers.language.reduce``, so "signed" meets "sign-off"; ties keep the
  retrieval order); when some memory shares a term with the question, those that share none are
  dropped; it keeps at most ``MAX_QUOTES`` and quotes them oldest first (by message id) as
  ``> name, date: text``;
- the conversation's earlier turns (the recent window, ``name: text`` user messages) that share a
  term with the question are candidates too, quoted without a date after the recalled memories;
- with nothing relevant it says so honestly (``NOTHING_FOUND``).

What a quote holds (``excerpt(text, terms)``): a text of at most ``QUOTE_CHARS`` characters (all
whitespace runs made one space) is quoted whole. A longer one is cut to a window of at most
``QUOTE_CHARS`` characters, ellipses included: its sentences (``sentences``: cut after . ! ? …
followed by a space, after 。！？؟।, and at line breaks) are scored by the question's terms; the
shortest run of sentences that covers the most distinct terms within the budget is the core, then
neighbouring sentences are added while they fit (the one sharing more terms first; the following
one on a tie). "… " opens the window when it starts after the text's first sentence, " …" closes
it when it ends before the last. A single sentence longer than the budget (or a text with no
sentence punctuation) is cut the same way on word boundaries, "…" touching the cut words; a single
word longer than the budget is cut inside. When no sentence shares a term, the window is the start
of the text.

Its own words (``HEADER``, ``NOTHING_FOUND``, ``INTRO``, "someone") are in the current ``i18n`` language, read when
it answers: the chat actor's ``i18n.use(lang)`` around the call reaches it both in process
(``LLM._recall_in_process``) and through litellm (an async custom handler is awaited in the caller's
task; a sync one runs in litellm's executor under ``contextvars.copy_context()``).

Usage is estimated with ``estimate_tokens`` (UTF-8 bytes / 4, see there); the price is registered as
0 per token, so litellm's cost is 0.0: free and known (unlike a model with no price, whose cost is None).
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import _offline  # noqa: F401  (before litellm)

os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")  # as providers._offline does for the price map
os.environ.setdefault("LITELLM_LOCAL_BLOG_POSTS", "True")

import litellm
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, Usage
from litellm.utils import custom_llm_setup

from i18n import N_, _
from providers.language import reduce

from .memory_block import DATA_FRAME, QuotedMemory, parse_memories, parse_profile

__all__ = [
    "CONTEXT_TOKENS",
    "HEADER",
    "INTRO",
    "MAX_QUOTES",
    "MODEL",
    "NOTHING_FOUND",
    "PROVIDER",
    "QUOTE_CHARS",
    "RecallLLM",
    "answer",
    "estimate_messages_tokens",
    "estimate_tokens",
    "excerpt",
    "intro",
    "is_small_talk",
    "register",
    "sentences",
]

PROVIDER = "kith"
MODEL = "kith/recall"
MAX_QUOTES = 3
QUOTE_CHARS = 300  # a quote holds at most this many characters of a memory (its window on the question, see excerpt)
CONTEXT_TOKENS = 32_768  # what the prompt may hold: it only reads the memories and the question
# The answer's words are the member's language (``i18n``: translated where used, at answer time).
HEADER = N_("From this chat's memory:")
NOTHING_FOUND = N_("I don't have anything in this chat's memory about that yet.")
INTRO = N_(
    "I'm Kith's built-in offline model: I quote this chat's memory (who said what, and when) and don't write "
    "answers myself. For real answers, the host connects an LLM: KITH_MODEL=openai/gpt-4o-mini plus the "
    "provider's key in the environment (e.g. OPENAI_API_KEY), or models: and default_model in kith.yaml."
)

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, per message
REPLY_PRIMING_TOKENS = 3

_STOPWORDS = frozenset(
    ["a", "an", "the", "and", "or", "but", "if", "then", "so", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "have", "has", "had", "i", "me", "my", "you", "your", "he", "him", "his", "she", "her", "it", "its", "we", "us", "our", "they", "them", "their", "this", "that", "these", "those", "there", "here", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "can", "could", "would", "should", "will", "shall", "may", "might", "must", "not", "no", "yes", "just", "about", "into", "over", "under", "again", "also", "too", "very", "any", "some", "all", "up", "down", "out", "off", "only", "own", "same", "than", "s", "t", "don", "isn", "aren", "wasn", "weren", "hasn", "haven", "hadn", "doesn", "didn", "won", "wouldn", "shouldn", "couldn", "mustn", "ll", "re", "ve", "d", "m", "anyone", "someone", "something", "anything", "know", "knows", "tell", "told", "say", "said", "please", "thanks", "thank", "hi", "hello", "hey", "ok", "okay"]
)
_WORD_RE = re.compile(r"\w+")
# Small talk (is_small_talk): words that only greet, thank, take leave or ask about the bot itself...
_SMALL_TALK = frozenset(
    ["hi", "hello", "hey", "heya", "hiya", "howdy", "yo", "sup", "wassup", "hallo", "greetings", "morning", "afternoon", "evening", "night", "day", "good", "gm", "gn", "thanks", "thank", "thx", "ty", "tysm", "cheers", "appreciate", "appreciated", "much", "lot", "lots", "great", "cool", "nice", "awesome", "perfect", "wonderful", "bye", "goodbye", "cya", "later", "see", "welcome", "ok", "okay", "alright", "fine", "well", "you", "your", "yours", "yourself", "ya", "ur", "whats", "hows", "up", "going", "doing", "new", "name", "called", "bot", "kith", "ai", "assistant", "model", "llm", "made", "built", "created", "introduce", "help", "able", "work", "works", "привет", "приветик", "приветствую", "здравствуй", "здравствуйте", "здорово", "здрасте", "хай", "хей", "салют", "ку", "добрый", "доброе", "доброго", "утро", "утра", "день", "дня", "вечер", "вечера", "ночи", "спокойной", "спасибо", "спасибочки", "благодарю", "спс", "пасиб", "мерси", "пожалуйста", "большое", "огромное", "пока", "свидания", "увидимся", "ок", "окей", "хорошо", "отлично", "круто", "класс", "супер", "ладно", "дела", "делишки", "поживаешь", "поживаете", "жизнь", "нового", "новенького", "ты", "вы", "тебя", "вас", "тебе", "вам", "тобой", "вами", "себе", "себя", "сам", "зовут", "звать", "имя", "бот", "модель", "умеешь", "умеете", "можешь", "можете", "делаешь", "делаете", "расскажи", "расскажите", "помощь", "помоги", "помогите", "сделал", "создал", "работаешь", "привіт", "вітаю", "дякую", "справи", "ти", "тебе", "вмієш", "можеш"]
)
# ... and the function words around them (English: _STOPWORDS; Russian and Ukrainian here)
_SMALL_TALK_STOP = _STOPWORDS | frozenset(
    ["а", "и", "но", "или", "ну", "же", "ж", "ли", "бы", "то", "это", "вот", "так", "как", "что", "кто", "где", "когда", "почему", "зачем", "мы", "он", "она", "они", "меня", "мне", "мой", "твой", "ваш", "у", "о", "об", "в", "на", "с", "со", "к", "по", "за", "из", "от", "до", "для", "не", "нет", "да", "еще", "уже", "очень", "все", "просто", "там", "тут", "тоже", "чем", "чего", "сегодня", "як", "що", "хто", "де", "і", "й", "та", "це"]
)
_MENTION_RE = re.compile(r"@\w+")
# where a sentence ends: . ! ? … before a space; 。！？؟। with or without one; a line break
_SENTENCE_END_RE = re.compile(r"[.!?…]+[\"'»”’)\]]*\s+|[。！？؟।]+[\"'»”’)\]」』]*\s*|\s*\n\s*")


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


def _stems(text: str) -> set[str]:
    """``_words(text)`` reduced as the full-text index reduces them (``providers.language.reduce``: Latin
    script in English, Cyrillic in Russian), so "signed", "signs" and "sign-off" meet on "sign"."""
    words = _words(text)
    return set(reduce(sorted(words), "en")) if words else set()


def _speaker(text: str) -> tuple[str, str]:
    """``"name: text"`` → (name, text); ("", text) when it does not start with a name."""
    name, sep, said = text.partition(": ")
    if not sep or "\n" in name or len(name) > 64:
        return "", text
    return name, said


def is_small_talk(text: str) -> bool:
    """Whether ``text`` (a member's message, ``name: `` prefix and @mentions ignored) is only small
    talk: a greeting, thanks, goodbye or a question about the bot itself ("hi", "how are you", "what
    can you do", "привет", "спасибо", "кто ты"). Its words must all be stop words or small-talk words
    (English, Russian, Ukrainian), at least one of them the latter: "hi, how do I mount a usb drive?"
    is a question, and so is "anything?"."""
    said = _MENTION_RE.sub(" ", _speaker(text)[1].lower()).replace("ё", "е")
    words = [w for w in _WORD_RE.findall(said) if len(w) > 1 or w.isdigit()]
    return (any(w in _SMALL_TALK for w in words)
            and all(w in _SMALL_TALK or w in _SMALL_TALK_STOP for w in words))


def intro() -> str:
    """``INTRO`` in the current language: what this model is and how the host connects an LLM."""
    return _(INTRO)


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
            found.extend(parse_profile(text))  # the memory entries: facts about the members and the chat
    return found


WINDOW_ID_BASE = 1 << 62  # earlier turns of the conversation sort after every recalled memory


def _earlier_turns(messages: Sequence[Mapping[str, Any]], question: str) -> list[QuotedMemory]:
    """The conversation's earlier user-role turns (``name: text``, oldest first) that share a word
    with ``question`` and are not questions themselves: the recent window is memory too, though no
    recall block quotes it."""
    users = [i for i, m in enumerate(messages)
             if m.get("role") == "user" and not _content_text(m.get("content")).startswith(DATA_FRAME)]
    q = _stems(question)
    found: list[QuotedMemory] = []
    for pos in users[:-1]:
        name, said = _speaker(_content_text(messages[pos].get("content")))
        if said.strip() and not said.rstrip().endswith("?") and q & _stems(said):  # a question answers nothing
            found.append(QuotedMemory(WINDOW_ID_BASE + pos, "", name, said))
    return found


def choose(question: str, memories: list[QuotedMemory], k: int = MAX_QUOTES) -> list[QuotedMemory]:
    """At most ``k`` memories for ``question``: re-ranked by term overlap (``_stems``; ties keep the
    given order), zero-overlap ones dropped when any memory overlaps, returned oldest first (by message id)."""
    q = _stems(question)
    seen: set[int] = set()
    scored = []
    for rank, mem in enumerate(memories):
        if mem.message_id in seen:
            continue
        seen.add(mem.message_id)
        overlap = len(q & _stems(f"{mem.user_name} {mem.text}"))
        scored.append((-overlap, rank, mem))
    scored.sort(key=lambda t: (t[0], t[1]))
    if scored and scored[0][0] < 0:
        scored = [t for t in scored if t[0] < 0]
    return sorted((t[2] for t in scored[:k]), key=lambda m: m.message_id)


def sentences(text: str) -> list[str]:
    """``text``'s sentences, whitespace runs made one space: cut after . ! ? … followed by a space
    ("4.2 m" is one sentence), after 。！？؟। (a space or not) and at line breaks."""
    ends = [m.end() for m in _SENTENCE_END_RE.finditer(text)]
    parts = (text[a:b] for a, b in zip([0, *ends], [*ends, len(text)]))
    return [s for s in (" ".join(p.split()) for p in parts) if s]


def _core(units: Sequence[str], hits: Sequence[set[str]], budget: int) -> tuple[int, int]:
    """The shortest run ``units[i..j]`` covering the most distinct terms of ``hits`` in ``budget``
    characters (joined by spaces; a single unit always qualifies); the earliest on a tie; (0, 0)
    when no unit has a term."""
    best, best_key = (0, 0), (0, 0)
    for i in range(len(units)):
        covered: set[str] = set()
        size = -1
        for j in range(i, len(units)):
            size += len(units[j]) + 1
            if j > i and size > budget:
                break
            covered |= hits[j]
            if (key := (len(covered), i - j)) > best_key:
                best, best_key = (i, j), key
    return best


def _span(units: Sequence[str], hits: Sequence[set[str]], budget: int) -> tuple[int, int]:
    """``_core``, grown by neighbouring units while they fit in ``budget``: the neighbour with more
    terms first; on a tie the side grown less so far (in characters), the following one when even."""
    i, j = _core(units, hits, budget)
    size = sum(len(u) + 1 for u in units[i : j + 1]) - 1
    grown = [0, 0]  # characters added before, after
    while True:
        left = i > 0 and size + len(units[i - 1]) + 1 <= budget
        right = j + 1 < len(units) and size + len(units[j + 1]) + 1 <= budget
        if not (left or right):
            return i, j
        if left and right:
            right = (len(hits[j + 1]), grown[0]) >= (len(hits[i - 1]), grown[1])
        if right:
            j += 1
            added, side = len(units[j]) + 1, 1
        else:
            i -= 1
            added, side = len(units[i]) + 1, 0
        grown[side] += added
        size += added


def excerpt(text: str, terms: set[str], limit: int = QUOTE_CHARS) -> str:
    """``text`` (whitespace runs made one space) if it fits in ``limit`` characters, else its window
    on ``terms`` (``_stems`` of the question) of at most ``limit`` characters, ellipses included:
    whole sentences when they fit, else words (see the module docstring)."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    budget = max(1, limit - 4)  # room for "… " and " …"
    sents = sentences(text)
    si, sj = _span(sents, [terms & _stems(s) for s in sents], budget)
    body = " ".join(sents[si : sj + 1])
    head, tail = ("… " if si > 0 else ""), (" …" if sj < len(sents) - 1 else "")
    if len(body) > budget:  # one sentence longer than the budget: its words
        words = body.split()
        wi, wj = _span(words, [terms & _stems(w) for w in words], budget)
        body = " ".join(words[wi : wj + 1])
        cut = len(body) > budget  # one word longer than the budget: cut inside
        body = body[:budget]
        head = "…" if wi > 0 else head
        tail = "…" if wj < len(words) - 1 or cut else tail
    return head + body + tail


def _quote(mem: QuotedMemory, terms: set[str]) -> str:
    when = f", {mem.date_str}" if mem.date_str else ""
    name = mem.user_name or _("someone")
    return f"> {name}{when}: {excerpt(mem.text, terms)}"


def answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """The recall model's answer to OpenAI-style ``messages`` (see the module docstring)."""
    question = _question(messages)
    if is_small_talk(question):
        return intro()
    chosen = choose(question, _memories(messages) + _earlier_turns(messages, question))
    if not chosen:
        return _(NOTHING_FOUND)
    terms = _stems(_speaker(question)[1])  # the asker's own name is no clue to where the answer is
    return "\n".join([_(HEADER), *(_quote(m, terms) for m in chosen)])


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
