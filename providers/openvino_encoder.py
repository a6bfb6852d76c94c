"""The embedding model on OpenVINO: the sentence-transformers pipeline (transformer → pooling →
normalisation) converted once to an OpenVINO model, then run without torch.

Why: on this machine's CPU (AVX512-BF16/AMX) OpenVINO runs the model in bfloat16 with fused
kernels: all-MiniLM-L6-v2 encodes #ubuntu messages ~1.4× faster than torch's bf16 autocast and
~2× faster than torch fp32, a single query in ~3 ms instead of ~5–7 ms, the process loads in
~0.6 s instead of ~6 s (no torch import) and holds ~250 MiB instead of ~540. Vectors agree with
fp32 torch (cosine ≥ 0.9998 per text). Where the CPU has no native bf16, OpenVINO runs fp32.

The conversion needs torch and sentence-transformers (both installed) and the local weights; it
takes ~10 s (mostly loading torch) and happens once per model file: the result is cached under
``cache_root()`` (``<data dir>/cache`` for the bot) in a directory named by a key of the weights' paths, sizes and mtimes, the
OpenVINO version and ``EXPORT_VERSION``, written beside and renamed into place (a concurrent or
interrupted build never leaves a half-written model in use). The cached directory holds
``model.xml``/``model.bin`` (fp32 weights), ``tokenizer.json`` (truncation at the model's
``max_seq_length``) and ``manifest.json`` (the probe texts' fp32 vectors, used to check the
compiled precision at every load).

Inputs of the converted model: ``input_ids``, ``attention_mask`` (int64[batch, tokens]); output:
the sentence embedding float32[batch, 384], L2-normalised.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import EmbeddingError
from .torch_encoder import default_model_path, model_name  # noqa: F401  (re-exported; importing it loads no torch)

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the conversion below changes what is written
BATCH = 32  # texts per inference call inside encode_batch (each call pads to its longest text)
CACHE_ENV = "KITH_CACHE_DIR"
_PROBES = ("hi", "When did Caroline go to the LGBTQ support group after moving?",
           "The backup server in rack 12 was replaced by a Dell R740 on 3 March; ticket 4711 tracks it. " * 6,
           "word " * 400)
_EXPORT_MIN_COSINE = 0.9999  # the converted model (fp32) against sentence-transformers' encode
_REDUCED_MIN_COSINE = 0.999  # bf16 inference against the fp32 probe vectors, else the model is compiled fp32


def cache_root(default: Path | None = None) -> Path:
    """Where converted models are cached: ``$KITH_CACHE_DIR``, else ``default`` (the bot passes
    ``<data dir>/cache``), else ``$XDG_CACHE_HOME/kith``, else ``~/.cache/kith``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if default is not None:
        return default
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kith"


def cache_key(model_path: str | Path) -> str:
    """A key of the model directory (its resolved path; each file's relative path, size and mtime),
    the OpenVINO version and ``EXPORT_VERSION``: 16 hex digits. Cheap (no file is read)."""
    import openvino

    root = Path(model_path)
    h = hashlib.sha256(f"kith-ov-{EXPORT_VERSION}-{openvino.__version__}-{root.resolve()}".encode())
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            h.update(f"{p.relative_to(root).as_posix()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def export(model_path: str, out_dir: Path) -> None:
    """Convert the sentence-transformers model at ``model_path`` into ``out_dir`` (model.xml/.bin,
    tokenizer.json, manifest.json). Blocking, ~10 s; imports torch. raises EmbeddingError when the
    model cannot be loaded, converted, or the converted model disagrees with ``encode``."""
    try:
        from transformers.utils import logging as hf_logging

        from .torch_encoder import load_model

        # the conversion probes deprecated attributes and config keys: their warnings are noise here
        st_log = logging.getLogger("sentence_transformers")
        was = hf_logging.get_verbosity(), st_log.level
        hf_logging.set_verbosity_error()
        st_log.setLevel(logging.ERROR)
        try:
            st = load_model(model_path)
            _convert(st, out_dir, model_path)
        finally:
            hf_logging.set_verbosity(was[0])
            st_log.setLevel(was[1])
    except EmbeddingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of the conversion is the same failure
        raise EmbeddingError(f"cannot convert {model_path} to OpenVINO: {exc}") from exc


def _convert(st, out_dir: Path, model_path: str) -> None:
    """Trace ``st`` into OpenVINO, save it with its tokenizer and probe vectors, check it."""
    import warnings

    import openvino as ov
    import torch

    tokenizer = st.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise EmbeddingError(f"{model_path}: the model has no fast tokenizer (tokenizer.json); use embed_backend: torch")
    max_len = int(st.max_seq_length or 256)

    class Pipeline(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            features = {"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": torch.zeros_like(input_ids)}
            return self.model(features)["sentence_embedding"]

    # traced with a padded pair of texts, so the padding branches are the ones recorded
    example = tokenizer(["a short example", "a somewhat longer example text to pad against"],
                        padding=True, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(Pipeline(st).eval(), example_input=(example["input_ids"], example["attention_mask"]),
                                    input=[ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])])
    for port, name in zip(ov_model.inputs, ("input_ids", "attention_mask")):
        port.get_tensor().set_names({name})
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
    fast = tokenizer.backend_tokenizer
    fast.enable_truncation(max_len)
    fast.no_padding()
    (out_dir / "tokenizer.json").write_text(fast.to_str(), encoding="utf-8")
    want = st.encode(list(_PROBES), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    (out_dir / "manifest.json").write_text(json.dumps({
        "export_version": EXPORT_VERSION, "openvino": ov.__version__, "model_path": str(model_path),
        "max_seq_length": max_len, "dim": int(want.shape[1]), "probes": list(_PROBES),
        "probe_vectors": np.asarray(want, np.float32).round(7).tolist(),
    }), encoding="utf-8")
    enc = OpenVINOEncoder(out_dir, precision="fp32")
    cos = float((enc.encode_batch(list(_PROBES)) * np.asarray(want, np.float32)).sum(axis=1).min())
    if cos < _EXPORT_MIN_COSINE:
        raise EmbeddingError(f"the OpenVINO conversion of {model_path} disagrees with sentence-transformers "
                             f"(cosine {cos:.6f}); use embed_backend: torch")


def _drop_stale_builds(models: Path, older_than_s: float = 3600) -> None:
    """Remove half-built conversions an interrupted process left (``.building-*`` older than an hour)."""
    import time

    for d in models.glob(".building-*") if models.is_dir() else ():
        try:
            if time.time() - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def converted(model_path: str | None = None, cache_dir: Path | None = None) -> Path:
    """The cached OpenVINO conversion of ``model_path`` (default: all-MiniLM-L6-v2), converting it
    first when it is not cached (blocking, ~10 s, logged). raises EmbeddingError."""
    model_path = model_path or default_model_path()
    root = cache_root(cache_dir)
    try:
        target = root / "models" / f"{model_name(model_path)}-openvino-{cache_key(model_path)}"
    except (OSError, ImportError) as exc:
        raise EmbeddingError(f"cannot use OpenVINO for {model_path}: {exc}") from exc
    if (target / "manifest.json").is_file():
        return target
    log.warning("embedding model: converting %s to OpenVINO once (about 10 s) into %s", model_name(model_path), target)
    _drop_stale_builds(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    except OSError as exc:
        raise EmbeddingError(f"cannot write the OpenVINO model cache {target.parent}: {exc}") from exc
    try:
        export(model_path, tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "manifest.json").is_file():  # not a concurrent build that won the race
                raise
    except OSError as exc:
        raise EmbeddingError(f"cannot write the OpenVINO model cache {target}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class OpenVINOEncoder:
    """A converted sentence-transformers model compiled for the CPU (see the module docstring).

    ``encode_batch(texts) -> float32[n, dim]`` and ``encode_one(text) -> float32[dim]``, both
    L2-normalised; blocking (call from a worker thread); one inference at a time (a lock).
    precision: ``"auto"`` lets OpenVINO pick (bfloat16 on CPUs with native bf16) and falls back to
    fp32 if the probe texts' vectors then differ from fp32 (cosine < 0.999); ``"fp32"`` always.
    ``self.precision`` is what runs: ``"bf16"``, ``"fp16"`` (CPUs where OpenVINO defaults to it) or
    ``"fp32"``; a reduced precision is checked against fp32 on the probe texts. raises EmbeddingError.
    """

    backend = "openvino"

    def __init__(self, model_dir: Path, *, precision: str = "auto", threads: int | None = None) -> None:
        self._threads = threads  # None: every core
        self._lock = threading.Lock()
        try:
            import openvino as ov
            from tokenizers import Tokenizer

            manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8")) \
                if (model_dir / "manifest.json").is_file() else None
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._tokenizer.no_padding()
            self._core = ov.Core()
            self._model = self._core.read_model(str(model_dir / "model.xml"))
            self._compile("f32" if precision == "fp32" else None)
            self.dim = int(self._compiled.outputs[0].get_partial_shape()[1].get_length())
            if self.precision != "fp32" and manifest is not None:
                want = np.asarray(manifest["probe_vectors"], np.float32)
                cos = float((self.encode_batch(manifest["probes"]) * want).sum(axis=1).min())
                if cos < _REDUCED_MIN_COSINE:
                    log.info("embedding model: %s inference disagrees with fp32 (cosine %.5f); using fp32", self.precision, cos)
                    self._compile("f32")
        except Exception as exc:  # noqa: BLE001 - a missing, truncated or foreign model: the caller decides
            raise EmbeddingError(f"cannot load the OpenVINO embedding model from {model_dir}: {exc}") from exc

    def _compile(self, hint: str | None) -> None:
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}  # one stream using every core: one call at a time
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        self._compiled = self._core.compile_model(self._model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        import openvino as ov

        got = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = {ov.Type.bf16: "bf16", ov.Type.f16: "fp16"}.get(got, "fp32")

    def _infer(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        n = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), n), np.int64)
        mask = np.zeros((len(encodings), n), np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        with self._lock:
            out = self._request.infer({"input_ids": ids, "attention_mask": mask})
            vecs = np.array(out[self._compiled.outputs[0]], dtype=np.float32)  # a copy: the request reuses its buffer
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(min=1e-12)  # re-normalised in fp32

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim], L2-normalised, in the caller's order; texts are sorted by length
        and run ``BATCH`` at a time. Empty strings are encoded as a space."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        texts = [t or " " for t in texts]
        order = np.argsort(np.fromiter((len(t) for t in texts), np.int64, len(texts)), kind="stable")
        out = np.empty((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), BATCH):
            idx = order[start : start + BATCH]
            out[idx] = self._infer([texts[i] for i in idx])
        return out

    def encode_one(self, text: str) -> np.ndarray:
        """float32[dim], L2-normalised."""
        return self._infer([text or " "])[0]


def load(model_path: str | None = None, *, precision: str = "auto", cache_dir: Path | None = None,
         threads: int | None = None) -> OpenVINOEncoder:
    """The OpenVINO encoder of ``model_path`` (default all-MiniLM-L6-v2), converting it on first
    use. Blocking. raises EmbeddingError (OpenVINO missing, conversion failed, cache not writable)."""
    model_dir = converted(model_path, cache_dir)
    try:
        return OpenVINOEncoder(model_dir, precision=precision, threads=threads)
    except EmbeddingError as exc:  # a damaged cache (a truncated model.bin, a deleted file): convert again, once
        log.warning("embedding model: %s; converting it again", exc)
        shutil.rmtree(model_dir, ignore_errors=True)
        return OpenVINOEncoder(converted(model_path, cache_dir), precision=precision, threads=threads)
