"""Errors of the providers package (LLM, embeddings, media). Root: ``ProviderError``.

litellm's exceptions are translated into these once, at the boundary (``providers.llm``); callers
never see a litellm type. ``user_message`` is the short text a chat user may be shown; ``str(err)``
carries the detail for the log.
"""


class ProviderError(Exception):
    """Root of the providers package's errors."""

    user_message = "The language model is unavailable right now. Please try again later."


class ModelNotConfigured(ProviderError):
    """A model alias that is not in the config's ``models:``."""

    user_message = "That model is not configured on this bot."


class RateLimited(ProviderError):
    """The provider answered 429 on every model of the fallback chain."""

    user_message = "The language model is busy (rate limited). Please try again in a minute."


class ProviderUnavailable(ProviderError):
    """The provider failed (5xx, connection refused) on every model of the fallback chain."""


class ProviderTimeout(ProviderError):
    """No answer within the configured timeout."""

    user_message = "The language model took too long to answer. Please try again."


class AuthenticationFailed(ProviderError):
    """The provider rejected the API key (401/403). Check the provider's environment variable."""

    user_message = "The bot's language model is misconfigured (authentication failed)."


class BadRequest(ProviderError):
    """The provider rejected the request (400), e.g. the context is too long."""

    user_message = "The language model could not process this request."


class EmbeddingError(ProviderError):
    """The embedding model could not be loaded or failed to encode."""
