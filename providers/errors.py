"""Errors of the providers package (LLM, embeddings, media). Root: ``ProviderError``.

litellm's exceptions are translated into these once, at the boundary (``providers.llm``); callers
never see a litellm type. ``user_message`` is the short text a chat user may be shown, in the
interface language current where it is read (``i18n``); ``str(err)`` carries the detail for the log.
"""
from i18n import N_, _

__all__ = ["AuthenticationFailed", "BadRequest", "ContentRefused", "CorruptDocument", "DocumentError",
           "DocumentTooLarge", "EmbeddingError", "EncryptedDocument", "ModelNotConfigured", "NoTextLayer",
           "OCRError", "ProviderError", "ProviderTimeout", "ProviderUnavailable", "RateLimited",
           "TranscriptionFailed", "UnsupportedDocument"]


class ProviderError(Exception):
    """Root of the providers package's errors."""

    user_text = N_("The language model is unavailable right now. Please try again later.")

    @property
    def user_message(self) -> str:
        """What a chat user is told, in the current interface language."""
        return _(self.user_text)


class ModelNotConfigured(ProviderError):
    """A model alias that is not in the config's ``models:``."""

    user_text = N_("That model is not configured on this bot.")


class RateLimited(ProviderError):
    """The provider answered 429 on every model of the fallback chain."""

    user_text = N_("The language model is busy (rate limited). Please try again in a minute.")


class ProviderUnavailable(ProviderError):
    """The provider failed (5xx, connection refused) on every model of the fallback chain."""


class ProviderTimeout(ProviderError):
    """No answer within the configured timeout."""

    user_text = N_("The language model took too long to answer. Please try again.")


class AuthenticationFailed(ProviderError):
    """The provider rejected the API key (401/403). Check the provider's environment variable."""

    user_text = N_("The bot's language model is misconfigured (authentication failed).")


class BadRequest(ProviderError):
    """The provider rejected the request (400), e.g. the context is too long."""

    user_text = N_("The language model could not process this request.")


class EmbeddingError(ProviderError):
    """The embedding model could not be loaded or failed to encode."""


# --- media → text (providers.documents, providers.ocr) -------------------------------------------


class DocumentError(ProviderError):
    """A document could not be read (``providers.documents``).

    ``str(err)`` is the detail for the log; ``file_name`` is the file's base name;
    ``user_message`` (in the current interface language) is a short, polite sentence naming the file and what
    to do about it.
    """

    def __init__(self, detail: str, *, file_name: str = "") -> None:
        super().__init__(detail)
        self.file_name = file_name or ""

    @property
    def user_message(self) -> str:
        return self._user_message(self.file_name or _("the file"))

    def _user_message(self, name: str) -> str:
        return _("I couldn't read {name}.", name=name)


class UnsupportedDocument(DocumentError):
    """Not a PDF, DOCX or text-like file (e.g. .doc, .xls, an image, an archive)."""

    def _user_message(self, name: str) -> str:
        return _("I can't read {name}: send PDF, DOCX or a text file.", name=name)


class EncryptedDocument(DocumentError):
    """A PDF that needs a password (or an encryption this install cannot decrypt)."""

    def _user_message(self, name: str) -> str:
        return _("{name} is password-protected; send it without the password.", name=name)


class NoTextLayer(DocumentError):
    """No text at all: a PDF whose pages are images (a scan), or an empty file."""

    def _user_message(self, name: str) -> str:
        if name.lower().endswith(".pdf") or not self.file_name:
            return _("{name} has no text layer (a scan?); I can't read it without OCR.", name=name)
        return _("{name} is empty: there is no text in it.", name=name)


class CorruptDocument(DocumentError):
    """The parser (pypdf, python-docx, zip) cannot open the file, or it is binary, not text."""

    def _user_message(self, name: str) -> str:
        return _("I couldn't open {name}: it seems damaged.", name=name)


class DocumentTooLarge(DocumentError):
    """More pages than the reader's limit. ``pages`` / ``max_pages`` are set when known."""

    def __init__(self, detail: str, *, file_name: str = "",
                 pages: int | None = None, max_pages: int | None = None) -> None:
        self.pages = pages
        self.max_pages = max_pages
        super().__init__(detail, file_name=file_name)

    def _user_message(self, name: str) -> str:
        if self.pages is not None and self.max_pages is not None:
            return _("{name} has {pages} pages; I read at most {max_pages}.", name=name, pages=self.pages, max_pages=self.max_pages)
        return _("{name} is too large for me to read.", name=name)


class OCRError(ProviderError):
    """Tesseract is not installed, failed, or the image cannot be decoded (``providers.ocr``)."""

    user_text = N_("I couldn't read the text in that image.")


# --- speech and images (providers.transcription, providers.images) -----------------------------


class TranscriptionFailed(ProviderError):
    """Speech-to-text failed: the provider or the local backend could not transcribe the recording
    (undecodable audio, a local model that failed to load or run)."""

    user_text = N_("I couldn't transcribe this recording.")


class ContentRefused(ProviderError):
    """The image model refused the prompt (content policy)."""

    user_text = N_("The image model refused this prompt (content policy). Try describing it differently.")
