"""What litellm's bundled model map says a configured model supports, read offline.

``model_supports(spec, "supports_function_calling")`` (tools, ``providers.llm``) and
``model_supports(spec, "supports_vision")`` (photos, ``providers.vision``): litellm's answer for the
model, except for providers whose model info litellm would fetch from a server or a hub at call
time (``DYNAMIC_INFO_PROVIDERS``, or a provider config with ``get_model_info``, e.g. Ollama's
``/api/show``): for those only the bundled map is read. Never over the network; False on any error
and for the built-in offline ``kith/*`` models.
"""
from __future__ import annotations

import logging

import litellm
from litellm.types.utils import LlmProviders
from litellm.utils import ProviderConfigManager

from config.models import ModelSpec

from . import (
    _offline,  # noqa: F401  (before litellm)
    recall_model,
)

__all__ = ["DYNAMIC_INFO_PROVIDERS", "model_supports"]

log = logging.getLogger(__name__)

# providers whose model info litellm fetches at call time (a request to the model server or a hub)
DYNAMIC_INFO_PROVIDERS = frozenset({"huggingface"})


def model_supports(spec: ModelSpec, key: str) -> bool:
    """litellm's ``key`` for ``spec.model`` (``"supports_function_calling"``, ``"supports_vision"``:
    the name of both the model-map field and litellm's function), offline; False on any error."""
    if spec.model.startswith(f"{recall_model.PROVIDER}/"):
        return False
    try:
        model, provider, _, _ = litellm.get_llm_provider(model=spec.model, api_base=spec.api_base)
        if _fetches_model_info(model, provider):
            return _static_supports(model, provider, key)
        return bool(getattr(litellm, key)(model=model, custom_llm_provider=provider))
    except Exception:
        log.debug("%s(%s) failed; assuming not", key, spec.model, exc_info=True)
        return False


def _static_supports(model: str, provider: str, key: str) -> bool:
    """``key`` from litellm's bundled model map only: ``provider/model``, then the bare model when
    its entry belongs to that provider."""
    table = litellm.model_cost
    for name in (f"{provider}/{model}", model):
        entry = table.get(name)
        if isinstance(entry, dict) and (name != model or str(entry.get("litellm_provider", "")) == provider):
            return entry.get(key) is True
    return False


def _fetches_model_info(model: str, provider: str) -> bool:
    """Would litellm fetch this model's info from its server or a hub (Ollama's ``/api/show``)?"""
    if provider in DYNAMIC_INFO_PROVIDERS:
        return True
    try:
        cfg = ProviderConfigManager.get_provider_model_info(model=model, provider=LlmProviders(provider))
    except Exception:
        return False
    return callable(getattr(cfg, "get_model_info", None))
