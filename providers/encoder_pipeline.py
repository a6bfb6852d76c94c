"""What the converted embedding models share (``providers.openvino_encoder``, ``providers.int8_encoder``):
the traced sentence-transformers pipeline, the tokenizer and probe vectors written beside a
conversion, and how texts are cut into inference calls by token length (``plan_calls``).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .errors import EmbeddingError
from .torch_encoder import load_model

__all__ = ["BATCH", "CALL_OVERHEAD_TOKENS", "EXPORT_VERSION", "PROBES", "TracedPipeline", "encode_planned", "loaded_st",
           "padded", "plan_calls", "write_tokenizer_and_probes"]

EXPORT_VERSION = 1  # bump when the conversion changes what is written
BATCH = 32  # texts per inference call inside encode_batch (each call pads to its longest text)
CALL_OVERHEAD_TOKENS = 16  # what one inference call costs beyond its padded tokens, in tokens (for ``plan_calls``)
PROBES = ("hi", "When did Caroline go to the LGBTQ support group after moving?",
           "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 6,
           "word " * 400)


def plan_calls(lengths: Sequence[int], max_batch: int = BATCH, overhead: int = CALL_OVERHEAD_TOKENS) -> list[tuple[int, int]]:
    """Cut texts of ascending token ``lengths`` into inference calls ``[(start, end), …]`` of at most
    ``max_batch`` texts that cost the fewest padded tokens plus ``overhead`` per call (a call pads
    every text to its longest): a live window of 25 texts of 3 to 200 tokens becomes a few calls
    of similar lengths rather than one padded to 200. Dynamic programming, O(n · max_batch)."""
    n = len(lengths)
    if n == 0:
        return []
    best = [0.0] + [float("inf")] * n  # best[j]: the cheapest plan of the first j texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[j - 1]
        for i in range(max(0, j - max_batch), j):
            cost = best[i] + overhead + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out = []
    j = n
    while j > 0:
        out.append((cut[j], j))
        j = cut[j]
    return out[::-1]


def padded(encodings) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64[n, longest]) of tokenizer encodings."""
    n = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), n), np.int64)
    mask = np.zeros((len(encodings), n), np.int64)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def encode_planned(tokenizer, texts: Sequence[str], dim: int, infer: Callable[[list, int], np.ndarray],
                   split_at: int | None = None) -> np.ndarray:
    """Tokenize ``texts``, sort them by token count, run ``infer(encodings, longest)`` on each call of
    ``plan_calls`` (no call holds texts on both sides of ``split_at`` tokens) and return
    float32[len(texts), dim] L2-normalised rows in the caller's order."""
    encodings = tokenizer.encode_batch([t or " " for t in texts])
    order = np.argsort(np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings)), kind="stable")
    lengths = [len(encodings[i].ids) for i in order]
    out = np.empty((len(texts), dim), np.float32)
    cut = len(lengths) if split_at is None else next((k for k, n in enumerate(lengths) if n >= split_at), len(lengths))
    calls = plan_calls(lengths[:cut]) + [(a + cut, b + cut) for a, b in plan_calls(lengths[cut:])]
    for a, b in calls:
        idx = order[a:b]
        vecs = np.asarray(infer([encodings[i] for i in idx], lengths[b - 1]), np.float32)
        out[idx] = vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)  # re-normalised in fp32
    return out


class TracedPipeline:
    """Factory of the traced module: (input_ids, attention_mask) → the sentence embedding."""

    @staticmethod
    def of(st):
        import torch  # deferred: torch (~1.3 s)

        class Pipeline(torch.nn.Module):
            def __init__(self, model) -> None:
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                features = {"input_ids": input_ids, "attention_mask": attention_mask,
                            "token_type_ids": torch.zeros_like(input_ids)}
                return self.model(features)["sentence_embedding"]

        return Pipeline(st).eval()


def loaded_st(model_path: str):
    """The sentence-transformers model at ``model_path``, loaded quietly (the conversions probe
    deprecated attributes and config keys: their warnings are noise here). raises EmbeddingError."""
    from transformers.utils import logging as hf_logging  # deferred: transformers (~0.7 s)

    st_log = logging.getLogger("sentence_transformers")
    was = hf_logging.get_verbosity(), st_log.level
    hf_logging.set_verbosity_error()
    st_log.setLevel(logging.ERROR)
    try:
        st = load_model(model_path)
    finally:
        hf_logging.set_verbosity(was[0])
        st_log.setLevel(was[1])
    if not getattr(st.tokenizer, "is_fast", False):
        raise EmbeddingError(f"{model_path}: the model has no fast tokenizer (tokenizer.json); use embed_backend: torch")
    return st


def write_tokenizer_and_probes(st, out_dir: Path, model_path: str, **extra) -> np.ndarray:
    """``tokenizer.json`` (truncation at the model's ``max_seq_length``) and ``manifest.json`` (the
    probe texts' fp32 vectors from sentence-transformers, and ``extra``) into ``out_dir``; returns
    the probe vectors."""
    max_len = int(st.max_seq_length or 256)
    fast = st.tokenizer.backend_tokenizer
    fast.enable_truncation(max_len)
    fast.no_padding()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(fast.to_str(), encoding="utf-8")
    want = np.asarray(st.encode(list(PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False), np.float32)
    (out_dir / "manifest.json").write_text(json.dumps({
        "export_version": EXPORT_VERSION, "model_path": str(model_path), "max_seq_length": max_len,
        "dim": int(want.shape[1]), "probes": list(PROBES), "probe_vectors": want.round(7).tolist(), **extra,
    }), encoding="utf-8")
    return want
