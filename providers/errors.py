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


# --- media → text (providers.documents, providers.ocr) -------------------------------------------


class DocumentError(ProviderError):
    """A document could not be read (``providers.documents``).

    ``str(err)`` is the detail for the log; ``file_name`` is the file's base name;
    ``user_message`` (an instance attribute) is a short, polite sentence naming the file and what
    to do about it.
    """

    def __init__(self, detail: str, *, file_name: str = "the file") -> None:
        super().__init__(detail)
        self.file_name = file_name or "the file"
        self.user_message = self._user_message(self.file_name)

    def _user_message(self, name: str) -> str:
        return f"I couldn't read {name}."


class UnsupportedDocument(DocumentError):
    """Not a PDF, DOCX or text-like file (e.g. .doc, .xls, an image, an archive)."""

    def _user_message(self, name: str) -> str:
        return f"I can't read {name}: send PDF, DOCX or a text file."


class EncryptedDocument(DocumentError):
    """A PDF that needs a password (or an encryption this install cannot decrypt)."""

    def _user_message(self, name: str) -> str:
        return f"{name} is password-protected; send it without the password."


class NoTextLayer(DocumentError):
    """No text at all: a PDF whose pages are images (a scan), or an empty file."""

    def _user_message(self, name: str) -> str:
        if name.lower().endswith(".pdf") or name == "the file":
            return f"{name} has no text layer (a scan?); I can't read it without OCR."
        return f"{name} is empty: there is no text in it."


class CorruptDocument(DocumentError):
    """The parser (pypdf, python-docx, zip) cannot open the file, or it is binary, not text."""

    def _user_message(self, name: str) -> str:
        return f"I couldn't open {name}: it seems damaged."


class DocumentTooLarge(DocumentError):
    """More pages than the reader's limit. ``pages`` / ``max_pages`` are set when known."""

    def __init__(self, detail: str, *, file_name: str = "the file",
                 pages: int | None = None, max_pages: int | None = None) -> None:
        self.pages = pages
        self.max_pages = max_pages
        super().__init__(detail, file_name=file_name)

    def _user_message(self, name: str) -> str:
        if self.pages is not None and self.max_pages is not None:
            return f"{name} has {self.pages} pages; I read at most {self.max_pages}."
        return f"{name} is too large for me to read."


class OCRError(ProviderError):
    """Tesseract is not installed, failed, or the image cannot be decoded (``providers.ocr``)."""

    user_message = "I couldn't read the text in that image."


# --- speech and images (providers.transcription, providers.images) -----------------------------


class TranscriptionFailed(ProviderError):
    """Speech-to-text failed: the provider or the local backend could not transcribe the recording
    (undecodable audio, a local model that failed to load or run)."""

    user_message = "I couldn't transcribe this recording."


class ContentRefused(ProviderError):
    """The image model refused the prompt (content policy)."""

    user_message = "The image model refused this prompt (content policy). Try describing it differently."
