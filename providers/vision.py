"""Images in chat: does a model see images, and the OpenAI-style messages that carry one.

Usage::

    if supports_vision(spec):
        c = await llm.complete(alias, describe_request(data, "image/jpeg", caption), max_tokens=200)
        description = c.text

The call itself goes through ``providers.llm.LLM.complete``: litellm passes OpenAI content-part lists
(``[{"type": "text", ...}, {"type": "image_url", ...}]``) to every provider that takes images,
translating them for Anthropic, Gemini, Ollama and the rest. The image travels inline as a base64
``data:`` URL (no upload, no public URL needed).

``supports_vision`` never touches the network: ``spec.vision`` when set, else litellm's bundled model
map. For providers whose model info litellm would fetch from the server or a hub (Ollama's
``/api/show``, Lemonade, Hugging Face) only the static map is read — a local Ollama vision model
(``ollama/llava``) is not in it, so set ``vision: true`` for it in ``kith.yaml``.
"""
from __future__ import annotations

from . import _offline  # noqa: F401  (before litellm)

import base64
import logging
from typing import Any

import litellm

from config.models import ModelSpec

from . import llm as _llm  # noqa: F401  (configures litellm once: quiet, offline, kith/* registered)
from . import recall_model

__all__ = ["DESCRIBE_PROMPT", "describe_request", "image_part", "supports_vision", "user_message_with_image"]

log = logging.getLogger(__name__)

DESCRIBE_PROMPT = (
    "You describe an image that was sent to a group or private chat, so the chat can remember it. "
    "Answer with one to three plain sentences (no lists, no Markdown, no preamble such as 'The image shows'): "
    "what the image shows — the main subject, the setting, and anything notable — and, if it contains "
    "readable text, that text transcribed verbatim in quotes (only the first few lines if there is a lot). "
    "Describe only what is visible: do not guess who people are, where or when it was taken, or why it was sent. "
    "If the sender added a caption, use it to know what matters, but do not repeat it."
)

# providers whose model info litellm fetches at call time (a request to the model server or a hub)
_DYNAMIC_INFO_PROVIDERS = frozenset({"huggingface"})


def _static_supports_vision(model: str, provider: str) -> bool:
    """``supports_vision`` from the bundled model map only: ``provider/model``, then the bare model
    when its entry belongs to that provider."""
    table = litellm.model_cost
    for key in (f"{provider}/{model}", model):
        entry = table.get(key)
        if isinstance(entry, dict) and (key != model or str(entry.get("litellm_provider", "")) == provider):
            return entry.get("supports_vision") is True
    return False


def _fetches_model_info(model: str, provider: str) -> bool:
    if provider in _DYNAMIC_INFO_PROVIDERS:
        return True
    try:
        from litellm.types.utils import LlmProviders
        from litellm.utils import ProviderConfigManager

        cfg = ProviderConfigManager.get_provider_model_info(model=model, provider=LlmProviders(provider))
    except Exception:  # noqa: BLE001  (unknown provider enum: litellm would not fetch either)
        return False
    return callable(getattr(cfg, "get_model_info", None))


def supports_vision(spec: ModelSpec) -> bool:
    """Does ``spec``'s model accept images? ``spec.vision`` when set; else litellm's bundled model map
    (``supports_vision``), offline; False on any error and for the built-in ``kith/*`` models."""
    if spec.vision is not None:
        return spec.vision
    if spec.model.startswith(f"{recall_model.PROVIDER}/"):
        return False
    try:
        model, provider, _, _ = litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)
        if _fetches_model_info(model, provider):
            return _static_supports_vision(model, provider)
        return bool(litellm.supports_vision(model=model, custom_llm_provider=provider))
    except Exception:  # noqa: BLE001
        log.debug("supports_vision(%s) failed; assuming no vision", spec.model, exc_info=True)
        return False


def image_part(data: bytes, mime_type: str) -> dict[str, Any]:
    """An OpenAI content part carrying ``data`` inline: ``{"type": "image_url", "image_url": {"url":
    "data:<mime>;base64,<b64>"}}``."""
    b64 = base64.b64encode(data).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:{mime_type};base64,{b64}"}}


def user_message_with_image(text: str, data: bytes, mime_type: str) -> dict[str, Any]:
    """A user message with ``text`` and the image: ``{"role": "user", "content": [text part, image part]}``."""
    return {"role": "user", "content": [{"type": "text", "text": text}, image_part(data, mime_type)]}


def describe_request(data: bytes, mime_type: str, caption: str | None) -> list[dict[str, Any]]:
    """The messages of a description call: ``DESCRIBE_PROMPT`` as the system message, then the caption
    (or a plain request when there is none) with the image."""
    caption = (caption or "").strip()
    text = f"The sender's caption: {caption}" if caption else "Describe this image."
    return [{"role": "system", "content": DESCRIBE_PROMPT}, user_message_with_image(text, data, mime_type)]
