"""The LLM: a litellm ``Router`` over the configured model aliases, behind a global concurrency limit.

Usage::

    llm = LLM(settings.models, settings.llm)
    c = await llm.complete("fast", messages, on_delta=show_progress)   # -> Completion
    c.text, c.model, c.prompt_tokens, c.cost_usd, c.latency_ms, c.fell_back

The only module that talks to litellm for chat (with ``recall_model``); every litellm / openai / httpx /
aiohttp exception is translated here, once, into ``providers.errors`` (the original is ``__cause__``).

Routing and failure behaviour (litellm 1.106.2):
- One Router deployment per alias (``model_name`` = the alias) with its ``api_base``, key (from
  ``os.environ[spec.api_key_env]`` when set, else litellm's own variables such as OPENAI_API_KEY),
  ``timeout_s`` (also the streaming timeout), ``max_output_tokens`` and ``temperature``.
- A user's or group's own key (``/key``, ``complete(api_keys=...)``) replaces the host's key only in
  the deployments of aliases that call their provider's own API (``takes_user_keys``: no ``api_base``,
  or the host set ``accepts_user_keys: true``), in a Router of its own; a model on a server of the
  host's (``api_base``) gets the host's key, whether it is asked or reached as a fallback.
- Each model is retried ``LLMSettings.num_retries`` times on 429, 5xx, connection errors and timeouts
  (litellm backs off ≈1–3 s per retry; 400/401/403 are not retried), then the alias's ``fallbacks`` are
  tried in order — on any error, 400/401 included (another model may have a bigger context or a
  valid key). litellm follows fallbacks *transitively*: a fallback alias that fails goes on to its own
  fallbacks (depth-first, no alias tried twice, at most 5 hops). When everything fails, the requested
  model's error decides the type (429 → RateLimited even if a fallback answered 500); the message
  names the fallbacks' errors too.
- Streaming falls back only before the first chunk; a stream that breaks after text was delivered to
  ``on_delta`` raises (``ProviderUnavailable``), so the caller never gets two answers spliced together.
- Cooldowns are disabled: with one deployment per alias they would only turn a transient error into
  "no deployments available" for the next calls (and make tests order-dependent).
- No telemetry, no callbacks; litellm's own loggers are quieted (we log the outcome here), and
  ``LITELLM_LOCAL_*`` keep its price map / header tables local. The only network traffic is to the
  configured providers.

Tool calling (``complete(..., tools=..., run_tool=...)``, types in ``providers.tools``): the model is
called with the tools (``tool_choice="auto"``); while it asks for tool calls and fewer than
``max_steps`` rounds ran, the calls are announced (``on_tool_call``), run (in parallel when it made
several, each under ``tool_timeout_s``, output capped at ``tool_output_chars``), their results
appended as ``role: tool`` messages framed as quoted data (``frame_tool_output``), and the model is
called again; after ``max_steps`` rounds one last call with ``tool_choice="none"`` makes it answer in
text. Every round is a call of its own through the Router: retries and fallbacks as above, per round.
The concurrency limit is held only while a model call runs, never while tools run (a tool may call
the LLM itself). litellm's MCP gateway is bypassed (``_skip_mcp_handler``: our tools are plain
functions; its handler would import the optional ``mcp`` package on every call with tools).

Cost: ``prompt_tokens × input_cost_per_token + completion_tokens × output_cost_per_token`` from litellm's
bundled price map (``litellm.model_cost``). A model the map does not price gives ``cost_usd=None``
(unknown, never 0: litellm's own ``completion_cost`` returns 0.0 for unknown models, and its
``get_model_info`` may call the provider — Ollama ``/api/show``, the Hugging Face hub — so neither is
used). Cached-token discounts and long-context tiers are ignored (list price, an upper bound).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _offline  # noqa: F401  (before litellm)

os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("LITELLM_LOCAL_BLOG_POSTS", "True")

import asyncio

import anyio
import httpx
import litellm
import openai
from litellm import Router

from config.models import LLMSettings, ModelSpec

from . import recall_model
from .errors import (
    AuthenticationFailed,
    BadRequest,
    ModelNotConfigured,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from .keys import KeyUse
from .model_map import model_supports
from .recall_model import estimate_messages_tokens, estimate_tokens
from .tools import ToolCall, ToolOutcome, ToolRunner, ToolSpec, frame_tool_output

__all__ = [
    "DEFAULT_CONTEXT_TOKENS",
    "LLM",
    "PING_TIMEOUT_S",
    "ROUND_SEPARATOR",
    "Completion",
    "error_detail",
    "price_entry",
    "takes_user_keys",
    "translate_error",
]

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_TOKENS = 8192
PING_TIMEOUT_S = 10.0  # ping uses min(this, the model's timeout_s)
_DETAIL_CHARS = 800
_KEYED_ROUTERS = 64  # Routers with users' own keys kept at once
ROUND_SEPARATOR = "\n\n"  # between the texts of two rounds of a tool-calling turn


def _configure_litellm() -> None:
    """Process-wide litellm settings; idempotent."""
    litellm.telemetry = False
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners on stdout
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # fallback chatter at ERROR; we log outcomes
    recall_model.register()


_configure_litellm()


@dataclass(frozen=True)
class Completion:
    """One finished completion.

    text: the whole answer. model: the alias that answered (after any fallback). litellm_model: its
    litellm model string. prompt_tokens / completion_tokens: as reported by the provider (estimated,
    ≈ UTF-8 bytes / 4, when it reports none). cost_usd: None when the model has no known price.
    latency_ms: wall time from sending the request (after waiting for a concurrency slot) to the last
    byte, retries and fallbacks included. fell_back: another alias than the requested one answered.

    With tools (``complete(tools=...)``): text is the texts of every round, joined by a blank line
    (``ROUND_SEPARATOR``; usually only the last round writes any); model / litellm_model are those of
    the last round, fell_back is true when any round fell back; tokens and cost are summed over all
    rounds (cost None when any round's price is unknown); latency_ms includes the time tools ran.
    tool_calls: every call the model made and Kith answered, in order (round by round, then in the
    model's order); empty without tools.
    stopped: the caller's ``stop`` was set: text is what was streamed until then (the stream was
    closed), and the tokens are estimated when the provider reported none (it reports them last).
    """

    text: str
    model: str
    litellm_model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    latency_ms: float
    fell_back: bool
    tool_calls: tuple[ToolCall, ...] = ()
    stopped: bool = False


@dataclass
class _Round:
    """One model call: what it wrote, the calls it asked for, its usage and litellm's hidden params."""

    text: str
    calls: list[ToolCall] = field(default_factory=list)
    usage: Any = None
    hidden: dict = field(default_factory=dict)
    stopped: bool = False  # the caller's stop ended the stream early


# ---------------------------------------------------------------- price map (offline, static)


def price_entry(litellm_model: str) -> dict[str, Any] | None:
    """The entry of ``litellm.model_cost`` for a litellm model string, or None.

    Tries the full string (``ollama/llama3``, ``kith/recall``), then without its provider prefix when
    the entry belongs to that provider (``openai/gpt-4o-mini`` → ``gpt-4o-mini``).
    """
    table = litellm.model_cost
    entry = table.get(litellm_model)
    if isinstance(entry, dict):
        return entry
    if "/" in litellm_model:
        provider, bare = litellm_model.split("/", 1)
        entry = table.get(bare)
        if isinstance(entry, dict) and str(entry.get("litellm_provider", "")).split("_")[0] in (provider, provider.split("_")[0]):
            return entry
    return None


def _cost(litellm_model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    entry = price_entry(litellm_model)
    if entry is None:
        return None
    cin, cout = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
    if cin is None or cout is None:
        return None
    return float(prompt_tokens) * float(cin) + float(completion_tokens) * float(cout)


# ---------------------------------------------------------------- errors


def error_detail(e: BaseException) -> str:
    """An exception's text on one line, at most ``_DETAIL_CHARS`` characters (for error messages)."""
    text = " ".join(str(e).split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"


def translate_error(e: BaseException, where: str) -> ProviderError:
    """The ``providers.errors`` type for a litellm/openai/httpx/aiohttp exception ``e``.

    where: names the call for the message (e.g. ``"fast (fallbacks: slow)"``). Set ``__cause__`` by
    raising ``translate_error(e, ...) from e``.
    """
    if isinstance(e, ProviderError):
        return e
    msg = f"{where}: {type(e).__name__}: {error_detail(e)}"
    if isinstance(e, (litellm.Timeout, openai.APITimeoutError, httpx.TimeoutException, TimeoutError)):
        return ProviderTimeout(msg)
    if isinstance(e, litellm.RateLimitError):
        return RateLimited(msg)
    if type(e).__name__ in ("RouterRateLimitError", "RouterRateLimitErrorBasic"):  # no deployment available
        return RateLimited(msg)
    if isinstance(e, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
        return AuthenticationFailed(msg)
    if isinstance(e, (litellm.BadRequestError, litellm.UnprocessableEntityError)):
        return BadRequest(msg)
    status = getattr(e, "status_code", None)
    if not isinstance(status, int):
        status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        if status == 408:
            return ProviderTimeout(msg)
        if status == 429:
            return RateLimited(msg)
        if status in (401, 403):
            return AuthenticationFailed(msg)
        if status in (400, 413, 422):
            return BadRequest(msg)
    # 5xx, connection refused / reset, 404 (model unknown at the provider), anything unexpected
    return ProviderUnavailable(msg)


# ---------------------------------------------------------------- users' own keys


def takes_user_keys(spec: ModelSpec) -> bool:
    """May a user's or a group's own API key (``/key``) be sent with calls to this model?

    Yes when the model calls its provider's own API (no ``api_base``: litellm's official endpoint),
    or when the host marked its ``api_base`` ``accepts_user_keys: true``. No for any other
    ``api_base`` — a server of the host's, which must never see users' keys (it gets the host's
    ``api_key_env``) — and for the offline ``kith/*`` models, which take no key.
    """
    if spec.model.startswith(f"{recall_model.PROVIDER}/"):
        return False
    return not spec.api_base or spec.accepts_user_keys


# ---------------------------------------------------------------- the LLM


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _usage_ints(usage: Any) -> tuple[int, int] | None:
    if usage is None:
        return None
    p = getattr(usage, "prompt_tokens", None)
    c = getattr(usage, "completion_tokens", None)
    if p is None and isinstance(usage, Mapping):
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if p is None and c is None:
        return None
    return int(p or 0), int(c or 0)


# ---------------------------------------------------------------- tools


def _check_tool_args(tools: Sequence[ToolSpec], run_tool: ToolRunner | None, max_steps: int,
                     tool_timeout_s: float, tool_output_chars: int) -> None:
    if run_tool is None:
        raise ValueError("complete(tools=...) needs run_tool")
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise ValueError(f"two tools share a name: {sorted(n for n in set(names) if names.count(n) > 1)}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be ≥ 0, not {max_steps}")
    if not tool_timeout_s > 0:
        raise ValueError(f"tool_timeout_s must be > 0, not {tool_timeout_s}")
    if tool_output_chars < 1:
        raise ValueError(f"tool_output_chars must be ≥ 1, not {tool_output_chars}")


def _tool_call(call_id: Any, function: Any) -> ToolCall:
    """A ToolCall from a response's ``tool_calls`` entry (``id`` and ``function.name`` / ``.arguments``)."""
    name = str(getattr(function, "name", None) or "")
    arguments = getattr(function, "arguments", None)
    if arguments is None:
        arguments = ""
    elif not isinstance(arguments, str):  # a provider that gives them parsed
        arguments = json.dumps(arguments, ensure_ascii=False)
    return ToolCall.parse(str(call_id or ""), name, arguments)


def _accumulate(pending: dict[int, list[str]], delta: Any) -> None:
    """Add one streamed ``delta.tool_calls`` entry to ``pending`` (index → [id, name, arguments]): the id
    and name come in the call's first chunk, its arguments over several."""
    index = getattr(delta, "index", None)
    if not isinstance(index, int):
        index = len(pending) - 1 if pending and not getattr(delta, "id", None) else len(pending)
    entry = pending.setdefault(index, ["", "", ""])
    if getattr(delta, "id", None) and not entry[0]:
        entry[0] = str(delta.id)
    function = getattr(delta, "function", None)
    name = getattr(function, "name", None)
    if name and not entry[1]:
        entry[1] = str(name)
    arguments = getattr(function, "arguments", None)
    if arguments:
        entry[2] += arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _separated(on_delta: Callable[[str], Awaitable[None]]) -> Callable[[str], Awaitable[None]]:
    """``on_delta`` with ``ROUND_SEPARATOR`` before the first delta (a later round's text)."""
    first = True

    async def emit(delta: str) -> None:
        nonlocal first
        if first:
            first = False
            delta = ROUND_SEPARATOR + delta
        await on_delta(delta)

    return emit


def _capped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output cut: the first {limit} of {len(text)} characters are shown]"


async def _run_one(call: ToolCall, offered: Mapping[str, ToolSpec], run_tool: ToolRunner,
                   timeout_s: float) -> ToolOutcome:
    if call.name not in offered:
        return ToolOutcome(f"there is no tool named {call.name!r}; the tools are: {', '.join(offered)}", error=True)
    if call.error is not None or call.args is None:
        return ToolOutcome(f"{call.error or 'the arguments are not a JSON object'}; "
                           f"call {call.name} again with a JSON object that matches its parameters", error=True)
    outcome: ToolOutcome | None = None
    try:
        with anyio.move_on_after(timeout_s):
            outcome = await run_tool(call)
    except Exception as e:
        log.warning("tool %s failed", call.name, exc_info=True)
        return ToolOutcome(f"the tool failed unexpectedly ({type(e).__name__})", error=True)
    if outcome is None:
        log.info("tool %s did not answer within %g s", call.name, timeout_s)
        return ToolOutcome(f"the tool did not answer within {timeout_s:g} s", error=True)
    return outcome


async def _run_calls(calls: Sequence[ToolCall], offered: Mapping[str, ToolSpec], run_tool: ToolRunner,
                     timeout_s: float, output_chars: int) -> list[ToolOutcome]:
    """The outcomes of one round's calls, in the calls' order; several calls run at once (a task group)."""
    outcomes: list[ToolOutcome] = [ToolOutcome("", error=True)] * len(calls)

    async def one(i: int) -> None:
        o = await _run_one(calls[i], offered, run_tool, timeout_s)
        outcomes[i] = ToolOutcome(_capped(o.text, output_chars), o.error)

    if len(calls) == 1:
        await one(0)
    else:
        async with anyio.create_task_group() as tg:
            for i in range(len(calls)):
                tg.start_soon(one, i)
    return outcomes


class LLM:
    """Chat completions over the configured aliases, with fallbacks, streaming, usage and cost.

    models: alias → ModelSpec (``Settings.models``); every alias named in a ``fallbacks`` must be in it
    and every model string must name a provider litellm knows (else ``ModelNotConfigured``, at once). settings: concurrency (a global ``anyio.CapacityLimiter`` over every
    call, including ``ping``) and ``num_retries`` per model.
    """

    def __init__(self, models: Mapping[str, ModelSpec], settings: LLMSettings) -> None:
        self._models: dict[str, ModelSpec] = dict(models)
        self._settings = settings
        self._provider: dict[str, str] = {}  # alias → litellm provider (what a user's /key is for)
        for alias, spec in self._models.items():
            for fb in spec.fallbacks:
                if fb not in self._models:
                    raise ModelNotConfigured(f"models.{alias}.fallbacks: unknown model alias {fb!r}")
            try:
                self._provider[alias] = litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)[1]
            except Exception as e:
                raise ModelNotConfigured(f"models.{alias}: litellm cannot use model {spec.model!r}: {error_detail(e)}") from e
        self._key_providers = tuple(dict.fromkeys(
            self._provider[a] for a, s in self._models.items() if not s.model.startswith(f"{recall_model.PROVIDER}/")))
        self._user_key_providers = frozenset(self._provider[a] for a, s in self._models.items() if takes_user_keys(s))
        self._limiter = anyio.CapacityLimiter(settings.concurrency)
        self._router = self._build_router({})
        self._keyed: OrderedDict[str, Router] = OrderedDict()  # digest of users' keys → their Router (LRU)
        self._tool_support: dict[str, bool] = {}  # alias → litellm's supports_function_calling

    def _build_router(self, keys: Mapping[str, str]) -> Router:
        """One deployment per alias; an alias whose provider has a key in ``keys`` uses that key when it
        takes users' keys (``takes_user_keys``), else the host's. Fallbacks name aliases of this same
        Router, so a fallback gets a user's key only by that same rule."""
        model_list = []
        for alias, spec in self._models.items():
            params = self._litellm_params(spec)
            key = keys.get(self.provider_of(alias))
            if key and takes_user_keys(spec):
                params["api_key"] = key
            model_list.append({"model_name": alias, "litellm_params": params})
        fallbacks = [{alias: list(spec.fallbacks)} for alias, spec in self._models.items() if spec.fallbacks]
        try:
            return Router(
                model_list=model_list,
                fallbacks=fallbacks,
                num_retries=self._settings.num_retries,
                disable_cooldowns=True,
                retry_after=0,
            )
        except Exception as e:
            raise translate_error(e, "building the model router") from e

    def provider_of(self, alias: str) -> str:
        """The litellm provider of ``alias``'s model (``openai``, ``anthropic``, ``ollama``, ...): what
        a user's own key (``/key``) is for. ModelNotConfigured for an unknown alias."""
        self._spec(alias)
        return self._provider[alias]

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers of the configured models that take an API key (not the offline recall model)."""
        return self._key_providers

    def key_use(self, provider: str) -> KeyUse:
        """Which configured aliases a user's (or group's) key for ``provider`` would be sent to
        (``used``: they call the provider's own API, or accept users' keys) and which of that
        provider's aliases never get it (``not_used``: the host's own servers), in configuration order."""
        aliases = [a for a, s in self._models.items()
                   if self._provider[a] == provider and not s.model.startswith(f"{recall_model.PROVIDER}/")]
        return KeyUse(tuple(a for a in aliases if takes_user_keys(self._models[a])),
                      tuple(a for a in aliases if not takes_user_keys(self._models[a])))

    def own_key_aliases(self, keys: Mapping[str, str] | None) -> frozenset[str]:
        """The aliases a call with these users' own keys (provider → key, ``/key``) would make on the
        user's key, not the host's: the host pays nothing for them (``budget``)."""
        if not keys:
            return frozenset()
        return frozenset(a for a, s in self._models.items() if keys.get(self._provider[a]) and takes_user_keys(s))

    def _router_for(self, keys: Mapping[str, str] | None) -> Router:
        """The host's Router, or one with the users' own keys for their providers (cached, 64 at most;
        the cache is keyed by a SHA-256 digest, never by the keys themselves). Keys no alias takes
        (``takes_user_keys``) are left out: they would build the host's Router again."""
        used = {p: k for p, k in (keys or {}).items() if k and p in self._user_key_providers}
        if not used:
            return self._router
        digest = hashlib.sha256(repr(sorted(used.items())).encode()).hexdigest()
        router = self._keyed.get(digest)
        if router is None:
            router = self._keyed[digest] = self._build_router(used)
            while len(self._keyed) > _KEYED_ROUTERS:
                self._keyed.popitem(last=False)
        self._keyed.move_to_end(digest)
        return router

    @staticmethod
    def _litellm_params(spec: ModelSpec) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": spec.model,
            "timeout": spec.timeout_s,
            "stream_timeout": spec.timeout_s,
            "max_tokens": spec.max_output_tokens,
            "max_retries": 0,  # the openai SDK's own retries: off, the Router retries
            "drop_params": True,  # a parameter a provider does not take is dropped, not an error
        }
        if spec.api_base:
            params["api_base"] = spec.api_base
        if spec.api_key_env and os.environ.get(spec.api_key_env):
            params["api_key"] = os.environ[spec.api_key_env]
        if spec.temperature is not None:
            params["temperature"] = spec.temperature
        return params

    # ------------------------------------------------------------ lookup

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._models)

    def _spec(self, alias: str) -> ModelSpec:
        try:
            return self._models[alias]
        except KeyError:
            known = ", ".join(self._models) or "none"
            raise ModelNotConfigured(f"model alias {alias!r} is not configured (models: {known})") from None

    def _where(self, alias: str) -> str:
        spec = self._models[alias]
        return f"{alias} [{spec.model}]" + (f" (fallbacks: {', '.join(spec.fallbacks)})" if spec.fallbacks else "")

    def context_tokens(self, alias: str) -> int:
        """The prompt budget of ``alias`` in tokens: ``spec.context_tokens``, else ``max_input_tokens``
        of litellm's bundled price map (offline), else 8192. ModelNotConfigured for an unknown alias."""
        spec = self._spec(alias)
        if spec.context_tokens:
            return spec.context_tokens
        entry = price_entry(spec.model) or {}
        n = entry.get("max_input_tokens") or entry.get("max_tokens")
        return int(n) if isinstance(n, (int, float)) and n > 0 else DEFAULT_CONTEXT_TOKENS

    def count_tokens(self, alias: str, messages: Sequence[Mapping[str, Any]]) -> int:
        """Estimated prompt tokens of ``messages`` for ``alias``: per message ceil(UTF-8 bytes / 4) + 4,
        plus 3. Tokenizer-free and the same for every model (close to cl100k for English, low by up to
        ~25 % for CJK and ~40 % for dense code: keep a margin). ModelNotConfigured for an unknown alias."""
        self._spec(alias)
        return estimate_messages_tokens(messages)

    # ------------------------------------------------------------ calls

    async def complete(
        self,
        alias: str,
        messages: list[dict],
        *,
        on_delta: Callable[[str], Awaitable[None]] | None = None,
        max_tokens: int | None = None,
        api_keys: Mapping[str, str] | None = None,
        tools: Sequence[ToolSpec] = (),
        run_tool: ToolRunner | None = None,
        max_steps: int = 4,
        tool_timeout_s: float = 20.0,
        tool_output_chars: int = 8000,
        on_tool_call: Callable[[ToolCall], Awaitable[None]] | None = None,
        stop: anyio.Event | None = None,
    ) -> Completion:
        """Complete ``messages`` (OpenAI-style) with ``alias``, falling back along its fallbacks.

        on_delta: when given, the answer is streamed and ``on_delta`` is awaited with each non-empty text
        delta, in order (their concatenation is ``Completion.text``); an exception it raises propagates
        unchanged and closes the stream. max_tokens: caps the answer (default ``spec.max_output_tokens``).
        Raises ModelNotConfigured, RateLimited, ProviderUnavailable, ProviderTimeout, AuthenticationFailed,
        BadRequest (all ``ProviderError``); never a litellm type.
        api_keys: provider → a user's own API key (``/key``); the aliases of those providers that take
        users' keys (``takes_user_keys``: no ``api_base``, or ``accepts_user_keys``) use it instead of the
        host's key, the requested one and its fallbacks alike; the others keep the host's key.

        Tools (see the module docstring): tools: offered to the model; empty (the default), or a model
        that does not support tools (``supports_tools`` false, e.g. the offline ``kith/recall``), gives
        a plain completion without them. run_tool: runs one call (required with tools; see
        ``providers.tools.ToolRunner``). max_steps: at most this many rounds of tool calls (≥ 0), then
        one more call with ``tool_choice="none"`` for the text answer. tool_timeout_s (> 0): a call
        still running after this long is cancelled and its outcome is the error "the tool did not
        answer within N s". tool_output_chars (≥ 1): a longer output is cut to this many characters,
        with a note saying so. A call to a tool not in ``tools``, with arguments that are not a JSON
        object, or whose runner raised, gets an error outcome the model reads (it may retry) — never an
        exception here. on_tool_call: awaited with each call, in order, before the round's calls run
        (an exception it raises propagates unchanged). Streaming: text a model writes in a round that
        also calls tools is streamed too (each later round's first delta starts with a blank line,
        ``ROUND_SEPARATOR``); a round of tool calls alone streams nothing.
        ValueError: tools without run_tool, two tools with one name, or a limit out of range.
        stop: when set (the user asked to stop the generation), the streamed answer ends at the next
        chunk: the stream is closed, no further round or tool runs, and the Completion holds what was
        generated so far (``stopped``), its usage counted (estimated when the provider sent none).
        """
        spec = self._spec(alias)
        if tools:
            _check_tool_args(tools, run_tool, max_steps, tool_timeout_s, tool_output_chars)
        if spec.model == recall_model.MODEL:
            return await self._recall_in_process(alias, messages, on_delta, stop)
        kwargs: dict[str, Any] = {"model": alias, "messages": messages}
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        router = self._router_for(api_keys)
        if tools and self.supports_tools(alias):
            assert run_tool is not None  # _check_tool_args
            return await self._tool_loop(
                alias, kwargs, router, on_delta, tools, run_tool, max_steps=max_steps,
                tool_timeout_s=tool_timeout_s, tool_output_chars=tool_output_chars, on_tool_call=on_tool_call, stop=stop)
        async with self._limiter:
            t0 = time.perf_counter()
            rnd = await self._call(alias, kwargs, on_delta, router, stop)
            latency_ms = (time.perf_counter() - t0) * 1000.0
        return self._finish(alias, [(messages, rnd)], latency_ms)

    def supports_tools(self, alias: str) -> bool:
        """Can ``alias``'s model call tools? The model's ``tools`` option when set (true/false); else
        litellm's ``supports_function_calling`` — from its bundled model map only, never over the network
        (for providers whose model info litellm would fetch from a server or hub, e.g. Ollama's
        ``/api/show``, only the bundled map is read: set ``tools: true`` for such a model). False for the
        offline ``kith/*`` models, and when litellm does not know the model. ModelNotConfigured for an
        unknown alias."""
        spec = self._spec(alias)
        if spec.model.startswith(f"{recall_model.PROVIDER}/"):
            return False
        if spec.tools is not None:
            return spec.tools
        known = self._tool_support.get(alias)
        if known is None:
            known = self._tool_support[alias] = model_supports(spec, "supports_function_calling")
        return known

    async def _call(self, alias: str, kwargs: dict[str, Any], on_delta: Callable[[str], Awaitable[None]] | None,
                    router: Router, stop: anyio.Event | None = None) -> _Round:
        if on_delta is None:
            return await self._plain(alias, kwargs, router)
        return await self._stream(alias, kwargs, on_delta, router, stop)

    async def _tool_loop(
        self, alias: str, kwargs: dict[str, Any], router: Router, on_delta: Callable[[str], Awaitable[None]] | None,
        tools: Sequence[ToolSpec], run_tool: ToolRunner, *, max_steps: int, tool_timeout_s: float,
        tool_output_chars: int, on_tool_call: Callable[[ToolCall], Awaitable[None]] | None,
        stop: anyio.Event | None = None,
    ) -> Completion:
        """The rounds of a turn with tools (see ``complete``)."""
        offered = {t.name: t for t in tools}
        base = {**kwargs, "tools": [t.as_openai() for t in tools], "_skip_mcp_handler": True}
        convo: list[dict] = list(kwargs["messages"])
        rounds: list[tuple[list[dict], _Round]] = []
        made: list[ToolCall] = []
        t0 = time.perf_counter()
        for step in range(max_steps + 1):
            last = step == max_steps
            call_kwargs = {**base, "messages": convo, "tool_choice": "none" if last else "auto"}
            emit = on_delta
            if on_delta is not None and any(r.text for _, r in rounds):
                emit = _separated(on_delta)
            async with self._limiter:
                rnd = await self._call(alias, call_kwargs, emit, router, stop)
            rounds.append((convo, rnd))
            if rnd.stopped:
                break
            if last or not rnd.calls:
                if rnd.calls:  # asked for with tool_choice="none" (a provider that ignores it): not run
                    log.info("LLM %s asked for tools after the last round (%d); not run", alias, max_steps)
                break
            calls = [c if c.id else ToolCall(f"call_{step}_{i}", c.name, c.arguments, c.args, c.error)
                     for i, c in enumerate(rnd.calls)]
            made.extend(calls)
            log.info("LLM %s asked for tools (round %d): %s", alias, step + 1, ", ".join(c.name for c in calls))
            if on_tool_call is not None:
                for c in calls:
                    await on_tool_call(c)
            outcomes = await _run_calls(calls, offered, run_tool, tool_timeout_s, tool_output_chars)
            convo = [
                *convo,
                {"role": "assistant", "content": rnd.text or None, "tool_calls": [c.as_openai() for c in calls]},
                *({"role": "tool", "tool_call_id": c.id, "content": frame_tool_output(c.name, o.text, error=o.error)}
                  for c, o in zip(calls, outcomes, strict=True)),
            ]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        return self._finish(alias, rounds, latency_ms, tool_calls=tuple(made))

    async def _recall_in_process(
        self, alias: str, messages: list[dict], on_delta: Callable[[str], Awaitable[None]] | None,
        stop: anyio.Event | None = None,
    ) -> Completion:
        """The built-in offline model, answered in process: the same answer litellm's ``kith``
        provider gives (it stays registered for fallback chains), without the router's per-call
        overhead (~10 ms), which dominated offline turns."""
        t0 = time.perf_counter()
        text = recall_model.answer(messages)
        stopped = False
        if on_delta is not None:
            said: list[str] = []
            for piece in recall_model.pieces(text):
                if stop is not None and stop.is_set():
                    stopped, text = True, "".join(said)
                    break
                said.append(piece)
                await on_delta(piece)
        prompt_tokens = recall_model.estimate_messages_tokens(messages)
        return Completion(
            text=text, model=alias, litellm_model=recall_model.MODEL, prompt_tokens=prompt_tokens,
            completion_tokens=recall_model.estimate_tokens(text), cost_usd=0.0,
            latency_ms=(time.perf_counter() - t0) * 1000.0, fell_back=False, stopped=stopped,
        )

    async def _plain(self, alias: str, kwargs: dict[str, Any], router: Router) -> _Round:
        try:
            resp = await router.acompletion(**kwargs)
        except Exception as e:
            raise self._failed(alias, e) from e
        choices = getattr(resp, "choices", None) or []
        message = choices[0].message if choices else None
        text = _text_of(getattr(message, "content", None))
        calls = [_tool_call(getattr(tc, "id", None), getattr(tc, "function", None))
                 for tc in getattr(message, "tool_calls", None) or []]
        return _Round(text, calls, getattr(resp, "usage", None), dict(getattr(resp, "_hidden_params", None) or {}))

    async def _stream(self, alias: str, kwargs: dict[str, Any], on_delta: Callable[[str], Awaitable[None]],
                      router: Router, stop: anyio.Event | None = None) -> _Round:
        try:
            stream = await router.acompletion(**kwargs, stream=True, stream_options={"include_usage": True})
        except Exception as e:
            raise self._failed(alias, e) from e
        parts: list[str] = []
        pending: dict[int, list[str]] = {}  # index → [id, name, arguments so far], in arrival order
        usage = None
        stopped = False
        iterator = stream.__aiter__()
        try:
            while True:
                if stop is not None and stop.is_set():
                    stopped = True  # closed below; the provider's usage (sent last) is not awaited
                    log.info("LLM %s: generation stopped by the user after %d chunks", alias, len(parts))
                    break
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as e:
                    raise self._failed(alias, e, delivered=len(parts)) from e
                if chunk is None:
                    continue
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in getattr(chunk, "choices", None) or []:
                    delta = getattr(choice, "delta", None)
                    if delta is None:
                        continue
                    for tc in getattr(delta, "tool_calls", None) or []:
                        _accumulate(pending, tc)
                    text = _text_of(getattr(delta, "content", None))
                    if text:
                        parts.append(text)
                        await on_delta(text)  # the caller's exception is not the provider's: not translated
        finally:
            await self._close(stream)
        calls = [ToolCall.parse(tid, name, args) for tid, name, args in pending.values()]
        return _Round("".join(parts), [] if stopped else calls, usage, dict(getattr(stream, "_hidden_params", None) or {}),
                      stopped=stopped)

    @staticmethod
    async def _close(stream: Any) -> None:
        aclose = getattr(stream, "aclose", None)
        if aclose is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await aclose()
            except Exception:
                log.debug("closing the stream failed", exc_info=True)

    def _failed(self, alias: str, e: BaseException, *, delivered: int = 0) -> ProviderError:
        where = self._where(alias) + (f" after {delivered} streamed chunks" if delivered else "")
        err = translate_error(e, where)
        log.info("LLM call failed: %s", err)
        return err

    def _finish(self, alias: str, rounds: Sequence[tuple[list[dict], _Round]], latency_ms: float,
                tool_calls: tuple[ToolCall, ...] = ()) -> Completion:
        """The Completion of one or more rounds (each with the messages it was sent): the last round
        names the model; tokens and cost are summed (cost None when any round's is unknown)."""
        prompt_tokens = completion_tokens = 0
        cost: float | None = 0.0
        fell_back = False
        answered, litellm_model = alias, self._models[alias].model
        for messages, rnd in rounds:
            headers = rnd.hidden.get("additional_headers") or {}
            group = headers.get("x-litellm-model-group")
            answered = group if isinstance(group, str) and group in self._models else alias
            litellm_model = str(rnd.hidden.get("litellm_model_name") or self._models[answered].model)
            counts = _usage_ints(rnd.usage)
            if counts is None or counts == (0, 0):
                written = rnd.text + "".join(c.name + c.arguments for c in rnd.calls)
                counts = (estimate_messages_tokens(messages), estimate_tokens(written))
            prompt_tokens += counts[0]
            completion_tokens += counts[1]
            round_cost = _cost(litellm_model, *counts)
            cost = None if cost is None or round_cost is None else cost + round_cost
            if answered != alias:
                fell_back = True
                log.info("LLM %s answered for %s (fallback)", answered, alias)
        return Completion(
            text=ROUND_SEPARATOR.join(r.text for _, r in rounds if r.text),
            model=answered,
            litellm_model=litellm_model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_ms=latency_ms,
            fell_back=fell_back,
            tool_calls=tool_calls,
            stopped=any(r.stopped for _, r in rounds),
        )

    async def aclose(self) -> None:
        """Close the HTTP clients litellm cached for the running event loop (call at shutdown).

        litellm keeps one SDK client per provider/key/event loop in a process-wide cache; without this
        their sockets stay open until the process exits. Calls after ``aclose`` still work (new clients).
        """
        suffix = f"-{id(asyncio.get_running_loop())}"
        cache = litellm.in_memory_llm_clients_cache
        for key in [k for k in list(cache.cache_dict) if str(k).endswith(suffix)]:
            client = cache.cache_dict.get(key)
            cache.delete_cache(key)
            for name in ("aclose", "close"):
                fn = getattr(client, name, None)
                if fn is None:
                    continue
                with anyio.CancelScope(shield=True):
                    try:
                        result = fn()
                        if hasattr(result, "__await__"):
                            await result
                    except Exception:
                        log.debug("closing a litellm client failed", exc_info=True)
                break

    async def ping(self, alias: str) -> tuple[bool, str]:
        """Is ``alias`` reachable? A 1-token completion, no retries, no fallbacks, timeout
        min(10 s, timeout_s). Returns ``(ok, detail)``; never raises for a provider problem.
        ``kith/*`` models are offline and always reachable; an unknown alias is ``(False, …)``."""
        if alias not in self._models:
            return False, f"model alias {alias!r} is not configured"
        spec = self._models[alias]
        if spec.model.startswith(f"{recall_model.PROVIDER}/"):
            return True, "built-in offline model"
        timeout = min(PING_TIMEOUT_S, spec.timeout_s)
        async with self._limiter:
            t0 = time.perf_counter()
            try:
                await self._router.acompletion(
                    model=alias,
                    messages=[{"role": "user", "content": "ping"}],
                    max_tokens=1,
                    timeout=timeout,
                    num_retries=0,
                    disable_fallbacks=True,
                )
            except Exception as e:
                err = translate_error(e, self._where(alias))
                return False, f"{err.user_message} ({type(err).__name__}: {error_detail(e)})"
            ms = (time.perf_counter() - t0) * 1000.0
        return True, f"answered in {ms:.0f} ms"
