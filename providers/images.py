"""Image generation (``/image``, "draw …"), edits and variations: a prompt (and a photo) in, image bytes out.

Usage::

    gen = ImageGenerator(settings.image_models)         # alias -> ImageModelSpec
    img = await gen.generate("dalle", "a lighthouse at dusk, watercolour")   # -> GeneratedImage
    img.data, img.mime_type, img.revised_prompt, img.cost_usd
    imgs = await gen.generate_many("dalle", "a cat", 3)                   # -> list[GeneratedImage]
    imgs = await gen.edit("dalle", photo_png, "make the sky blue", mask=mask_png, n=2)
    imgs = await gen.variations("dalle", photo_png, n=2)

One ``litellm.aimage_generation`` call per request (``n`` images, ``generate``: 1), ``litellm.aimage_edit``
for an edit (multipart ``image``, ``mask``, ``prompt``, ``n``), ``litellm.aimage_variation`` once per
variation (litellm 1.106.2 forwards no ``n`` for OpenAI variations); each with the alias's ``size``, ``quality``,
``api_base``, key (``os.environ[api_key_env]`` when set, else litellm's own variables such as
OPENAI_API_KEY) and ``timeout_s`` (per attempt: the openai SDK retries 429/5xx/connection errors
twice, its default — litellm 1.106.2 does not pass ``max_retries`` on for images). ``response_format=
"b64_json"`` is asked of models that take it (DALL·E and unknown OpenAI-compatible models; the
gpt-image family always answers base64 and rejects the parameter); a provider that still answers with
a URL has it downloaded with httpx within what is left of ``timeout_s`` (at least 5 s, at most
``MAX_IMAGE_BYTES``). A photo to edit or vary (and a mask) is sent as PNG (``as_png``: OpenAI takes
PNG only there). The MIME type comes from the bytes (PNG, JPEG, WebP, GIF); anything else is
``ProviderUnavailable``.

Errors: a content-policy refusal (400 ``content_policy_violation``, litellm's
``ContentPolicyViolationError``) is ``ContentRefused``; everything else goes through
``providers.llm.translate_error`` (RateLimited, ProviderUnavailable, ProviderTimeout,
AuthenticationFailed, BadRequest).

Cost (``image_cost``) mirrors litellm's ``default_image_cost_calculator`` over its bundled price map:
the first of ``<quality>/<W>-x-<H>/<model>``, ``<provider>/<quality>/<W>-x-<H>/<model>``,
``<W>-x-<H>/<model>``, ``high/<W>-x-<H>/<model>``, ``<model>`` that the map has (quality defaults to
``standard``, as in litellm), priced by its ``input_cost_per_image``, ``output_cost_per_image`` or
``input_cost_per_pixel`` × W × H. gpt-image models that report token usage are priced per token
(``input_cost_per_token`` / ``input_cost_per_image_token`` / ``output_cost_per_image_token``), as
litellm does. litellm 1.106.2's map no longer lists OpenAI's DALL·E 2/3 (only Azure's), so OpenAI's
published list prices for them are kept here (``OPENAI_DALLE_PRICES``; dall-e-3 1024x1024 standard:
$0.04). Any other model is unpriced: ``cost_usd=None``, never 0.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx
import litellm
from litellm.types.utils import LlmProviders
from litellm.utils import ProviderConfigManager

from config.models import ImageModelSpec

from . import _offline  # noqa: F401  (before litellm)
from .errors import ContentRefused, ModelNotConfigured, ProviderError, ProviderTimeout, ProviderUnavailable
from .llm import error_detail, translate_error

__all__ = ["MAX_IMAGE_BYTES", "OPENAI_DALLE_PRICES", "GeneratedImage", "ImageGenerator", "as_png", "image_cost", "sniff_image_type"]

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 50 * 1024 * 1024
_SDK_RETRIES = 2  # the openai SDK's default retries, which litellm 1.106.2 uses for images
_MIN_DOWNLOAD_S = 5.0

# OpenAI's list prices per image (https://openai.com/api/pricing), in litellm's key format; used only
# for the ``openai`` provider when litellm's bundled map has no entry for the model.
OPENAI_DALLE_PRICES: dict[str, float] = {
    "standard/1024-x-1024/dall-e-3": 0.040,
    "standard/1024-x-1792/dall-e-3": 0.080,
    "standard/1792-x-1024/dall-e-3": 0.080,
    "hd/1024-x-1024/dall-e-3": 0.080,
    "hd/1024-x-1792/dall-e-3": 0.120,
    "hd/1792-x-1024/dall-e-3": 0.120,
    "256-x-256/dall-e-2": 0.016,
    "512-x-512/dall-e-2": 0.018,
    "1024-x-1024/dall-e-2": 0.020,
}


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """One generated image. data: the image file's bytes. mime_type: from the bytes' magic.
    prompt: as asked. revised_prompt: the provider's rewrite (DALL·E 3), else None. model: the alias.
    cost_usd: None when unpriced. latency_ms: wall time, the download of a URL answer included."""

    data: bytes
    mime_type: str
    prompt: str
    revised_prompt: str | None
    model: str
    cost_usd: float | None
    latency_ms: float


def sniff_image_type(data: bytes) -> str | None:
    """``image/png``, ``image/jpeg``, ``image/webp`` or ``image/gif`` from the magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


# ---------------------------------------------------------------- cost


def _split_model(model: str) -> tuple[str, str | None]:
    """(bare model, provider) as litellm resolves them; (model, None) if it cannot."""
    try:
        bare, provider, _, _ = litellm.get_llm_provider(model=model)
        return bare, provider
    except Exception:
        return model, None


def _per_image_price(entry: Mapping[str, Any], width: int, height: int) -> float | None:
    for key, units in (("input_cost_per_image", 1), ("output_cost_per_image", 1), ("input_cost_per_pixel", width * height)):
        price = entry.get(key)
        if price is not None:
            return float(price) * units
    return None


def _token_cost(entry: Mapping[str, Any], usage: Any) -> float | None:
    """gpt-image token pricing from the response's usage (``input_tokens``, ``output_tokens`` and
    ``input_tokens_details.{text,image}_tokens``), or None when the usage or a price is missing."""
    def get(obj: Any, name: str) -> Any:
        return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)

    out_tokens = get(usage, "output_tokens")
    in_tokens = get(usage, "input_tokens")
    out_price = entry.get("output_cost_per_image_token")
    if not out_tokens or in_tokens is None or out_price is None:  # litellm fills an absent usage with zeros
        return None
    details = get(usage, "input_tokens_details")
    text_tokens = get(details, "text_tokens") if details is not None else None
    image_tokens = get(details, "image_tokens") if details is not None else None
    if text_tokens is None and image_tokens is None:
        text_tokens, image_tokens = in_tokens, 0
    text_price = entry.get("input_cost_per_token") or 0.0
    image_price = entry.get("input_cost_per_image_token") or text_price
    return (float(text_tokens or 0) * float(text_price) + float(image_tokens or 0) * float(image_price)
            + float(out_tokens) * float(out_price))


def image_cost(model: str, size: str, quality: str | None = None, usage: Any = None) -> float | None:
    """The price of one image of ``model`` (a litellm model string) at ``size`` (``WxH``) and
    ``quality`` from litellm's bundled price map (see the module doc), or None when unpriced."""
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        return None
    bare, provider = _split_model(model)
    table = litellm.model_cost
    if usage is not None and "gpt-image" in bare.lower():
        entry = table.get(bare) or (table.get(f"{provider}/{bare}") if provider else None)
        if isinstance(entry, Mapping):
            cost = _token_cost(entry, usage)
            if cost is not None:
                return cost
    size_key = f"{width}-x-{height}"
    q = quality or "standard"
    candidates = [f"{q}/{size_key}/{bare}"]
    if provider:
        candidates.append(f"{provider}/{q}/{size_key}/{bare}")
    candidates += [f"{size_key}/{bare}", f"high/{size_key}/{bare}", bare]
    for key in candidates:
        entry = table.get(key)
        if isinstance(entry, Mapping):
            return _per_image_price(entry, width, height)  # litellm prices by the first entry it finds
    if provider == "openai":
        for key in candidates:
            if key in OPENAI_DALLE_PRICES:
                return OPENAI_DALLE_PRICES[key]
    return None


# ---------------------------------------------------------------- the generator


def _takes_response_format(model: str) -> bool:
    bare, provider = _split_model(model)
    if provider is None:
        return False
    try:
        cfg = ProviderConfigManager.get_provider_image_generation_config(model=bare, provider=LlmProviders(provider))
    except Exception:
        cfg = None
    if cfg is None:
        return provider in ("openai", "azure") and "gpt-image" not in bare.lower()
    try:
        return "response_format" in cfg.get_supported_openai_params(bare)
    except Exception:
        return False


def _is_content_refusal(e: BaseException) -> bool:
    if isinstance(e, litellm.ContentPolicyViolationError):
        return True
    body = getattr(e, "body", None)
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping) and err.get("code") == "content_policy_violation":
            return True
    return getattr(e, "code", None) == "content_policy_violation"


def as_png(data: bytes) -> bytes:
    """``data`` (JPEG, WebP, GIF…) as PNG bytes — OpenAI's edits and variations take PNG only, and a
    Telegram photo is a JPEG; a PNG (or what Pillow cannot read) is returned unchanged. Blocking."""
    if sniff_image_type(data) in ("image/png", None):
        return data
    from PIL import Image  # Pillow only for an edit or a variation: not at start-up

    try:
        with Image.open(io.BytesIO(data)) as im:
            out = io.BytesIO()
            im.convert("RGBA").save(out, "PNG")
            return out.getvalue()
    except (OSError, ValueError):
        return data


def _upload(name: str, data: bytes) -> io.BytesIO:
    """``data`` as a named file for a multipart upload (litellm's async image edit reads file
    objects; a ``(name, bytes, mime)`` tuple is not sent)."""
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}.get(sniff_image_type(data) or "", "png")
    f = io.BytesIO(data)
    f.name = f"{name}.{ext}"
    return f


def _item_field(item: Any, name: str) -> Any:
    return item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)


class ImageGenerator:
    """Generates images with the configured ``image_models`` (alias → ImageModelSpec).

    Every model string must name a provider litellm knows (else ``ModelNotConfigured``, at once).
    An empty mapping is allowed (``aliases`` is empty; ``generate`` raises ModelNotConfigured).
    """

    def __init__(self, models: Mapping[str, ImageModelSpec]) -> None:
        self._models: dict[str, ImageModelSpec] = dict(models)
        for alias, spec in self._models.items():
            try:
                litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)
            except Exception as e:
                raise ModelNotConfigured(f"image_models.{alias}: litellm cannot use model {spec.model!r}: {error_detail(e)}") from e

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._models)

    def _spec(self, alias: str) -> ImageModelSpec:
        try:
            return self._models[alias]
        except KeyError:
            known = ", ".join(self._models) or "none"
            raise ModelNotConfigured(f"image model alias {alias!r} is not configured (image_models: {known})") from None

    async def generate(self, alias: str, prompt: str) -> GeneratedImage:
        """One image for ``prompt`` with the image model ``alias``.

        Raises ModelNotConfigured (unknown alias), ContentRefused (content policy), RateLimited,
        ProviderUnavailable (5xx, no image or not an image in the answer), ProviderTimeout,
        AuthenticationFailed, BadRequest — all ``ProviderError``; never a litellm type.
        """
        return (await self.generate_many(alias, prompt, 1))[0]

    async def generate_many(self, alias: str, prompt: str, n: int) -> list[GeneratedImage]:
        """``n`` (1–10) images for ``prompt`` in one request (``n``); the provider may answer fewer
        (at least one, else ProviderUnavailable). Errors as ``generate``."""
        spec = self._spec(alias)
        kwargs = self._common(spec, n)
        kwargs["prompt"] = prompt
        kwargs["size"] = spec.size
        if spec.quality:
            kwargs["quality"] = spec.quality
        return await self._images(alias, spec, prompt, litellm.aimage_generation, kwargs, "image generation")

    async def edit(self, alias: str, image: bytes, prompt: str, *, mask: bytes | None = None, n: int = 1) -> list[GeneratedImage]:
        """``n`` (1–10) edits of ``image`` (PNG/JPEG/WebP bytes) following ``prompt``, one
        ``litellm.aimage_edit`` request; ``mask`` (a PNG whose transparent pixels mark where to
        edit) is sent with it when given. Errors as ``generate`` (a model that cannot edit answers
        BadRequest)."""
        spec = self._spec(alias)
        kwargs = self._common(spec, n)
        kwargs.update(image=_upload("image", await anyio.to_thread.run_sync(as_png, image)), prompt=prompt, size=spec.size)
        if mask is not None:
            kwargs["mask"] = _upload("mask", await anyio.to_thread.run_sync(as_png, mask))
        return await self._images(alias, spec, prompt, litellm.aimage_edit, kwargs, "image edit")

    async def variations(self, alias: str, image: bytes, *, n: int = 1) -> list[GeneratedImage]:
        """``n`` (1–10) variations of ``image``: ``n`` calls of ``litellm.aimage_variation`` one after
        the other (litellm 1.106.2 sends OpenAI neither ``n`` nor ``size`` nor ``response_format`` for
        variations, so each call is one image, returned as a URL or base64). Stops at the first
        failure when something was made; errors as ``generate``."""
        spec = self._spec(alias)
        image = await anyio.to_thread.run_sync(as_png, image)
        out: list[GeneratedImage] = []
        for _i in range(max(1, min(10, n))):
            kwargs = self._common(spec, 1)
            kwargs.pop("response_format", None)
            kwargs["image"] = _upload("image", image)
            try:
                out += await self._images(alias, spec, "", litellm.aimage_variation, kwargs, "image variation")
            except ProviderError:
                if not out:
                    raise
                log.info("image variation %d of %d failed; keeping %d", len(out) + 1, n, len(out))
                break
        return out

    @staticmethod
    def _common(spec: ImageModelSpec, n: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": spec.model, "n": max(1, min(10, n)), "timeout": spec.timeout_s, "drop_params": True}
        if _takes_response_format(spec.model):
            kwargs["response_format"] = "b64_json"
        if spec.api_base:
            kwargs["api_base"] = spec.api_base
        if spec.api_key_env and os.environ.get(spec.api_key_env):
            kwargs["api_key"] = os.environ[spec.api_key_env]
        return kwargs

    async def _images(self, alias: str, spec: ImageModelSpec, prompt: str, call: Any, kwargs: dict[str, Any],
                      what: str) -> list[GeneratedImage]:
        where = f"image model {alias} [{spec.model}]"
        t0 = time.perf_counter()
        try:
            with anyio.fail_after(spec.timeout_s * (_SDK_RETRIES + 1) + 10):  # the timeout is per attempt
                resp = await call(**kwargs)
        except TimeoutError as e:
            raise ProviderTimeout(f"{where}: no image within {spec.timeout_s:.0f} s") from e
        except Exception as e:
            if _is_content_refusal(e):
                raise ContentRefused(f"{where}: {type(e).__name__}: {error_detail(e)}") from e
            err = translate_error(e, where)
            log.info("%s failed: %s", what, err)
            raise err from e

        items = list(getattr(resp, "data", None) or [])
        if not items:
            raise ProviderUnavailable(f"{where}: the answer has no image")
        usage = getattr(resp, "usage", None)
        cost = image_cost(spec.model, spec.size, spec.quality, usage)
        if cost is not None and usage is not None and len(items) > 1 and "gpt-image" in spec.model.lower():
            cost /= len(items)  # token usage is the whole answer's
        out: list[GeneratedImage] = []
        for item in items:
            b64 = _item_field(item, "b64_json")
            url = _item_field(item, "url")
            if b64:
                try:
                    data = base64.b64decode(b64, validate=False)
                except (binascii.Error, ValueError) as e:
                    raise ProviderUnavailable(f"{where}: the answer's b64_json is not base64") from e
            elif url:
                remaining = spec.timeout_s - (time.perf_counter() - t0)
                data = await self._download(str(url), max(_MIN_DOWNLOAD_S, remaining), where)
            else:
                raise ProviderUnavailable(f"{where}: the answer has neither b64_json nor url")
            mime = sniff_image_type(data)
            if mime is None:
                raise ProviderUnavailable(f"{where}: the answer is not a PNG, JPEG, WebP or GIF image ({len(data)} bytes)")
            revised = _item_field(item, "revised_prompt")
            out.append(GeneratedImage(data=data, mime_type=mime, prompt=prompt, revised_prompt=str(revised) if revised else None,
                                      model=alias, cost_usd=cost, latency_ms=0.0))
        latency = (time.perf_counter() - t0) * 1000.0
        return [replace(img, latency_ms=latency / len(out)) for img in out]

    @staticmethod
    async def _download(url: str, timeout_s: float, where: str) -> bytes:
        try:
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client, \
                    client.stream("GET", url) as r:
                r.raise_for_status()
                chunks: list[bytes] = []
                size = 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise ProviderUnavailable(f"{where}: the image at its URL is larger than {MAX_IMAGE_BYTES} bytes")
                    chunks.append(chunk)
        except ProviderError:
            raise
        except Exception as e:
            raise translate_error(e, f"{where} downloading the image") from e
        return b"".join(chunks)
