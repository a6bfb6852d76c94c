"""providers.documents on real files made here with real libraries: PDFs with fpdf2 (and pypdf for
encryption), DOCX with python-docx, text files in real encodings."""
from __future__ import annotations

import io
import itertools
import random
import re
import zipfile

import docx
import pytest
from fpdf import FPDF
from PIL import Image, ImageDraw
from pypdf import PdfReader, PdfWriter

from providers import documents
from providers.documents import Chunk, Extracted, Section, chunk, document_kind, extract
from providers.errors import (
    CorruptDocument,
    DocumentError,
    DocumentTooLarge,
    EncryptedDocument,
    NoTextLayer,
    ProviderError,
    UnsupportedDocument,
)

FACT = "The vault combination is 4815-1623-42."


def make_pdf(pages: list[list[str]]) -> bytes:
    """A PDF with one page per item; each page has the given paragraphs (Helvetica, Latin text)."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    for paragraphs in pages:
        pdf.add_page()
        for paragraph in paragraphs:
            pdf.multi_cell(0, 5, paragraph)
            pdf.ln(4)
    return bytes(pdf.output())


def filler(page: int) -> list[str]:
    return [f"Page {page} marker P{page:02d}X. " + f"Routine filler sentence number {i} on page {page}. " * 3
            for i in range(4)]


@pytest.fixture(scope="module")
def pdf20() -> bytes:
    pages = [filler(p) for p in range(1, 21)]
    pages[6].insert(2, FACT)
    return make_pdf(pages)


def encrypted(data: bytes, user_password: str, owner_password: str | None = None) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(data))
    writer.encrypt(user_password, owner_password=owner_password)  # RC4-128: needs no 'cryptography'
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def raises_doc(exc: type[DocumentError], data: bytes, name: str, **kw) -> DocumentError:
    with pytest.raises(exc) as info:
        extract(data, name, **kw)
    err = info.value
    assert isinstance(err, ProviderError) and err.file_name == name and name in err.user_message
    return err


# --- document_kind ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mime", "kind"), [
    ("report.pdf", "application/pdf", "pdf"),
    ("REPORT.PDF", None, "pdf"),
    ("report.pdf", "application/octet-stream", "pdf"),
    (None, "application/pdf", "pdf"),
    ("scan", "application/pdf", "pdf"),
    ("letter.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    ("letter.docx", "application/zip", "docx"),
    (None, "application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    ("notes.txt", "text/plain", "text"),
    ("README.md", None, "text"),
    ("data.csv", "text/csv", "text"),
    ("data.tsv", None, "text"),
    ("config.yaml", "application/x-yaml", "text"),
    ("main.py", "text/x-python", "text"),
    ("app.ts", "application/octet-stream", "text"),
    ("server.log", None, "text"),
    ("fix.patch", None, "text"),
    ("subs.srt", "application/x-subrip", "text"),
    (".env", None, "text"),
    ("Dockerfile", None, "text"),
    ("src/Makefile", None, "text"),
    ("notes", "text/plain; charset=utf-8", "text"),
    (None, "application/json", "text"),
    (None, "application/xml", "text"),
    (None, "application/csv", "text"),
    (None, "application/x-sh", "text"),
    (None, "application/vnd.api+json", "text"),
    ("report.doc", "application/msword", None),
    ("report.doc", "text/plain", None),
    ("sheet.xls", "application/vnd.ms-excel", None),
    ("slides.ppt", None, None),
    ("sheet.xlsx", None, None),
    ("photo.jpg", "image/jpeg", None),
    ("diagram.svg", "image/svg+xml", None),
    ("clip.ts", "video/mp2t", None),
    ("backup.zip", "application/zip", None),
    ("archive.tar.gz", "application/gzip", None),
    ("setup.exe", "application/x-msdownload", None),
    ("blob.bin", "application/octet-stream", None),
    (None, None, None),
    ("", "", None),
])
def test_document_kind(name, mime, kind):
    assert document_kind(name, mime) == kind
    assert kind is None or kind in documents.DOCUMENT_KINDS


def test_unsupported_document_names_the_file():
    err = raises_doc(UnsupportedDocument, b"PK\x03\x04junk", "report.xls")
    assert err.user_message == "I can't read report.xls: send PDF, DOCX or a text file."


# --- PDF ----------------------------------------------------------------------------------------


def test_pdf_pages_and_the_page_of_a_fact(pdf20):
    ex = extract(pdf20, "handbook.pdf", "application/pdf")
    assert isinstance(ex, Extracted) and ex.kind == "pdf" and ex.pages == 20 and ex.encoding is None
    assert len(ex.sections) == 20
    assert [s.page for s in ex.sections] == list(range(1, 21))
    assert all(s.heading is None for s in ex.sections)
    assert FACT in ex.sections[6].text
    assert ex.chars == sum(len(s.text) for s in ex.sections) > 20 * 400

    chunks = chunk(ex, max_chars=400)
    with_fact = [c for c in chunks if "4815-1623-42" in c.text]
    assert len(with_fact) == 1 and with_fact[0].page == 7
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(isinstance(c, Chunk) and 0 < len(c.text) <= 400 and c.section is None for c in chunks)


@pytest.mark.parametrize("max_chars", [150, 400, 100_000])
def test_chunks_never_span_two_pages(pdf20, max_chars):
    chunks = chunk(extract(pdf20, "handbook.pdf"), max_chars=max_chars)
    for c in chunks:
        markers = set(re.findall(r"P(\d\d)X", c.text))
        assert markers <= {f"{c.page:02d}"}, (c.page, markers)
        assert len(c.text) <= max_chars
    assert sorted({c.page for c in chunks}) == list(range(1, 21))
    if max_chars == 100_000:  # everything would fit in one chunk; pages still separate them
        assert [c.page for c in chunks] == list(range(1, 21))
    assert chunks == chunk(extract(pdf20, "handbook.pdf"), max_chars=max_chars)  # deterministic


def test_blank_pdf_page_is_a_section_but_no_chunk():
    data = make_pdf([["First page text."], [], ["Third page text."]])
    ex = extract(data, "gap.pdf")
    assert ex.pages == 3 and [s.page for s in ex.sections] == [1, 2, 3] and ex.sections[1].text.strip() == ""
    assert [(c.page, c.text) for c in chunk(ex)] == [(1, "First page text."), (3, "Third page text.")]


def test_pdf_with_a_real_password_is_encrypted_document(pdf20):
    data = encrypted(pdf20, "s3cret")
    assert PdfReader(io.BytesIO(data)).is_encrypted
    err = raises_doc(EncryptedDocument, data, "secret.pdf")
    assert err.user_message == "secret.pdf is password-protected; send it without the password."


def test_pdf_encrypted_with_the_empty_password_is_still_read(pdf20):
    data = encrypted(pdf20, "", owner_password="owner-only")
    assert PdfReader(io.BytesIO(data)).is_encrypted
    ex = extract(data, "restricted.pdf")
    assert ex.pages == 20 and FACT in ex.sections[6].text


def test_aes_without_cryptography_is_reported_as_encrypted(pdf20, monkeypatch):
    """pypdf raises DependencyError when AES needs the 'cryptography' package; that must not look
    like a damaged file. (AES PDFs cannot be written here without that package, so the error is
    injected where pypdf raises it: when page content is decrypted.)"""
    from pypdf import PageObject
    from pypdf.errors import DependencyError

    def needs_cryptography(self, *a, **kw):
        raise DependencyError("cryptography>=3.1 is required for AES algorithm")

    monkeypatch.setattr(PageObject, "extract_text", needs_cryptography)
    err = raises_doc(EncryptedDocument, pdf20, "aes.pdf")
    assert "cryptography" in str(err)


def test_pdf_with_only_an_image_has_no_text_layer():
    image = Image.new("RGB", (600, 200), "white")
    ImageDraw.Draw(image).rectangle((20, 20, 580, 180), outline="black", width=5)
    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.image(image, x=10, y=10, w=150)
    err = raises_doc(NoTextLayer, bytes(pdf.output()), "scan.pdf")
    assert err.user_message == "scan.pdf has no text layer (a scan?); I can't read it without OCR."


def test_random_bytes_named_pdf_are_corrupt():
    data = random.Random(7).randbytes(4096)
    err = raises_doc(CorruptDocument, data, "broken.pdf")
    assert err.user_message == "I couldn't open broken.pdf: it seems damaged."
    raises_doc(CorruptDocument, b"", "empty.pdf")


def test_too_many_pages(pdf20):
    err = raises_doc(DocumentTooLarge, pdf20, "big.pdf", max_pages=5)
    assert err.user_message == "big.pdf has 20 pages; I read at most 5."
    assert (err.pages, err.max_pages) == (20, 5)
    assert extract(pdf20, "big.pdf", max_pages=20).pages == 20


# --- DOCX ---------------------------------------------------------------------------------------


def make_docx() -> bytes:
    d = docx.Document()
    d.add_paragraph("Internal memo, not for distribution.")
    d.add_heading("Quarterly report", level=0)  # style "Title"
    d.add_paragraph("Revenue grew in every region this quarter.")
    d.add_heading("Pricing", level=1)
    d.add_paragraph("Our plans are listed below.")
    table = d.add_table(rows=3, cols=3)
    for row, values in zip(table.rows, [("Plan", "Price", "Seats"), ("Basic", "10 EUR", "5"),
                                        ("Enterprise", "", "")]):
        for cell, value in zip(row.cells, values):
            cell.text = value
    merged = table.cell(2, 1).merge(table.cell(2, 2))
    merged.text = "on request"
    d.add_paragraph("Prices exclude VAT.")
    d.add_heading("Delivery", level=2)
    d.add_paragraph("Orders ship within   two\tbusiness days.")
    d.add_paragraph("")
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def test_docx_paragraphs_tables_and_headings_in_document_order():
    ex = extract(make_docx(), "memo.docx")
    assert ex.kind == "docx" and ex.pages == 0 and ex.encoding is None
    assert [(s.heading, s.text.splitlines()[0]) for s in ex.sections] == [
        (None, "Internal memo, not for distribution."),
        ("Quarterly report", "Quarterly report"),
        ("Quarterly report", "Revenue grew in every region this quarter."),
        ("Pricing", "Pricing"),
        ("Pricing", "Our plans are listed below."),
        ("Pricing", "Plan | Price | Seats"),
        ("Pricing", "Prices exclude VAT."),
        ("Delivery", "Delivery"),
        ("Delivery", "Orders ship within   two\tbusiness days."),
    ]
    assert ex.sections[5].text == "Plan | Price | Seats\nBasic | 10 EUR | 5\nEnterprise | on request"
    assert all(s.page is None for s in ex.sections)
    assert ex.chars == sum(len(s.text) for s in ex.sections)


def test_docx_chunks_keep_the_table_under_its_heading():
    chunks = chunk(extract(make_docx(), "memo.docx"))
    by_section = {c.section: c.text for c in chunks}
    assert len(chunks) == len(by_section) == 4  # one per heading (and the text before the first)
    assert by_section[None] == "Internal memo, not for distribution."
    assert "Basic | 10 EUR | 5" in by_section["Pricing"]
    assert by_section["Pricing"].startswith("Pricing\n\nOur plans are listed below.\n\nPlan | Price | Seats")
    assert by_section["Delivery"] == "Delivery\n\nOrders ship within two\tbusiness days."
    small = chunk(extract(make_docx(), "memo.docx"), max_chars=40)
    assert all(len(c.text) <= 40 for c in small)
    rows = {"Plan | Price | Seats", "Basic | 10 EUR | 5", "Enterprise | on request"}
    assert rows <= {line for c in small if c.section == "Pricing" for line in c.text.split("\n")}


def test_docx_without_text():
    out = io.BytesIO()
    empty = docx.Document()
    empty.add_paragraph("   ")
    empty.save(out)
    err = raises_doc(NoTextLayer, out.getvalue(), "blank.docx")
    assert err.user_message == "blank.docx is empty: there is no text in it."


def test_docx_that_is_not_a_docx_is_corrupt():
    raises_doc(CorruptDocument, b"this is plain text, not a zip", "fake.docx")
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    raises_doc(CorruptDocument, z.getvalue(), "zipped.docx")
    raises_doc(CorruptDocument, make_docx()[:2000], "truncated.docx")


# --- text files ---------------------------------------------------------------------------------

RUSSIAN = ("Протокол собрания жильцов дома номер семь.\n"
           "Решили: заменить лифт до пятнадцатого марта, оплату собрать с каждой квартиры.\n\n"
           "Ответственный — Пётр Сергеевич, телефон в чате. Съешь же ещё этих мягких французских булок.\n")


def test_cp1251_russian_text_is_decoded_exactly():
    ex = extract(RUSSIAN.encode("cp1251"), "протокол.txt", "text/plain")
    assert ex.kind == "text" and ex.encoding == "cp1251" and ex.pages == 0
    assert ex.sections == (Section(RUSSIAN, None, None),) and ex.chars == len(RUSSIAN)
    assert [c.text for c in chunk(ex)] == [RUSSIAN.strip()]


@pytest.mark.parametrize(("encode", "encoding"), [
    (lambda t: t.encode("utf-8-sig"), "utf_8"),
    (lambda t: t.encode("utf-8"), "utf_8"),
    (lambda t: t.encode("utf-16"), "utf_16_le"),
])
def test_unicode_text_is_exact(encode, encoding):
    text = "# Заметки — notes ✓\n\nnaïve café, 日本語, emoji 🎉\n    indented line\n"
    ex = extract(encode(text), "notes.md")
    assert ex.sections[0].text == text and ex.encoding == encoding


def test_text_line_ends_and_nul_bytes():
    data = b"first line\r\nsecond\x00 line\rthird line\n" + b"padding words " * 20
    text = extract(data, "mixed.txt").sections[0].text
    assert text.startswith("first line\nsecond line\nthird line\n") and "\x00" not in text and "\r" not in text


def test_binary_with_a_text_extension_is_corrupt():
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(png, "PNG")
    raises_doc(CorruptDocument, png.getvalue(), "image.txt")
    raises_doc(CorruptDocument, random.Random(3).randbytes(5000), "blob.log")
    raises_doc(CorruptDocument, b"\x00\x01\x02\x03" * 500, "zeros.csv")


@pytest.mark.parametrize("data", [b"", b"   \n\n\t  \r\n"])
def test_empty_text_file_has_no_text(data):
    err = raises_doc(NoTextLayer, data, "empty.txt")
    assert err.user_message == "empty.txt is empty: there is no text in it."


def test_log_with_long_lines_is_chunked_at_line_breaks():
    rng = random.Random(11)
    lines = [f"2024-03-0{i % 9 + 1} 12:{i:02d}:00 ERROR worker-{i} " + " ".join(
        rng.choice(["timeout", "retry", "socket", "closed", "upstream", "backend"]) for _ in range(rng.randint(5, 40)))
        for i in range(120)]
    ex = extract("\n".join(lines).encode(), "server.log")
    chunks = chunk(ex, max_chars=900)
    assert len(chunks) > 5 and all(len(c.text) <= 900 for c in chunks)
    assert [line for c in chunks for line in c.text.split("\n")] == lines  # whole lines, in order
    # packed: a chunk plus the next chunk's first line would not fit
    for a, b in itertools.pairwise(chunks):
        assert len(a.text) + 1 + len(b.text.split("\n")[0]) > 900


def test_one_long_line_is_cut_at_sentences_then_spaces_never_mid_word():
    sentences = [f"Sentence number {i} talks about topic{i} at some length." for i in range(60)]
    line = " ".join(sentences)
    chunks = chunk(extract(line.encode(), "one-line.txt"), max_chars=200)
    assert all(len(c.text) <= 200 for c in chunks)
    assert all(c.text.endswith(".") for c in chunks)  # cut at sentence ends
    assert " ".join(c.text for c in chunks) == line

    words = " ".join(f"word{i}" for i in range(400))  # no sentence ends: cut at spaces
    chunks = chunk(extract(words.encode(), "words.txt"), max_chars=50)
    assert all(len(c.text) <= 50 for c in chunks) and " ".join(c.text for c in chunks) == words

    giant = "x" * 250
    chunks = chunk(extract(f"short {giant} tail".encode(), "giant.txt"), max_chars=100)
    assert [c.text for c in chunks] == ["short", "x" * 100, "x" * 100, "x" * 50 + " tail"]


def test_text_whitespace_normalised_but_lines_and_indentation_kept():
    code = ("def total(items):\n"
            "    s  =   0\n"
            "\n"
            "\n"
            "\n"
            "    for item in items:   \n"
            "        s += item\n"
            "    return s\n")
    tsv = "name\tqty\nbolts\t\t40\n"
    (c1,) = chunk(extract(code.encode(), "calc.py"))
    assert c1.text == ("def total(items):\n    s = 0\n\n    for item in items:\n        s += item\n    return s")
    (c2,) = chunk(extract(tsv.encode(), "stock.tsv"))
    assert c2.text == "name\tqty\nbolts\t40"


def test_paragraphs_are_packed_up_to_max_chars():
    paragraphs = [f"Paragraph {i}: " + "lorem ipsum " * (i % 5 + 2) for i in range(30)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunk(extract(text.encode(), "notes.txt"), max_chars=300)
    assert all(len(c.text) <= 300 for c in chunks)
    assert "\n\n".join(c.text for c in chunks) == text  # nothing lost, split only between paragraphs
    for a, b in itertools.pairwise(chunks):
        assert len(a.text) + 2 + len(b.text.split("\n\n")[0]) > 300


def test_chunk_rejects_a_non_positive_limit():
    with pytest.raises(ValueError):
        chunk(extract(b"text", "a.txt"), max_chars=0)


def test_chunk_invariants_on_random_text():
    """Seeded fuzz: chunks are non-empty, within max_chars, and keep every word whole and in order
    (a word longer than max_chars is cut, but no character is lost)."""
    rng = random.Random(1)
    atoms = ["word", "a", "longerword", "x" * 30, ".", "!", "\n", "\n\n", "  ", "\t", "   indented", "Привет"]
    for _ in range(400):
        text = "".join(rng.choice(atoms) + rng.choice([" ", "", "\n"]) for _ in range(rng.randint(1, 150)))
        max_chars = rng.randint(5, 300)
        for kind, page in (("text", None), ("pdf", 1)):
            ex = Extracted(kind, (Section(text, page, None),), 0, None, len(text))
            chunks = chunk(ex, max_chars=max_chars)
            assert all(0 < len(c.text) <= max_chars and c.text.strip() and c.page == page for c in chunks)
            source, out = text.split(), [w for c in chunks for w in c.text.split()]
            if all(len(w) <= max_chars for w in source):
                assert out == source
            else:
                assert "".join(out) == "".join(source)
