"""The embedding model without torch at run time: the sentence-transformers pipeline (transformer →
pooling → normalisation) converted once per machine, then run by OpenVINO (fp32, bf16) or, in int8,
by ONNX Runtime (``providers.int8_encoder``).

Why: on CPUs with native bf16 (AVX512-BF16/AMX) OpenVINO runs the model in bfloat16 with fused
kernels: all-MiniLM-L6-v2 encodes #ubuntu messages ~1.4× faster than torch's bf16 autocast and
~2× faster than torch fp32, a single query in ~3 ms instead of ~5–7 ms, the process loads in
~0.6 s instead of ~6 s (no torch import) and holds ~250 MiB instead of ~540. Vectors agree with
fp32 torch (cosine ≥ 0.9998 per text). On CPUs without native bf16 but with VNNI the ``auto``
precision is int8 (``choose_precision``); elsewhere fp32 (AVX2 alone: int8 measured no faster).

The conversion needs torch and sentence-transformers (both installed) and the local weights (no
network); it takes ~10 s (mostly loading torch; int8 adds ~10 s) and happens once per machine:
``make install`` runs ``python -m providers.openvino_encoder --prepare``, and the first start
does it otherwise. The result lives in the user's cache directory (``cache_root()``:
``$KITH_CACHE_DIR``, else platformdirs' ``user_cache_dir("kith")``, e.g. ``~/.cache/kith``), shared by
every data dir, in a directory named by a key of the weights' paths, sizes and mtimes, the
precision, the libraries' versions and ``EXPORT_VERSION``. A conversion is built in a
``.building-*`` directory and renamed into place while holding a file lock (``.<name>.lock``
beside it): two processes starting at once convert once, the second waits and uses the result; an
interrupted build never leaves a half-written model in use. A damaged conversion (a truncated
model file) is converted again. (Data dirs made before this keep a ``cache/`` of their own: it is
ignored.) The fp32 directory holds ``model.xml``/``model.bin`` (fp32 weights), ``tokenizer.json``
(truncation at the model's ``max_seq_length``) and ``manifest.json`` (the probe texts' fp32
vectors, used to check the compiled precision at every load).

Inputs of the converted model: ``input_ids``, ``attention_mask`` (int64[batch, tokens]); output:
the sentence embedding float32[batch, 384], L2-normalised.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from platformdirs import user_cache_dir

from . import int8_encoder
from .encoder_pipeline import (
    EXPORT_VERSION,
    PROBES,
    TracedPipeline,
    encode_planned,
    loaded_st,
    padded,
    write_tokenizer_and_probes,
)
from .errors import EmbeddingError
from .torch_encoder import default_model_path, model_name

__all__ = [
    "CACHE_ENV",
    "INT8_FLAGS",
    "LOCK_TIMEOUT_S",
    "NATIVE_BF16",
    "PRECISIONS",
    "OpenVINOEncoder",
    "cache_key",
    "cache_root",
    "choose_precision",
    "conversions",
    "converted",
    "cpu_flags",
    "export",
    "load",
    "main",
    "prepare",
    "ready",
]

log = logging.getLogger(__name__)

CACHE_ENV = "KITH_CACHE_DIR"
LOCK_TIMEOUT_S = 900.0  # how long a process waits for another one's conversion
PRECISIONS = ("auto", "fp32", "bf16", "int8")
_EXPORT_MIN_COSINE = 0.9999  # the converted model (fp32) against sentence-transformers' encode
_REDUCED_MIN_COSINE = 0.999  # bf16 inference against the fp32 probe vectors, else the model is compiled fp32
NATIVE_BF16 = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo flags of CPUs that compute bf16 natively
# int8 dot products in one instruction (u8·s8 → s32): VNNI, AMX. With AVX2 alone (vpmaddubsw + vpmaddwd)
# int8 measured no faster than OpenVINO fp32 on document parts (AMD EPYC: 0.9×), so those CPUs run fp32
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``'s ``flags``, lower case); empty where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].lower().split())
    except OSError:
        pass
    return frozenset()


def choose_precision(flags: frozenset[str] | set[str], requested: str = "auto") -> str:
    """The precision batches run in on a CPU with ``flags`` (see ``cpu_flags``): what ``requested``
    names, or for ``"auto"``: ``"bf16"`` where the CPU computes bf16 natively (AVX512-BF16/AMX:
    ~2× fp32 there, cosine ≥ 0.9998), else ``"int8"`` where it has int8 dot-product instructions
    (VNNI: AVX512-VNNI, AVX-VNNI; ONNX Runtime dynamic int8), else ``"fp32"`` — on a CPU with AVX2
    alone (the AMD EPYC measured) int8 ran document parts at 0.9× OpenVINO fp32 and short chat
    lines at ~1.2×, not worth its cosine of ~0.992. A reduced precision is still checked against
    fp32 at load and dropped if it disagrees."""
    if requested != "auto":
        return requested
    if NATIVE_BF16 & set(flags):
        return "bf16"
    if INT8_FLAGS & set(flags):
        return "int8"
    return "fp32"


def cache_root(explicit: Path | None = None) -> Path:
    """Where converted models are cached, once per machine: ``$KITH_CACHE_DIR``, else ``explicit``,
    else platformdirs' ``user_cache_dir("kith")`` (``$XDG_CACHE_HOME/kith`` or ``~/.cache/kith`` on Linux)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if explicit is not None:
        return explicit
    try:
        return Path(user_cache_dir("kith", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base).expanduser() / "kith"


def _versions(precision: str) -> str:
    """The versions of the libraries a conversion of ``precision`` depends on."""
    from importlib import metadata  # deferred: importlib.metadata (~15 ms), only when a conversion is checked

    names = ("openvino",) if precision != "int8" else ("onnxruntime", "onnx", "torch")
    out = []
    for name in names:
        try:
            out.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}=none")
    return ",".join(out)


def cache_key(model_path: str | Path, precision: str = "fp32") -> str:
    """A key of the model directory (its resolved path; each file's relative path, size and mtime),
    the precision of the conversion, the libraries' versions and ``EXPORT_VERSION``: 16 hex digits.
    Cheap (no file is read). The fp32 key is the one earlier versions used (their caches stay valid)."""
    import openvino  # deferred: openvino, only on this backend

    root = Path(model_path)
    head = f"kith-ov-{EXPORT_VERSION}-{openvino.__version__}-{root.resolve()}"
    if precision == "int8":
        head = (f"kith-int8-{int8_encoder.INT8_VERSION}-{int8_encoder.INT8_MIN_TOKENS}-{int8_encoder.KEEP_FP32}-"
                f"{_versions(precision)}-{root.resolve()}")
    h = hashlib.sha256(head.encode())
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
        _convert(loaded_st(model_path), out_dir, model_path)
    except EmbeddingError:
        raise
    except Exception as exc:
        raise EmbeddingError(f"cannot convert {model_path} to OpenVINO: {exc}") from exc


def _convert(st, out_dir: Path, model_path: str) -> None:
    """Trace ``st`` into OpenVINO, save it with its tokenizer and probe vectors, check it."""
    import openvino as ov  # deferred: openvino, only on this backend
    import torch  # deferred: torch (~1.3 s), only when converting

    # traced with a padded pair of texts, so the padding branches are the ones recorded
    example = st.tokenizer(["a short example", "a somewhat longer example text to pad against"],
                           padding=True, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(TracedPipeline.of(st), example_input=(example["input_ids"], example["attention_mask"]),
                                    input=[ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1])])
    for port, name in zip(ov_model.inputs, ("input_ids", "attention_mask")):
        port.get_tensor().set_names({name})
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
    want = write_tokenizer_and_probes(st, out_dir, model_path, openvino=ov.__version__)
    enc = OpenVINOEncoder(out_dir, precision="fp32")
    cos = float((enc.encode_batch(list(PROBES)) * want).sum(axis=1).min())
    if cos < _EXPORT_MIN_COSINE:
        raise EmbeddingError(f"the OpenVINO conversion of {model_path} disagrees with sentence-transformers "
                             f"(cosine {cos:.6f}); use embed_backend: torch")


def _drop_stale_builds(models: Path, older_than_s: float = 3600) -> None:
    """Remove half-built conversions an interrupted process left (``.building-*`` older than an hour)."""
    for d in models.glob(".building-*") if models.is_dir() else ():
        try:
            if time.time() - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


conversions = 0  # conversions this process ran, finished or not (tests, logs)


@contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """Hold the file lock of ``target``'s conversion (``.<name>.lock`` beside it), waiting for
    another process's conversion at most ``LOCK_TIMEOUT_S``. raises EmbeddingError."""
    from filelock import FileLock, Timeout  # deferred: filelock (~20 ms), only when converting

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target.parent / f".{target.name}.lock"), timeout=LOCK_TIMEOUT_S)
        lock.acquire()
    except Timeout as exc:
        raise EmbeddingError(f"another process has been converting {target.name} for {LOCK_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise EmbeddingError(f"cannot write the OpenVINO model cache {target.parent}: {exc}") from exc
    try:
        yield
    finally:
        lock.release()


def ready(target: Path) -> bool:
    """Whether ``target`` holds a finished conversion (its manifest is written last, renamed in whole)."""
    return (target / "manifest.json").is_file()


def converted(model_path: str | None = None, cache_dir: Path | None = None, precision: str = "fp32") -> Path:
    """The cached conversion of ``model_path`` (default: all-MiniLM-L6-v2) for ``precision`` ("int8":
    ONNX Runtime's int8 model, ``providers.int8_encoder``; else the OpenVINO fp32 model every other
    precision compiles from), converting it first when it is not cached (blocking, ~10 s, logged).
    Another process converting the same model at the same time is waited for, not repeated.
    raises EmbeddingError."""
    global conversions
    model_path = model_path or default_model_path()
    root = cache_root(cache_dir)
    kind = "onnx-int8" if precision == "int8" else "openvino"
    try:
        target = root / "models" / f"{model_name(model_path)}-{kind}-{cache_key(model_path, precision)}"
    except (OSError, ImportError) as exc:
        raise EmbeddingError(f"cannot use OpenVINO for {model_path}: {exc}") from exc
    if ready(target):
        return target
    with _exclusive(target):
        if ready(target):  # converted by another process while this one waited
            return target
        what = "to int8 (ONNX Runtime)" if precision == "int8" else "to OpenVINO"
        log.warning("embedding model: converting %s %s once for this machine (about 10 s) into %s",
                    model_name(model_path), what, target)
        _drop_stale_builds(target.parent)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        except OSError as exc:
            raise EmbeddingError(f"cannot write the OpenVINO model cache {target.parent}: {exc}") from exc
        try:
            try:
                (int8_encoder.export if precision == "int8" else export)(model_path, tmp)
            except int8_encoder.Disagrees:
                _install(tmp, target)  # remembered (its manifest says so): later starts run fp32 without converting
                raise
            finally:
                conversions += 1
            _install(tmp, target)
        except OSError as exc:
            raise EmbeddingError(f"cannot write the OpenVINO model cache {target}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _install(tmp: Path, target: Path) -> None:
    """Rename a finished build into place (replacing a damaged conversion the caller gave up on)."""
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


class OpenVINOEncoder:
    """A converted sentence-transformers model compiled for the CPU (see the module docstring).

    ``encode_batch(texts) -> float32[n, dim]`` and ``encode_one(text) -> float32[dim]``, both
    L2-normalised; blocking (call from a worker thread); one bulk call at a time (a lock); on a
    machine of several cores ``encode_one`` runs on a query model of its own, beside a bulk call
    (``concurrent_queries``).
    precision: ``"auto"`` lets OpenVINO pick (bfloat16 on CPUs with native bf16), ``"bf16"`` asks
    for bfloat16 (fp32 where the CPU has none), ``"fp32"`` always fp32; a reduced precision falls
    back to fp32 if the probe texts' vectors then differ from fp32 (cosine < 0.999).
    ``self.precision`` is what runs: ``"bf16"``, ``"fp16"`` (CPUs where OpenVINO defaults to it) or
    ``"fp32"``. raises EmbeddingError.
    """

    backend = "openvino"
    runtime = "openvino"

    def __init__(self, model_dir: Path, *, precision: str = "auto", threads: int | None = None) -> None:
        self._threads = threads  # None: every core
        self._lock = threading.Lock()  # bulk calls, one at a time
        self._query_lock = threading.Lock()  # queries on their own model (``concurrent_queries``)
        try:
            import openvino as ov  # deferred: openvino, only on this backend
            from tokenizers import Tokenizer  # deferred: tokenizers, only on this backend

            manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8")) \
                if (model_dir / "manifest.json").is_file() else None
            self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            self._tokenizer.no_padding()
            self._core = ov.Core()
            self._model = self._core.read_model(str(model_dir / "model.xml"))
            self._compile({"fp32": "f32", "bf16": "bf16"}.get(precision))
            self.dim = int(self._compiled.outputs[0].get_partial_shape()[1].get_length())
            if self.precision != "fp32" and manifest is not None:
                want = np.asarray(manifest["probe_vectors"], np.float32)
                cos = float((self.encode_batch(manifest["probes"]) * want).sum(axis=1).min())
                if cos < _REDUCED_MIN_COSINE:
                    log.info("embedding model: %s inference disagrees with fp32 (cosine %.5f); using fp32", self.precision, cos)
                    self._compile("f32")
        except Exception as exc:
            raise EmbeddingError(f"cannot load the OpenVINO embedding model from {model_dir}: {exc}") from exc

    def _compile(self, hint: str | None) -> None:
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}  # one stream using every core: one call at a time
        if self._threads:
            config["INFERENCE_NUM_THREADS"] = self._threads
        if hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        self._compiled = self._core.compile_model(self._model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        import openvino as ov  # deferred: openvino, only on this backend

        # recall queries get a compiled model of their own (one unpinned thread, ~60 MiB more) where
        # the machine has more than one core and no thread count was given (Ray workers): a query then
        # runs beside the bulk call in hand instead of waiting for it (measured on the 2-core AMD EPYC
        # while a PDF's parts were embedded: delivery -> reply p99 +27-37 ms instead of +254 ms)
        self._query_request = None
        if not self._threads and (os.cpu_count() or 1) > 1:
            query_config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}
            if hint:
                query_config["INFERENCE_PRECISION_HINT"] = hint
            self._query_compiled = self._core.compile_model(self._model, "CPU", query_config)
            self._query_request = self._query_compiled.create_infer_request()
        got = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = {ov.Type.bf16: "bf16", ov.Type.f16: "fp16"}.get(got, "fp32")

    @property
    def concurrent_queries(self) -> bool:
        """Whether ``encode_one`` may run beside a bulk call (a query model was compiled)."""
        return self._query_request is not None

    @staticmethod
    def _run(request, compiled, encodings) -> np.ndarray:
        """float32[len(encodings), dim] from one inference on ``request`` of ``compiled``."""
        out = request.infer(padded(encodings))
        return np.array(out[compiled.outputs[0]], dtype=np.float32)  # a copy: the request reuses its buffer

    def _infer(self, encodings, _longest: int = 0) -> np.ndarray:
        with self._lock:
            return self._run(self._request, self._compiled, encodings)

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """float32[len(texts), dim], L2-normalised, in the caller's order; texts are sorted by token
        count and cut into calls of similar lengths (``plan_calls``, ≤ ``BATCH`` texts each). Empty
        strings are encoded as a space."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return encode_planned(self._tokenizer, texts, self.dim, self._infer)

    def encode_one(self, text: str) -> np.ndarray:
        """float32[dim], L2-normalised. With ``concurrent_queries`` this runs on the query model and
        may be called while a bulk ``encode_batch`` runs in another thread."""
        encoding = [self._tokenizer.encode(text or " ")]
        if self._query_request is None:
            vec = self._infer(encoding)[0]
        elif self._lock.acquire(blocking=False):
            # the main model when it is free: every core, ~4 ms (measured on the 2-core AMD EPYC;
            # the one-thread query model takes ~8 ms alone, ~13-17 ms beside a bulk call)
            try:
                vec = self._run(self._request, self._compiled, encoding)[0]
            finally:
                self._lock.release()
        else:
            with self._query_lock:
                vec = self._run(self._query_request, self._query_compiled, encoding)[0]
        return vec / max(float(np.linalg.norm(vec)), 1e-12)


def _open(model_path: str | None, precision: str, cache_dir: Path | None, threads: int | None):
    """The encoder of the conversion for ``precision``; a damaged conversion (a truncated model
    file, a deleted file) is converted again, once. raises EmbeddingError."""
    kind = "int8" if precision == "int8" else "fp32"

    def make(model_dir: Path):
        if kind == "int8":
            return int8_encoder.Int8Encoder(model_dir, threads=threads)
        return OpenVINOEncoder(model_dir, precision=precision, threads=threads)

    model_dir = converted(model_path, cache_dir, kind)
    try:
        return make(model_dir)
    except int8_encoder.Disagrees:
        raise
    except EmbeddingError as exc:
        log.warning("embedding model: %s; converting it again", exc)
        shutil.rmtree(model_dir, ignore_errors=True)
        return make(converted(model_path, cache_dir, kind))


def load(model_path: str | None = None, *, precision: str = "auto", cache_dir: Path | None = None,
         threads: int | None = None):
    """The encoder of ``model_path`` (default all-MiniLM-L6-v2) in ``precision`` (``"auto"``:
    ``choose_precision(cpu_flags())``), converting it on first use. Blocking. int8 that cannot be
    used (not convertible, or its vectors disagree with fp32 on the probe texts) falls back to
    fp32, logged. raises EmbeddingError (OpenVINO missing, conversion failed, cache not writable)."""
    choice = choose_precision(cpu_flags(), precision)
    if choice == "int8":
        try:
            return _open(model_path, "int8", cache_dir, threads)
        except EmbeddingError as exc:
            log.warning("embedding model: int8 unavailable (%s); using fp32", exc)
            choice = "fp32"
    return _open(model_path, "auto" if precision == "auto" and choice == "bf16" else choice, cache_dir, threads)


def prepare(precision: str = "auto", model_path: str | None = None) -> list[Path]:
    """Convert what ``load`` will need on this machine (the fp32 model, and the int8 one where
    ``auto`` or ``precision`` picks it) into the user's cache: ``make install`` runs this, so no
    first start pays for it. Returns the conversions' directories. raises EmbeddingError."""
    dirs = [converted(model_path)]
    if choose_precision(cpu_flags(), precision) == "int8":
        dirs.append(converted(model_path, precision="int8"))
    return dirs


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m providers.openvino_encoder --prepare [--precision P]``: convert the embedding model
    once for this machine (offline: the weights are the installed package's)."""
    ap = argparse.ArgumentParser(prog="python -m providers.openvino_encoder", description=main.__doc__)
    ap.add_argument("--prepare", action="store_true", help="convert the embedding model into the user's cache")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    args = ap.parse_args(argv)
    if not args.prepare:
        ap.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        dirs = prepare(args.precision)
    except EmbeddingError as exc:
        print(f"embedding model: not converted: {exc}", file=sys.stderr)
        return 1
    flags = cpu_flags()
    print(f"embedding model converted for this machine ({choose_precision(flags, args.precision)} on "
          f"{'this CPU' if flags else 'an unknown CPU'}): " + ", ".join(map(str, dirs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
