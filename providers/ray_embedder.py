"""Bulk embedding on Ray workers (``scale_out.engine: ray``): the indexer's embedding runs on a pool
of Ray actors — on this machine, or on any machine that joined the Ray cluster.

Why this split (docs/scaling.md): embedding every message is over half of the bot's CPU per message,
and the first resource a single machine runs out of; appending the vectors to LanceDB is a small
part. So the workers embed — a pure function, texts in, float32 vectors out — and the bot keeps the
single writer of vector memory. That makes the guarantees simple:

- **nothing lost**: an actor killed mid-call (``kill -9``, a lost node) is restarted by Ray and its
  calls are run again (``max_restarts=-1``, ``max_task_retries=-1``);
- **nothing twice**: a call run twice returns the same vectors, and only the bot appends them, once;
- **per-chat order**: ``embed`` returns its vectors in the order of its texts whatever order the
  workers ran in (Ray runs a restarted actor's retried calls in any order), and the indexer appends
  one batch after the other.

Recall queries are not sent here: a user waits for those, and the local model answers one in ~3 ms.
Needs ``pip install 'kith[ray]'``; Ray is imported only when this is configured.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from .embedder import BULK_CHARS, DIM, MAX_CHARS, Embedder, length_order, load_encoder, model_name_of
from .errors import EmbeddingError

__all__ = ["EmbedWorker", "RayEmbedder"]

log = logging.getLogger(__name__)


class EmbedWorker:
    """One Ray actor: the embedding model, loaded once. ``encode`` is a pure function."""

    def __init__(self, backend: str, precision: str, model_path: str | None, cache_dir: str | None,
                 threads: int | None, max_batch: int) -> None:
        encoder = load_encoder(backend, precision=precision, model_path=model_path,
                               cache_dir=Path(cache_dir) if cache_dir else None, threads=threads)
        self._embedder = Embedder(encoder, backend=backend, model_path=model_path)
        self._max_batch = max(1, max_batch)

    def info(self) -> tuple[int, int, str]:
        """(pid, vector width, backend) of this worker."""
        return os.getpid(), self._embedder.dim, self._embedder.backend

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32[len(texts), dim], L2-normalised, in the order of ``texts``. Sorted by length and
        split into model calls of ≤ max_batch texts and ≤ BULK_CHARS characters (less padding)."""
        if not texts:
            return np.zeros((0, self._embedder.dim), dtype=np.float32)
        order = length_order(texts)
        out = np.empty((len(texts), self._embedder.dim), dtype=np.float32)
        start = 0
        while start < len(order):
            end, chars = start, 0
            while end < len(order) and end - start < self._max_batch and (end == start or chars < BULK_CHARS):
                chars += min(len(texts[order[end]]), MAX_CHARS)
                end += 1
            idx = order[start:end]
            out[idx] = self._embedder.encode_sync([texts[i] for i in idx])
            start = end
        return out


class RayEmbedder:
    """The indexer's ``embed`` on ``workers`` Ray actors (see the module docstring).

    address: None starts a local Ray cluster (stopped on exit); ``"auto"`` or ``"ray://host:10001"``
    joins a running one. threads_per_worker: CPU threads each worker's model calls use (None: this
    machine's cores / workers). chunk: texts per remote call (a batch is split across the workers).
    backend, precision, model_path, cache_dir, max_batch: as ``Embedder``.

    ``embed(texts)`` → float32[len(texts), dim]; raises EmbeddingError when the workers fail for good
    (e.g. the model cannot load). Counters: ``calls`` (remote calls), ``texts``.
    """

    def __init__(self, workers: int = 2, *, address: str | None = None, threads_per_worker: int | None = None,
                 chunk: int = 128, backend: str = "openvino", precision: str = "auto", model_path: str | None = None,
                 cache_dir: Path | None = None, max_batch: int = 32) -> None:
        self.workers = max(1, workers)
        self.address = address
        self.threads = threads_per_worker or max(1, (os.cpu_count() or 1) // self.workers)
        self.chunk = max(1, chunk)
        self._args = (backend, precision, model_path, str(cache_dir) if cache_dir else None, self.threads, max_batch)
        self._model_path = model_path
        self._actors: list[Any] = []
        self._started_ray = False
        self._dim = DIM
        self._backend = backend
        self._next = 0
        self.calls = 0
        self.texts = 0

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_name(self) -> str:
        return model_name_of(self._args[0], self._model_path)

    @property
    def backend(self) -> str:
        return f"ray:{self._backend}×{self.workers}"

    async def __aenter__(self) -> RayEmbedder:
        await anyio.to_thread.run_sync(self._start)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stop)

    def _start(self) -> None:
        try:
            import ray  # deferred: ray (~400 ms), only with scale_out.engine ray
        except ImportError as exc:
            raise EmbeddingError("scale_out.engine is ray but Ray is not installed: pip install 'kith[ray]'") from exc
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no telemetry, no network
        # Ray starts its processes with fork + exec (subprocess), which lancedb's fork warning does not concern
        warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
        if not ray.is_initialized():
            if self.address is None:
                os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local cluster of this process only
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False,
                         object_store_memory=128 * 2**20, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            self._started_ray = True
        remote = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=-1)(EmbedWorker)
        self._actors = [remote.remote(*self._args) for _ in range(self.workers)]
        try:
            infos = ray.get([a.info.remote() for a in self._actors], timeout=600)
        except Exception as exc:
            self._stop()
            raise EmbeddingError(f"the Ray embedding workers did not start: {exc}") from exc
        self._dim = int(infos[0][1])
        self._backend = str(infos[0][2])
        log.info("embedding on %d Ray workers (pids %s, %d threads each)", self.workers,
                 ", ".join(str(i[0]) for i in infos), self.threads)

    def _stop(self) -> None:
        import ray  # deferred: ray (~400 ms), only with scale_out.engine ray

        for a in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self._actors = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    async def worker_pids(self) -> list[int]:
        """The process ids of the workers now (a restarted worker has a new one)."""

        refs = [a.info.remote() for a in self._actors]
        return [int((await r)[0]) for r in refs]

    async def embed(self, texts: Sequence[str], *, urgent: bool = False) -> np.ndarray:
        """Embed ``texts`` on the workers: float32[n, dim], L2-normalised, in the order of ``texts``."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        if not self._actors:
            raise EmbeddingError("the Ray embedder is not started")
        # sorted by length before it is cut into calls: each call then holds texts of similar length,
        # and the model pads every text of a call to its longest (as Embedder does for bulk work)
        order = length_order(texts)
        ordered = [texts[i] for i in order]
        per_worker = -(-len(ordered) // self.workers)  # every worker gets a share of a batch
        size = max(1, min(self.chunk, per_worker))
        refs = []
        for start in range(0, len(ordered), size):
            actor = self._actors[self._next % len(self._actors)]
            self._next += 1
            refs.append(actor.encode.remote(ordered[start:start + size]))
        self.calls += len(refs)
        self.texts += len(texts)
        try:
            parts = [await r for r in refs]  # in submission order, whatever order they ran in
        except Exception as exc:
            raise EmbeddingError(f"embedding on the Ray workers failed: {exc}") from exc
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        out[order] = np.vstack(parts)  # back to the caller's order
        return out

    async def embed_one(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]
