"""providers.ocr with the real Tesseract on images rendered here with Pillow and a Debian TTF."""
from __future__ import annotations

import io
import os

import pytest
from PIL import Image, ImageDraw, ImageFont

from providers import ocr
from providers.errors import OCRError, ProviderError

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"  # Debian: fonts-dejavu-core

needs_tesseract = pytest.mark.skipif(
    not ocr.available(), reason="tesseract not installed (Debian packages tesseract-ocr, tesseract-ocr-rus)")


def render(lines: list[str], *, size: int = 48, mode: str = "RGB", canvas: tuple[int, int] | None = None,
           background="white") -> Image.Image:
    assert os.path.exists(FONT), f"{FONT} missing: install the Debian package fonts-dejavu-core"
    font = ImageFont.truetype(FONT, size)
    width = canvas[0] if canvas else max(int(font.getlength(line)) for line in lines) + 80
    height = canvas[1] if canvas else len(lines) * int(size * 1.6) + 60
    image = Image.new(mode, (width, height), background)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((40, 30 + i * int(size * 1.6)), line, fill="black", font=font)
    return image


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def words(text: str) -> set[str]:
    return {w.strip(".,;:!?\"'").lower() for w in text.split()}


@needs_tesseract
def test_english_sentence_in_a_png():
    data = encode(render(["The quick brown fox jumps", "over the lazy dog near Paris."]), "PNG")
    text = ocr.image_text(data)
    assert {"quick", "brown", "fox", "lazy", "paris"} <= words(text)
    assert "  " not in text and text == text.strip()


@needs_tesseract
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_jpeg_and_webp(fmt):
    data = encode(render(["Invoice number 4417 is overdue"]), fmt)
    assert {"invoice", "4417", "overdue"} <= words(ocr.image_text(data, lang="eng"))


@needs_tesseract
def test_russian_text():
    if "rus" not in ocr.languages():
        pytest.skip("tesseract Russian data not installed (Debian package tesseract-ocr-rus)")
    text = ocr.image_text(encode(render(["Встреча перенесена на пятницу"]), "PNG"), lang="rus")
    assert {"встреча", "перенесена", "пятницу"} <= words(text)


@needs_tesseract
def test_transparent_png_is_read_on_white():
    """Black text on a transparent background: read as is, the transparent pixels are black too."""
    data = encode(render(["Transparent background works"], mode="RGBA", background=(0, 0, 0, 0)), "PNG")
    assert {"transparent", "background", "works"} <= words(ocr.image_text(data))


@needs_tesseract
def test_large_image_is_downscaled_first(monkeypatch):
    import pytesseract

    seen = []
    real = pytesseract.image_to_string

    def spy(image, *args, **kwargs):
        seen.append((image.size, kwargs.get("lang")))
        return real(image, *args, **kwargs)

    monkeypatch.setattr(pytesseract, "image_to_string", spy)
    data = encode(render(["Downscaled giant banner"], size=200, canvas=(6000, 700)), "PNG")
    text = ocr.image_text(data, lang="xxx+eng+eng")
    assert seen == [((ocr.MAX_SIDE, round(700 * ocr.MAX_SIDE / 6000)), "eng")]  # unknown 'xxx' dropped
    assert {"downscaled", "giant", "banner"} <= words(text)


@needs_tesseract
def test_blank_image_gives_empty_text():
    assert ocr.image_text(encode(Image.new("RGB", (400, 200), "white"), "PNG")) == ""


@needs_tesseract
def test_languages_are_those_installed():
    assert "eng" in ocr.languages() and all(isinstance(code, str) for code in ocr.languages())


@needs_tesseract
@pytest.mark.parametrize("data", [b"", b"not an image at all", encode(Image.new("RGB", (300, 300), "red"), "PNG")[:120]])
def test_undecodable_image_raises(data):
    with pytest.raises(OCRError) as info:
        ocr.image_text(data)
    assert isinstance(info.value, ProviderError) and info.value.user_message


def test_engine_missing_raises(monkeypatch):
    monkeypatch.setattr(ocr, "available", lambda: False)
    with pytest.raises(OCRError, match="tesseract-ocr"):
        ocr.image_text(encode(Image.new("RGB", (50, 50), "white"), "PNG"))
