"""Providers: the LLM (litellm), the embedding model and media → text. Errors: providers.errors."""
from . import _offline  # noqa: F401
