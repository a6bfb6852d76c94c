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

import base64
import logging
from typing import Any

from config.models import ModelSpec

from . import _offline  # noqa: F401  (before litellm)
from . import llm as _llm  # noqa: F401  (configures litellm once: quiet, offline, kith/* registered)
from .model_map import model_supports

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


def supports_vision(spec: ModelSpec) -> bool:
    """Does ``spec``'s model accept images? ``spec.vision`` when set; else litellm's bundled model map
    (``supports_vision``), offline; False on any error and for the built-in ``kith/*`` models."""
    if spec.vision is not None:
        return spec.vision
    return model_supports(spec, "supports_vision")


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
