"""Documents → text: PDF (pypdf), DOCX (python-docx) and text-like files (charset-normalizer), and
the chunking of the extracted text into pieces for memory.

Three steps, each a pure function of its input (no I/O besides the bytes given):

* ``document_kind(file_name, mime_type)`` → ``'pdf' | 'docx' | 'text' | None``;
* ``extract(data, file_name, mime_type)`` → ``Extracted``: ``Section``s in document order (a PDF page,
  a DOCX paragraph or table, or the whole of a text file). Blocking: run it in a worker thread;
* ``chunk(extracted, max_chars=1200)`` → ``list[Chunk]``: paragraphs packed into pieces of at most
  ``max_chars`` characters, never across a PDF page or a DOCX heading.

Errors are ``providers.errors.DocumentError`` subclasses; each has a ``user_message`` naming the file.
Not read: DOCX headers, footers, footnotes, comments and text boxes; PDF images (see ``providers.ocr``).
"""
from __future__ import annotations

import codecs
import io
import logging
import posixpath
import re
import zipfile
from dataclasses import dataclass

import charset_normalizer

from .errors import (
    CorruptDocument,
    DocumentError,
    DocumentTooLarge,
    EncryptedDocument,
    NoTextLayer,
    UnsupportedDocument,
)

__all__ = ["DOCUMENT_KINDS", "Chunk", "Extracted", "Section", "chunk", "document_kind", "extract"]

log = logging.getLogger(__name__)

DOCUMENT_KINDS = ("pdf", "docx", "text")

_DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

_TEXT_EXTENSIONS = frozenset(
    ["txt", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "yaml", "yml", "toml", "ini", "cfg", "conf", "log", "xml", "html", "htm", "sql", "py", "js", "ts", "tsx", "jsx", "java", "kt", "c", "h", "cpp", "hpp", "cs", "go", "rs", "rb", "php", "sh", "bash", "zsh", "ps1", "pl", "lua", "r", "swift", "scala", "m", "tex", "env", "diff", "patch", "srt", "vtt"]
)
_TEXT_FILE_NAMES = frozenset({"dockerfile", "makefile", "gnumakefile", "containerfile"})
# known not to be text even when a client labels them text/*: legacy Office, images, archives, executables
_BINARY_EXTENSIONS = frozenset(
    ["doc", "xls", "ppt", "xlsx", "pptx", "odt", "ods", "odp", "rtf", "pages", "key", "numbers", "epub", "djvu", "png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff", "heic", "heif", "svg", "ico", "psd", "zip", "rar", "7z", "tar", "gz", "tgz", "bz2", "xz", "zst", "lz4", "cab", "iso", "dmg", "exe", "dll", "so", "dylib", "bin", "msi", "apk", "deb", "rpm", "jar", "class", "pyc", "o", "a", "wasm", "mp3", "mp4", "m4a", "ogg", "oga", "opus", "wav", "flac", "mkv", "avi", "mov", "webm"]
)
_TEXT_MIMES = frozenset({
    "application/json", "application/ld+json", "application/x-ndjson", "application/jsonl",
    "application/xml", "application/xhtml+xml",
    "application/x-yaml", "application/yaml", "application/toml", "application/x-toml",
    "application/csv", "application/x-csv", "application/sql", "application/x-sql",
    "application/x-sh", "application/x-shellscript", "application/x-csh", "application/x-bash",
    "application/javascript", "application/x-javascript", "application/ecmascript",
    "application/typescript", "application/x-typescript", "application/x-python",
    "application/x-perl", "application/x-ruby", "application/x-php", "application/x-httpd-php",
    "application/x-tex", "application/x-latex", "application/x-subrip", "application/x-tcl",
    "application/x-powershell", "application/x-lua", "application/x-diff", "application/x-patch",
})
_NON_TEXT_MIME_TOPS = ("image/", "video/", "audio/", "font/", "model/")


def document_kind(file_name: str | None, mime_type: str | None) -> str | None:
    """What ``extract`` would read the file as: ``'pdf' | 'docx' | 'text'``, or ``None`` (unsupported).

    The file's extension decides when it is a known one (case-insensitive; ``Dockerfile``/``Makefile``
    count as text); otherwise the MIME type does (parameters such as ``; charset=`` ignored). Text-like
    MIME types: ``text/*``, ``application/json|xml|x-yaml|csv|x-sh|javascript|sql|...`` and any
    ``application/*+json`` / ``+xml``. An ``image/``, ``video/``, ``audio/`` or ``font/`` MIME type is
    never a document (so a ``.ts`` video is not TypeScript). Legacy ``.doc/.xls/.ppt``, images,
    archives and executables → ``None``. Pure; never raises.
    """
    mime = (mime_type or "").split(";", 1)[0].strip().lower()
    if mime.startswith(_NON_TEXT_MIME_TOPS):
        return None
    name = posixpath.basename((file_name or "").replace("\\", "/")).strip().lower()
    if name in _TEXT_FILE_NAMES:
        return "text"
    ext = name.rsplit(".", 1)[1] if "." in name else ""
    if ext == "pdf":
        return "pdf"
    if ext == "docx":
        return "docx"
    if ext in _TEXT_EXTENSIONS:
        return "text"
    if ext in _BINARY_EXTENSIONS:
        return None
    if mime == "application/pdf":
        return "pdf"
    if mime == _DOCX_MIME:
        return "docx"
    if mime.startswith("text/") or mime in _TEXT_MIMES:
        return "text"
    if mime.startswith("application/") and mime.endswith(("+json", "+xml")):
        return "text"
    return None


@dataclass(frozen=True, slots=True)
class Section:
    """A piece of a document as the format delimits it.

    ``text``: one page (PDF; '' for a blank page), one paragraph or table (DOCX; a table row is one
    line, cells joined by " | "), or the whole text (text files). NUL bytes removed, line ends '\\n'.
    ``page``: 1-based PDF page, else None. ``heading``: the nearest DOCX heading at or above (a
    paragraph whose style name starts with "Heading" or "Title"), else None.
    """

    text: str
    page: int | None
    heading: str | None


@dataclass(frozen=True, slots=True)
class Extracted:
    """The text of one document. ``kind``: 'pdf' | 'docx' | 'text'; ``sections`` in document order;
    ``pages``: the PDF's page count (0 for DOCX/text); ``encoding``: the decoding used for a text
    file (Python codec name, e.g. 'utf_8', 'cp1251'), else None; ``chars``: total characters of
    the sections' texts."""

    kind: str
    sections: tuple[Section, ...]
    pages: int
    encoding: str | None
    chars: int


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document sized for memory: ``index`` 0-based in the document, ``text`` at most
    ``max_chars`` characters, ``page`` the (1-based) PDF page it is on, ``section`` the DOCX heading
    it is under (None when not applicable)."""

    index: int
    text: str
    page: int | None
    section: str | None


def extract(data: bytes, file_name: str, mime_type: str | None = None, *, max_pages: int = 2000) -> Extracted:
    """The text of a PDF, DOCX or text-like file (kind chosen by ``document_kind``).

    Blocking (CPU-bound, ~10-50 ms a PDF page): run it in a worker thread. Libraries: pypdf
    (PDF; an encrypted PDF is opened with the empty password when that works), python-docx (DOCX:
    body paragraphs and tables in document order), charset-normalizer (text files: UTF-8 with or
    without BOM and UTF-16/32 with BOM are decoded exactly; anything else by detection).

    raises (all ``DocumentError``; ``user_message`` names ``file_name``):
      UnsupportedDocument — ``document_kind`` is None;
      EncryptedDocument — a PDF that needs a password, or an AES one without ``cryptography``;
      CorruptDocument — pypdf / python-docx / zip cannot parse it; a DOCX that is not a zip;
        a "text" file that is binary;
      NoTextLayer — a PDF whose pages yield no text at all (a scan); a text file or DOCX with no text;
      DocumentTooLarge — a PDF of more than ``max_pages`` pages.
    """
    kind = document_kind(file_name, mime_type)
    name = posixpath.basename((file_name or "").replace("\\", "/")) or "the file"
    if kind is None:
        raise UnsupportedDocument(f"unsupported document {file_name!r} (MIME {mime_type!r})", file_name=name)
    if kind == "pdf":
        return _extract_pdf(data, name, max_pages)
    if kind == "docx":
        return _extract_docx(data, name)
    return _extract_text(data, name)


# --- PDF ------------------------------------------------------------------------------------------


def _extract_pdf(data: bytes, name: str, max_pages: int) -> Extracted:
    from pypdf import PdfReader  # deferred: pypdf (~110 ms), only for a PDF
    from pypdf.errors import DependencyError, FileNotDecryptedError  # deferred: pypdf, only for a PDF

    try:
        try:
            reader = PdfReader(io.BytesIO(data))  # tries the empty password itself when encrypted
            if reader.is_encrypted and not reader.decrypt(""):
                raise EncryptedDocument(f"{name}: PDF needs a password", file_name=name)
            pages = len(reader.pages)
        except DocumentError:
            raise
        except (DependencyError, FileNotDecryptedError):
            raise
        except Exception as e:  # PdfReadError, and the struct/KeyError/ValueError of broken files
            raise CorruptDocument(f"{name}: pypdf cannot parse it: {type(e).__name__}: {e}", file_name=name) from e
        if pages > max_pages:
            raise DocumentTooLarge(f"{name}: {pages} pages > max_pages={max_pages}",
                                   file_name=name, pages=pages, max_pages=max_pages)
        sections: list[Section] = []
        failed = 0
        for number, page in enumerate(reader.pages, start=1):
            try:
                text = page.extract_text() or ""
            except (DependencyError, FileNotDecryptedError):
                raise
            except Exception as e:  # one damaged page does not lose the rest
                log.warning("%s: page %d: text extraction failed: %s: %s", name, number, type(e).__name__, e)
                failed += 1
                text = ""
            sections.append(Section(_clean(text), number, None))
    except DependencyError as e:  # AES without the ``cryptography`` package
        raise EncryptedDocument(
            f"{name}: PDF uses AES encryption, which needs the 'cryptography' package: {e}", file_name=name
        ) from e
    except FileNotDecryptedError as e:
        raise EncryptedDocument(f"{name}: PDF needs a password: {e}", file_name=name) from e
    if not any(s.text.strip() for s in sections):
        if failed:
            raise CorruptDocument(f"{name}: text extraction failed on {failed} of {pages} pages", file_name=name)
        raise NoTextLayer(f"{name}: none of the {pages} pages has a text layer", file_name=name)
    return Extracted("pdf", tuple(sections), pages, None, sum(len(s.text) for s in sections))


# --- DOCX -----------------------------------------------------------------------------------------


def _extract_docx(data: bytes, name: str) -> Extracted:
    import docx  # deferred: python-docx, lxml (~45 ms), only for a .docx
    from docx.table import Table  # deferred: python-docx, only for a .docx

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CorruptDocument(f"{name}: not a zip archive, so not a DOCX", file_name=name)
    sections: list[Section] = []
    heading: str | None = None
    try:
        document = docx.Document(io.BytesIO(data))
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                text = _table_text(block)
            else:
                text = _clean(block.text)
                if text.strip() and _is_heading(block):
                    heading = " ".join(text.split())
            if text.strip():
                sections.append(Section(text, None, heading))
    except Exception as e:  # zipfile.BadZipFile, KeyError (no document.xml), lxml errors, ValueError
        raise CorruptDocument(f"{name}: python-docx cannot parse it: {type(e).__name__}: {e}", file_name=name) from e
    if not sections:
        raise NoTextLayer(f"{name}: the DOCX has no text", file_name=name)
    return Extracted("docx", tuple(sections), 0, None, sum(len(s.text) for s in sections))


def _is_heading(paragraph) -> bool:
    try:
        style = paragraph.style
    except Exception:  # a style id the styles part does not define
        return False
    style_name = (style.name or "") if style is not None else ""
    return style_name.startswith(("Heading", "Title"))


def _table_text(table) -> str:
    """One line per row, the row's cells joined by " | " (a merged cell once); nested tables skipped."""
    lines = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:  # a horizontally merged cell repeats in row.cells
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(_clean(cell.text).split()))
        if any(cells):
            lines.append(" | ".join(cells))
    return "\n".join(lines)


# --- text files -----------------------------------------------------------------------------------

_BOMS = (  # longest first: the UTF-32-LE BOM starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf_32_le"), (codecs.BOM_UTF32_BE, "utf_32_be"), (codecs.BOM_UTF8, "utf_8"),
    (codecs.BOM_UTF16_LE, "utf_16_le"), (codecs.BOM_UTF16_BE, "utf_16_be"),
)
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # Cc less \t\n\v\f\r and ESC (logs)
_MAX_NUL_SHARE = 0.01  # more NUL bytes than this, without a UTF-16/32 BOM: binary
_MAX_CONTROL_SHARE = 0.02  # more control characters than this in the decoded text: binary


def _extract_text(data: bytes, name: str) -> Extracted:
    text, encoding = _decode(data, name)
    text = _clean(text)
    if not text.strip():
        raise NoTextLayer(f"{name}: the file has no text", file_name=name)
    controls = len(_CONTROLS.findall(text))
    if controls > _MAX_CONTROL_SHARE * len(text):
        raise CorruptDocument(f"{name}: {controls} control characters in {len(text)}: binary, not text",
                              file_name=name)
    return Extracted("text", (Section(text, None, None),), 0, encoding, len(text))


def _decode(data: bytes, name: str) -> tuple[str, str]:
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding), encoding
            except UnicodeDecodeError as e:
                raise CorruptDocument(f"{name}: invalid {encoding} after its BOM: {e}", file_name=name) from e
    if data.count(0) > _MAX_NUL_SHARE * len(data):
        best = charset_normalizer.from_bytes(data).best()  # UTF-16/32 without a BOM is the only excuse
        if best is not None and best.encoding.startswith(("utf_16", "utf_32")):
            return str(best), best.encoding
        raise CorruptDocument(f"{name}: {data.count(0)} NUL bytes in {len(data)}: binary, not text", file_name=name)
    data = data.replace(b"\x00", b"")
    try:
        return data.decode("utf_8"), "utf_8"  # exact, and what nearly every text file is
    except UnicodeDecodeError:
        pass

    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise CorruptDocument(f"{name}: no text encoding fits: binary, not text", file_name=name)
    return str(best), best.encoding


def _clean(text: str) -> str:
    """NULs removed, line ends made '\\n'."""
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


# --- chunking -------------------------------------------------------------------------------------

_HSPACE_RUN = re.compile(r"[^\S\n]+")
_LEADING_HSPACE = re.compile(r"[^\S\n]*")
_BLANK_LINES = re.compile(r"\n{2,}")  # after _normalise a blank line is empty
# where a too-long paragraph may be cut, coarsest first: after a line break, after a sentence end, after a space
_CUTS = (re.compile(r"\n"), re.compile(r"[.!?…]+[\"'»”’)\]]*[^\S\n]+"), re.compile(r"[^\S\n]+"))


def chunk(extracted: Extracted, *, max_chars: int = 1200) -> list[Chunk]:
    """``extracted``'s text as pieces of at most ``max_chars`` characters, in document order.

    Paragraphs (blank-line separated; a DOCX paragraph or table) are packed, joined by a blank line,
    while they fit and are on the same PDF page and under the same DOCX heading: a chunk never spans
    two pages or two headings. A paragraph longer than ``max_chars`` is cut at line breaks, else at
    sentence ends, else at spaces; a single word longer than ``max_chars`` is cut inside.
    Whitespace: runs of spaces/tabs on a line become one (a tab when the run has one, so TSV
    columns survive); lines are stripped, except that text files keep each line's indentation; line
    breaks are kept (code, logs, CSV stay line by line); 3+ line breaks become a blank line. Empty
    chunks are dropped. Pure and deterministic. raises ValueError when ``max_chars`` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    keep_indent = extracted.kind == "text"
    chunks: list[Chunk] = []
    buf: list[str] = []
    size = 0
    key: tuple[int | None, str | None] | None = None

    def flush() -> None:
        nonlocal buf, size
        if buf:
            page, section = key if key is not None else (None, None)
            chunks.append(Chunk(len(chunks), "\n\n".join(buf), page, section))
        buf, size = [], 0

    for section in extracted.sections:
        section_key = (section.page, section.heading)
        if section_key != key:
            flush()
            key = section_key
        for paragraph in _BLANK_LINES.split(_normalise(section.text, keep_indent)):
            if not paragraph.strip():
                continue
            for piece in _split(paragraph, max_chars, 0):
                if buf and size + 2 + len(piece) > max_chars:
                    flush()
                buf.append(piece)
                size += len(piece) + (2 if len(buf) > 1 else 0)
    flush()
    return chunks


def _normalise(text: str, keep_indent: bool) -> str:
    lines = []
    for line in text.split("\n"):
        lead = _LEADING_HSPACE.match(line) if keep_indent else None  # (always matches: "*")
        indent = lead.group() if lead is not None else ""
        body = _HSPACE_RUN.sub(lambda m: "\t" if "\t" in m.group() else " ", line[len(indent):]).strip()
        lines.append(indent + body if body else "")
    return "\n".join(lines).strip("\n")


def _split(text: str, limit: int, level: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters at the coarsest cuts (``_CUTS[level:]``)
    that suffice; each piece right-stripped, empty ones dropped."""
    text = text.rstrip()
    if len(text) <= limit:
        return [text] if text.strip() else []
    if level == len(_CUTS):  # one word longer than the limit
        return [p for p in (text[i:i + limit] for i in range(0, len(text), limit)) if p.strip()]
    ends = [m.end() for m in _CUTS[level].finditer(text)]
    atoms = [text[a:b] for a, b in zip([0, *ends], [*ends, len(text)]) if b > a]
    if len(atoms) < 2:
        return _split(text, limit, level + 1)
    pieces: list[str] = []
    buf = ""
    for atom in atoms:  # each atom ends with its cut (line break, sentence end + space, space)
        if len(buf) + len(atom.rstrip()) <= limit:
            buf += atom
            continue
        if buf.strip():
            pieces.append(buf.rstrip())
        if len(atom.rstrip()) <= limit:
            buf = atom
        else:  # cut finer; its last piece may still take the atoms that follow
            *done, last = _split(atom, limit, level + 1) or [""]
            pieces.extend(done)
            buf = last + atom[len(atom.rstrip()):]
    if buf.strip():
        pieces.append(buf.rstrip())
    return pieces
