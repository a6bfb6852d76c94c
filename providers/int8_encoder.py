"""The embedding model in int8: ONNX Runtime's dynamic quantization of the exported
sentence-transformers pipeline (the ``int8`` precision of the ``openvino`` backend: converted once
per machine, no torch at run time; ``providers.openvino_encoder`` caches and loads it).

How: the pipeline (transformer → mean pooling → normalisation) is exported to ONNX (fp32) and its
linear layers' weights quantized to 8 bits per output channel (``quantize_dynamic``: unsigned
weights, activations quantized per call, so no calibration set is needed); the 6 most sensitive
of the 36 (``KEEP_FP32``) stay fp32. Texts of fewer than ``INT8_MIN_TOKENS`` word pieces run the
fp32 export instead: a short text's vector is the mean of a few tokens, so int8 noise moves it
most (cosine down to ~0.95 on #ubuntu one-word lines), and short texts cost little anyway.

Measured on the AMD EPYC (AVX2, no VNNI, 2 shared cores): ONNX Runtime int8 ~1.2× its own fp32
on document parts, but OpenVINO fp32 is faster still there (int8 ≈ 0.9× of it; ~1.2× on short
chat lines), so ``auto`` picks int8 only on CPUs with VNNI (``openvino_encoder.choose_precision``).
OpenVINO's own int8 (NNCF post-training quantization, calibrated on #ubuntu and Russian lines) ran
at 0.6-0.9× OpenVINO fp32 there and agreed less (cosine down to 0.95; 0.987 with a fifth of the
layers kept fp32), so it is not used.

Vectors agree with fp32 (cosine ≥ 0.99 per text on #ubuntu and Russian chat and on document parts),
checked on probe texts at conversion and at every load (``Disagrees`` otherwise: the caller runs
fp32), so memories embedded in any precision are recalled by any other.
"""
from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .encoder_pipeline import PROBES, TracedPipeline, encode_planned, loaded_st, padded, write_tokenizer_and_probes
from .errors import EmbeddingError

__all__ = [
    "CHECK_TEXTS",
    "INT8_MIN_TOKENS",
    "INT8_VERSION",
    "KEEP_FP32",
    "MIN_COSINE",
    "Disagrees",
    "Int8Encoder",
    "export",
]

log = logging.getLogger(__name__)

INT8_VERSION = 1  # bump when the quantization below changes what is written
INT8_MIN_TOKENS = 32  # texts of fewer word pieces run the fp32 export
# node-name endings kept fp32: the FFN down-projections of layers 0-3 and up-projections of 3-4,
# the most sensitive 6 of the 36 (per-layer sensitivity on #ubuntu and Russian lines: with them
# int8, texts of 32-128 word pieces fell to cosine 0.987)
KEEP_FP32 = (*tuple(f"/layer.{i}/output/dense/MatMul" for i in range(4)), "/layer.3/intermediate/dense/MatMul", "/layer.4/intermediate/dense/MatMul")
MIN_COSINE = 0.99  # against the fp32 probe vectors, at conversion and at every load
FP32_FILE, INT8_FILE = "model.onnx", "model-int8.onnx"
# checked at conversion besides the probes: int8-path texts (≥ INT8_MIN_TOKENS word pieces) of chat,
# documents and Russian, written for this check (no benchmark's text)
CHECK_TEXTS = (
    "after the upgrade to the new kernel my wireless card is not detected any more, lspci shows it but "
    "iwconfig lists nothing and dmesg says the firmware file could not be loaded, any idea what to try?",
    "Minutes of the planning meeting: the team agreed to move the release to the second week of June, "
    "because the payment provider needs two more weeks to certify the new checkout flow. Anna will "
    "update the roadmap and tell the support team; Boris keeps the old flow running until then.",
    "Привет! Напоминаю, что в субботу мы едем на дачу к родителям, выезжаем в девять утра от метро, "
    "возьми, пожалуйста, тёплую куртку и зарядку для телефона, а я куплю продукты по дороге.",
    "Invoice 2024-117: 3 licences of the accounting package at 240 EUR each, support for twelve months "
    "included; payment within 30 days to the account given below. Questions: billing@example.org.",
)


class Disagrees(EmbeddingError):
    """The int8 model's vectors differ from fp32 on the probe texts (cosine < ``MIN_COSINE``): use fp32."""


def _keep_fp32(name: str) -> bool:
    return name.endswith(KEEP_FP32)


def export(model_path: str, out_dir: Path) -> None:
    """Export the sentence-transformers model at ``model_path`` to ONNX into ``out_dir`` and
    quantize it (``model.onnx``, ``model-int8.onnx``, ``tokenizer.json``, ``manifest.json``).
    Blocking, ~10-20 s; imports torch. raises EmbeddingError (ONNX or ONNX Runtime missing, export
    failed, or the int8 model disagrees with fp32)."""
    try:
        import onnx  # deferred: onnx (~0.8 s), only when converting
        import onnxruntime  # deferred: onnxruntime, only when converting
        import torch  # deferred: torch (~1.3 s), only when converting
        from onnxruntime.quantization import QuantType, quantize_dynamic  # deferred: onnxruntime, only when converting

        st = loaded_st(model_path)
        example = st.tokenizer(["a short example", "a somewhat longer example text to pad against"],
                               padding=True, return_tensors="pt")
        out_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(TracedPipeline.of(st), (example["input_ids"], example["attention_mask"]), str(out_dir / FP32_FILE),
                              input_names=["input_ids", "attention_mask"], output_names=["sentence_embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                                            "sentence_embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        graph = onnx.load(str(out_dir / FP32_FILE)).graph
        kept = [n.name for n in graph.node if n.op_type == "MatMul" and _keep_fp32(n.name)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(out_dir / FP32_FILE, out_dir / INT8_FILE, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QUInt8, nodes_to_exclude=kept)
        want = write_tokenizer_and_probes(st, out_dir, model_path, precision="int8", int8_version=INT8_VERSION,
                                          onnxruntime=onnxruntime.__version__, kept_fp32=kept,
                                          check_texts=list(CHECK_TEXTS))
        check = np.asarray(st.encode(list(CHECK_TEXTS), normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=False), np.float32)
    except EmbeddingError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"cannot convert {model_path} to int8: {exc}") from exc
    enc = Int8Encoder(out_dir, check=False)
    cos = min(float((enc.encode_batch(list(CHECK_TEXTS)) * check).sum(axis=1).min()),
              float((enc.encode_batch(list(PROBES)) * want).sum(axis=1).min()))
    if cos < MIN_COSINE:  # remembered in the manifest: later starts run fp32 at once instead of converting again
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
        manifest["disagrees"] = f"cosine {cos:.4f} < {MIN_COSINE}"
        (out_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        raise Disagrees(f"the int8 model of {model_path} disagrees with fp32 (cosine {cos:.4f})")


class Int8Encoder:
    """The int8 conversion run by ONNX Runtime (see the module docstring).

    ``encode_batch(texts) -> float32[n, dim]`` and ``encode_one(text) -> float32[dim]``, both
    L2-normalised; blocking (call from a worker thread); one inference at a time (a lock).
    ``backend`` is "openvino" (the converted-model backend of ``memory.embed_backend``), ``runtime``
    "onnxruntime". raises EmbeddingError (a missing or damaged conversion), Disagrees."""

    backend = "openvino"
    runtime = "onnxruntime"
    precision = "int8"

    def __init__(self, model_dir: Path, *, threads: int | None = None, check: bool = True) -> None:
        self._lock = threading.Lock()
        try:
            import onnxruntime as ort  # deferred: onnxruntime (~30 ms), only on the int8 backend
            from tokenizers import Tokenizer  # deferred: tokenizers, only on the int8 backend

            manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.inter_op_num_threads = 1
            if threads:
                options.intra_op_num_threads = threads
            self._int8 = ort.InferenceSession(str(model_dir / INT8_FILE), options, providers=["CPUExecutionProvider"])
            self._fp32 = ort.InferenceSession(str(model_dir / FP32_FILE), options, providers=["CPUExecutionProvider"])
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._tokenizer.no_padding()
            self.dim = int(manifest["dim"])
            if manifest.get("disagrees"):
                raise Disagrees(f"int8 disagrees with fp32 for this model ({manifest['disagrees']}, found at conversion)")
            want = np.asarray(manifest["probe_vectors"], np.float32)
            cos = float((self.encode_batch(manifest["probes"]) * want).sum(axis=1).min()) if check else 1.0
        except Disagrees:
            raise
        except Exception as exc:
            raise EmbeddingError(f"cannot load the int8 embedding model from {model_dir}: {exc}") from exc
        if cos < MIN_COSINE:
            raise Disagrees(f"int8 inference disagrees with fp32 on the probe texts (cosine {cos:.4f})")

    def _infer(self, encodings, longest: int) -> np.ndarray:
        session = self._int8 if longest >= INT8_MIN_TOKENS and min(len(e.ids) for e in encodings) >= INT8_MIN_TOKENS \
            else self._fp32
        with self._lock:
            return session.run(None, padded(encodings))[0]

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim], L2-normalised, in the caller's order (sorted by token count and
        cut into calls of similar lengths; a call never mixes the fp32 and the int8 path)."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return encode_planned(self._tokenizer, texts, self.dim, self._infer, split_at=INT8_MIN_TOKENS)

    def encode_one(self, text: str) -> np.ndarray:
        """float32[dim], L2-normalised."""
        e = self._tokenizer.encode(text or " ")
        vec = np.asarray(self._infer([e], len(e.ids))[0], np.float32)
        return vec / max(float(np.linalg.norm(vec)), 1e-12)
