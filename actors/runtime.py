"""Wiring: the shared services and the supervisor, owned by one task group (docs/design.md §2).

``open_memory`` opens the stores, the embedder and the indexer (enough for ``kith import`` and
``kith memory``); ``open_runtime`` adds the LLM and the supervisor for transports that answer.
Leaving either context drains in the right order: actors first, then the indexer, then the stores.
"""
from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

import i18n
from config.models import Config, StorageLimits
from memory.cleanup import CleanupResult, Janitor
from memory.documents import DocumentReader
from memory.errors import EmbeddingModelChanged
from memory.indexer import Indexer
from memory.maintenance import GapFiller
from memory.service import Memory
from memory.vectors import VectorMemory
from providers import language
from providers.embedder import BulkEmbedder, Embedder
from providers.keys import KeyVault, cipher_from_env
from providers.ray_embedder import RayEmbedder
from tiers import Admission, effective_tier, open_admission
from tiers.budget import Budget, BudgetNotice, notice_text

from .errors import SupervisorClosed
from .events import CapacityCleaned
from .handlers import NO_HANDLERS, Handlers, Plugins
from .outbox import Outbox
from .services import Actors, BotIdentity, Services, TurnReport, utc_now
from .settings import UserSettings
from .stores import CACHE_DIR, DB_FILE, VECTORS_DIR, Stores, dialogue_store, open_stores, vector_location  # noqa: F401 - re-exported
from .supervisor import Supervisor

if TYPE_CHECKING:  # types only (each imports a heavy library: litellm, PIL)
    from providers.images import ImageGenerator
    from providers.llm import LLM
    from providers.transcription import Transcriber

__all__ = ["Runtime", "frozen_startup_heap", "media_providers", "open_memory", "open_runtime", "storage_limits",
           "tell_chats_cleaned", "tell_owners_budget"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What ``open_runtime`` yields. plugins: the opened plugins (``Handlers.open_plugins``; None
    without the chat features or with every plugin off). background: what the features' background
    work yielded (``Handlers.open_background``: the memory entries' learner, or None)."""

    config: Config
    services: Services
    supervisor: Supervisor
    plugins: Plugins | None = None
    background: Any = None

    @property
    def memory(self) -> Memory:
        return self.services.memory


@asynccontextmanager
async def open_memory(config: Config, data_dir: Path, *, model: Any = None, fill_gaps: bool = False,
                      model_change: bool = False) -> AsyncIterator[Memory]:
    """Open the dialogue store (``storage.dialogue``: ``data_dir/kith.duckdb`` by default), LanceDB (``data_dir/memory/``), the embedder and indexer.

    model: an already loaded SentenceTransformer or ``providers.embedder.Encoder`` (tests share one);
    None loads ``memory.embed_backend`` (the conversion is cached once per machine in the user's cache,
    ``providers.openvino_encoder.cache_root()``, shared by every data dir; a data dir's old ``cache/`` is ignored).
    fill_gaps: check vector memory against the dialogue store in the background and embed what a
    crash left out (``memory.maintenance.GapFiller``, then on ``Memory.gap_filler``).
    model_change: open vector memory even when it holds another embedding model's vectors (what
    ``kith memory reindex`` does next); otherwise that raises memory.vectors.EmbeddingModelChanged.
    raises memory.errors.StoreLocked when a running bot holds the database.
    """
    mem = config.settings.memory
    await anyio.Path(data_dir).mkdir(parents=True, exist_ok=True)
    # the language detector's model (~0.7 s of one core) loads beside the stores and the embedding
    # model, not inside the first message's indexing or the first answer. Its task group is closed
    # without the body's exception (the task never raises), so that one propagates unwrapped.
    warm_stack = AsyncExitStack()
    warming = await warm_stack.enter_async_context(anyio.create_task_group())
    warmed = anyio.Event()
    warming.start_soon(_warm_language, warmed, name="warm-language")
    try:
        async with AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                dialogue_store(config, data_dir)
            )
            embedder = await stack.enter_async_context(
                Embedder(model, backend=mem.embed_backend, max_batch=mem.embed_batch, max_wait_s=mem.embed_wait_ms / 1000,
                         precision=mem.embed_precision,
                         model_path=None if mem.embedding_model is None else str(mem.embedding_model)))
            vectors = await stack.enter_async_context(VectorMemory(
                vector_location(config, data_dir), hot_rows=mem.hot_rows, dim=embedder.dim, embedding_model=embedder.model_name))
            if (vectors.embedding_model, vectors.dim) != (embedder.model_name, embedder.dim) and not model_change:
                raise EmbeddingModelChanged(vectors.location, (vectors.embedding_model, vectors.dim), (embedder.model_name, embedder.dim))
            bulk: BulkEmbedder = embedder  # the indexer's embedding: here, or on the workers of scale_out.engine
            scale = config.settings.scale_out
            if scale.engine == "ray":
                bulk = await stack.enter_async_context(RayEmbedder(
                    scale.workers, address=scale.address, threads_per_worker=scale.threads_per_worker,
                    backend=mem.embed_backend, precision=mem.embed_precision,
                    model_path=None if mem.embedding_model is None else str(mem.embedding_model), max_batch=mem.embed_batch))
                if (bulk.model_name, bulk.dim) != (embedder.model_name, embedder.dim):
                    raise EmbeddingModelChanged(vectors.location, (bulk.model_name, bulk.dim), (embedder.model_name, embedder.dim))
            indexer = await stack.enter_async_context(Indexer(vectors, bulk, optimize_every=mem.optimize_every))
            reader = await stack.enter_async_context(DocumentReader())
            memory = Memory(store, vectors, indexer, embedder, reader)
            memory.embedding_languages = mem.model_languages(embedder.backend)
            if fill_gaps:
                filler = await stack.enter_async_context(GapFiller(memory))
                memory.gap_filler = filler
            await warmed.wait()
            yield memory
    finally:
        await warm_stack.aclose()


async def _warm_language(done: anyio.Event) -> None:
    """``language.warm`` in a worker thread; a failure is logged (the first detection would load it again)."""
    try:
        await anyio.to_thread.run_sync(language.warm)
    except Exception:
        log.warning("could not load the language detector ahead of use", exc_info=True)
    finally:
        done.set()


@asynccontextmanager
async def open_runtime(
    config: Config,
    data_dir: Path,
    outbox: Outbox | Callable[[Memory], Outbox],
    *,
    model: Any = None,
    llm: LLM | None = None,
    bot: BotIdentity | None = None,
    on_turn: Callable[[TurnReport], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
    fill_gaps: bool = True,
    owners: Iterable[int] = (),
    handlers: Handlers = NO_HANDLERS,
) -> AsyncIterator[Runtime]:
    """Everything a transport needs to answer: memory, LLM and the supervisor of chat actors.

    outbox: the transport's Outbox, or a factory taking the opened Memory (for id allocation).
    llm: an ``providers.llm.LLM``; None builds one from ``config.settings.models``. The speech-to-text
    model (``transcription:``) and the image models (``image_models:``) are built from the config
    when set. fill_gaps: see ``open_memory`` (on by default: a start embeds what a crash left out).
    owners: user ids that own the bot besides ``telegram.owners`` (the host at the terminal): they get
    ``/admin`` and the tiers' ``owner_tier``. handlers: the chat features (``features.HANDLERS``; the
    runtime alone answers messages and nothing else — ``features.open_runtime`` passes them).
    """
    from providers.llm import LLM  # imports litellm (slow): only when answering

    async with open_memory(config, data_dir, model=model, fill_gaps=fill_gaps) as memory:
        own_llm = llm is None
        if llm is None:
            llm = LLM(config.settings.models, config.settings.llm)
        bot = bot or BotIdentity(0, config.settings.bot.name, config.settings.bot.username)
        admission = await open_admission(memory.store, config, clock)
        budget = admission.budget
        assert budget is not None
        box = outbox if isinstance(outbox, Outbox) else outbox(memory)
        transcriber, images = media_providers(config)
        keys = KeyVault(memory.store.keys, cipher_from_env())
        services: Services | None = None

        async def tell_cleaned(result: CleanupResult) -> None:
            if services is not None and services.supervisor is not None:
                await tell_chats_cleaned(services.supervisor, memory, result)

        try:
            async with Janitor(memory, storage_limits(admission, clock), config.tiers.memory.auto_cleanup, clock,
                               on_cleanup=tell_cleaned) as janitor:
                services = Services(config, memory, llm, bot, clock, admission, janitor, on_turn, transcriber, images, keys,
                                    owners=frozenset(config.settings.telegram.owners) | frozenset(owners))
                admission.subs.owners = services.owners
                async with handlers.open_plugins(services) as plugins, \
                        Supervisor(services, box, config.settings.actors, handlers=handlers, plugins=plugins) as supervisor:
                    services.supervisor = supervisor
                    async with _Background(tell_owners_budget, budget, box, services), \
                            handlers.open_background(services) as background:
                        yield Runtime(config, services, supervisor, plugins, background)
        finally:
            # LLMs a reload built (the current one and any it replaced) are ours to close too
            made_by_reload = [*services.retired_llms, services.llm] if services is not None else []
            for other in {id(x): x for x in made_by_reload if x is not llm}.values():
                await other.aclose()
            if own_llm:
                await llm.aclose()


class _Background:
    """Runs ``fn(*args)`` for as long as the context, in a task group this object owns; leaving
    cancels it. The body's own exception propagates as itself (it is not fed into the group)."""

    def __init__(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: object) -> None:
        self.fn, self.args = fn, args

    async def __aenter__(self) -> None:
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self.fn, *self.args)
            self._owner = stack.pop_all()

    async def __aexit__(self, *exc: object) -> None:
        self._tg.cancel_scope.cancel()
        await self._owner.aclose()


async def tell_owners_budget(budget: Budget, box: Outbox, services: Services) -> None:
    """Send each spending-cap notice (80 %, 100 % of a period's cap) to every owner in private, then
    store it as told (``Budget.told``); runs as long as the runtime."""
    while True:
        for notice in await budget.notices():
            await _tell_owners(notice, box, services)
            await budget.told(notice)


async def _tell_owners(notice: BudgetNotice, box: Outbox, services: Services) -> None:
    """Each owner in their own language (/settings language), else the bot's (``bot.language``)."""
    owners = services.owners
    if not owners:
        log.warning("budget: %s (no owners to tell: set telegram.owners)", notice_text(notice))
    for owner in sorted(owners):
        try:
            chosen = UserSettings.load(await services.memory.store.settings.user(owner), where=f"user {owner}").language
            with i18n.use(i18n.normalize(chosen) or services.config.settings.bot.language):
                text = notice_text(notice)
            await box.send(owner, text)
        except Exception as exc:
            log.warning("budget: owner %s not told: %s", owner, exc)


def media_providers(config: Config) -> tuple[Transcriber | None, ImageGenerator | None]:
    """``(Transcriber | None, ImageGenerator | None)`` from ``transcription:`` and ``image_models:``.
    raises providers.errors.ModelNotConfigured for a model litellm does not know."""
    settings = config.settings
    transcriber: Transcriber | None = None
    images: ImageGenerator | None = None
    if settings.transcription.model:
        # deferred: imports litellm (~2 s); `kith memory search` opens memory through this module without it
        from providers.transcription import Transcriber

        transcriber = Transcriber(settings.transcription)
    if settings.image_models:
        from providers.images import ImageGenerator  # deferred: imports litellm (~2 s), only when image generation is configured

        images = ImageGenerator(settings.image_models)
    return transcriber, images


def storage_limits(admission: Admission, clock: Callable[[], datetime]) -> Callable[[str, int], Coroutine[Any, Any, tuple[str, StorageLimits]]]:
    """``limits_of(scope, id) → (tier, StorageLimits)`` for the Janitor: a chat's limits come from the
    chat's own tier, a user's from the user's own tier (a premium user's messages in a free group
    count against the group's limits there, and against the user's premium limits overall)."""
    cfg = admission.cfg

    async def limits_of(scope: str, scope_id: int) -> tuple[str, StorageLimits]:
        sub = await admission.subs.get(scope, scope_id)
        tier = effective_tier(cfg, sub if scope == "user" else None, sub if scope == "chat" else None, clock())
        return tier, (cfg.tiers[tier].chat if scope == "chat" else cfg.tiers[tier].user)

    return limits_of


async def tell_chats_cleaned(supervisor: Actors, memory: Memory, result: CleanupResult) -> None:
    """Tell the chats a cleanup removed something from (``CapacityCleaned``): each chat of a chat's
    cleanup; for a user's, their private chat with the bot when there is one. Never waits for a
    full inbox (the notice is then skipped: ``/memory`` still shows the cleanup)."""
    if result.scope == "chat" or memory.store.knows_chat(result.scope_id):
        targets = {result.scope_id: result.records}
    else:
        return
    for chat_id, records in targets.items():
        try:
            if not await supervisor.offer(chat_id, CapacityCleaned(chat_id, tuple(records))):
                log.info("chat %s: inbox full; the cleanup notice is skipped", chat_id)
        except SupervisorClosed:  # shutting down: /memory still shows the cleanup
            return


@contextmanager
def frozen_startup_heap() -> Iterator[int]:
    """Exclude everything allocated so far (the embedding model, the libraries, the stores) from
    Python's cyclic garbage collector while the block runs; yields the number of objects frozen.

    Enter once, when a long-running process has finished starting. Without it every full collection
    re-scans the start-up heap (~0.9 M objects with torch and pyrogram loaded: ~0.3 s per pass on
    this machine, measured by ``benchmarks.telegram_dispatch``), stalling every chat at once.
    Start-up garbage is collected first; on exit the heap is unfrozen so shutdown frees it normally.
    """
    gc.collect()
    gc.freeze()
    try:
        yield gc.get_freeze_count()
    finally:
        gc.unfreeze()
