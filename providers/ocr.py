"""Text in images with Tesseract (an optional engine: the Debian packages ``tesseract-ocr`` and
``tesseract-ocr-rus``), through pytesseract (runs the ``tesseract`` binary) and Pillow (decoding).

``available()`` tells whether the engine is installed; ``image_text(data)`` reads an image's text.
Errors: ``providers.errors.OCRError``.
"""
from __future__ import annotations

import functools
import io
import logging
import re

from .errors import OCRError

__all__ = ["MAX_SIDE", "TIMEOUT_S", "available", "image_text", "languages"]

log = logging.getLogger(__name__)

MAX_SIDE = 4096  # px: larger images are downscaled first (Tesseract gains nothing, and time grows)
TIMEOUT_S = 120  # one tesseract run; a 4096 px page takes ~5-20 s on 2 cores

_HSPACE_RUN = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


@functools.cache
def available() -> bool:
    """True when the ``tesseract`` binary runs (``pytesseract.get_tesseract_version()``). Cached for
    the process; never raises."""
    try:
        import pytesseract  # deferred: pytesseract (~150 ms), only for OCR

        version = pytesseract.get_tesseract_version()
    except Exception as e:  # TesseractNotFoundError, ImportError, OSError
        log.info("OCR unavailable: %s: %s", type(e).__name__, e)
        return False
    log.debug("tesseract %s", version)
    return True


@functools.cache
def languages() -> frozenset[str]:
    """The installed Tesseract languages (``tesseract --list-langs``), e.g. ``{'eng', 'rus', 'osd'}``;
    empty when the engine is unavailable. Cached for the process; never raises."""
    if not available():
        return frozenset()
    try:
        import pytesseract  # deferred: pytesseract (~150 ms), only for OCR

        return frozenset(pytesseract.get_languages(config=""))
    except Exception as e:
        log.warning("tesseract --list-langs failed: %s: %s", type(e).__name__, e)
        return frozenset()


def image_text(data: bytes, lang: str = "eng+rus") -> str:
    """The text Tesseract reads in an image, or '' when there is none.

    ``data``: the bytes of a PNG, JPEG, WebP (or another format Pillow decodes; the first frame of an
    animation). EXIF rotation is applied, transparency is flattened onto white, and an image larger
    than ``MAX_SIDE`` px on a side is downscaled (aspect kept). ``lang``: Tesseract language codes
    joined by '+'; only the installed ones are used, 'eng' when none is. Output: lines stripped, runs
    of spaces collapsed, at most one blank line between blocks. Blocking (seconds): run it in a worker
    thread. raises OCRError when the engine is not installed, the image cannot be decoded, or
    tesseract fails or runs longer than ``TIMEOUT_S``.
    """
    if not available():
        raise OCRError("OCR engine not installed: the 'tesseract' binary (Debian: tesseract-ocr) was not found")
    import pytesseract  # deferred: pytesseract (~150 ms), only for OCR

    image = _load(data)
    installed = languages()
    wanted = [code for code in lang.split("+") if code and code in installed]
    langs = "+".join(dict.fromkeys(wanted)) or "eng"
    try:
        text = pytesseract.image_to_string(image, lang=langs, timeout=TIMEOUT_S)
    except RuntimeError as e:  # pytesseract's "Tesseract process timeout"
        raise OCRError(f"tesseract gave no answer within {TIMEOUT_S} s: {e}") from e
    except Exception as e:  # TesseractError (bad language data, crash), OSError
        raise OCRError(f"tesseract failed: {type(e).__name__}: {e}") from e
    return _normalise(text)


def _load(data: bytes):
    """``data`` decoded by Pillow into an RGB or L image, upright, at most ``MAX_SIDE`` px a side."""
    from PIL import Image, ImageOps  # deferred: Pillow, only for OCR

    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        image.load()  # first frame
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            image = Image.new("RGB", rgba.size, "white")
            image.paste(rgba, mask=rgba.getchannel("A"))
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), DecompressionBombError
        raise OCRError(f"cannot decode the image ({len(data)} bytes): {type(e).__name__}: {e}") from e
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def _normalise(text: str) -> str:
    lines = (_HSPACE_RUN.sub(" ", line).strip() for line in text.replace("\x0c", "\n").splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
