"""Text out of uploaded documents: the type is sniffed from the content, and each format's
reader returns sections (a run of text under one heading path on one page).

Extraction is CPU-bound and synchronous; callers run it in a thread. Every reader works under
`ExtractionLimits`: a DOCX's declared unpacked size is checked before anything is inflated
(zip bombs), pypdf caps each stream it inflates, and the readers check the text they have
gathered and the time spent between pages and paragraphs, so a hostile file fails instead of
holding a worker forever."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from chatplane.errors import ChatplaneError

if TYPE_CHECKING:
    from chatplane.knowledge.readers import SectionBuilder

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
PLAIN_TEXT = "text/plain"
SUPPORTED_MEDIA_TYPES = (PDF, DOCX, HTML, MARKDOWN, PLAIN_TEXT)
ALLOWED = "PDF, DOCX, HTML, Markdown or plain text (UTF-8, or UTF-16 with a byte-order mark)"


class UnsupportedDocument(ChatplaneError):
    code = "unsupported_media_type"
    status = 415
    title = "This type of file is not supported"


class DocumentUnreadable(ChatplaneError):
    code = "document_unreadable"
    status = 422
    title = "The document could not be read"


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading on one page; paragraphs are separated by a blank line."""

    text: str
    heading: str | None  # the heading path, "Install > On Linux"; None before any heading
    page: int | None  # 1-based for PDF; None for formats without pages


@dataclass(frozen=True, slots=True)
class ExtractedDocument:
    media_type: str
    sections: list[Section]
    pages: int | None


@dataclass(frozen=True, slots=True)
class ExtractionLimits:
    max_unpacked_bytes: int = 256 * 1024 * 1024  # a DOCX's parts, uncompressed, all together
    max_pages: int = 10_000
    max_text_chars: int = 64 * 1024 * 1024
    max_seconds: float = 600.0


DEFAULT_LIMITS = ExtractionLimits()

# --- sniffing ---------------------------------------------------------------------------

_BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x7fELF", "an ELF executable"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office file (.doc, .xls or .ppt)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
)
_ZIP_KINDS = (
    ("xl/workbook.xml", "an Excel workbook (.xlsx)"),
    ("ppt/presentation.xml", "a PowerPoint presentation (.pptx)"),
    ("META-INF/container.xml", "an EPUB or OpenDocument file"),
)
# A name that promises a binary format while the content is text is a mislabelled or
# renamed file: refusing it beats indexing it as something it is not.
_BINARY_SUFFIXES = frozenset(
    {
        *(".pdf", ".docx", ".doc", ".docm", ".xlsx", ".xls", ".pptx", ".ppt", ".odt", ".ods"),
        *(".odp", ".epub", ".rtf", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif"),
        *(".tiff", ".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".exe", ".dll", ".so", ".bin"),
    }
)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f]")  # tab, newlines, ESC are text
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_HTML_TAG = re.compile(r"<(?:!doctype\s+html|html|head|body)[\s>/]", re.IGNORECASE)
_MARKDOWN_HEADING = re.compile(r"^ {0,3}(?:#{1,6}[ \t]+\S|\S[^\n]*\n {0,3}=+[ \t]*$)", re.M)


def sniff_media_type(data: bytes, filename: str | None) -> str:
    """The media type by content; the name only tells Markdown from plain text (and refuses
    text named as a binary format)."""
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"PK\x03\x04"):
        return _sniff_zip(data)
    for signature, found in _BINARY_SIGNATURES:
        if data.startswith(signature):
            _unsupported(found)
    try:
        text = decode_text(data)
    except UnsupportedDocument:
        if b"%PDF-" in data[:1024]:  # binary junk before the header, as readers allow
            return PDF
        if _is_legacy_html(data):
            return HTML
        raise
    suffix = _suffix(filename)
    if suffix in _BINARY_SUFFIXES:
        _unsupported(f"text, but named {suffix}")
    head = text[:2048].lstrip()
    if head.startswith("{\\rtf"):
        _unsupported("an RTF document")
    if head.startswith("<") and _HTML_TAG.search(head):
        return HTML
    if suffix in (".md", ".markdown") or _MARKDOWN_HEADING.search(text):
        return MARKDOWN
    return PLAIN_TEXT


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without a BOM) or UTF-16 with a BOM, without binary control characters."""
    encoding = "utf-16" if data.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        _unsupported("binary data (not UTF-8 or UTF-16 text)")
    if _CONTROL_CHARS.search(text):
        _unsupported("binary data (text with NUL or control bytes)")
    return text


def _is_legacy_html(data: bytes) -> bool:
    """HTML in a legacy charset (its <meta charset> names it; the HTML reader follows it)."""
    head = data[:2048].decode("latin-1").lstrip()
    return (
        head.startswith("<")
        and _HTML_TAG.search(head) is not None
        and not _CONTROL_BYTES.search(data)
    )


def _sniff_zip(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        _unsupported("a ZIP archive that cannot be opened")
    if "word/document.xml" not in names:
        _unsupported(next((kind for name, kind in _ZIP_KINDS if name in names), "a ZIP archive"))
    return DOCX


def _suffix(filename: str | None) -> str:
    name = (filename or "").rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


def _unsupported(found: str) -> NoReturn:
    raise UnsupportedDocument(f"The file is {found}; allowed: {ALLOWED}.", found=found)


# --- extraction -------------------------------------------------------------------------


def extract(
    data: bytes, media_type: str, *, limits: ExtractionLimits = DEFAULT_LIMITS
) -> ExtractedDocument:
    """Sections of text with heading paths (and pages for PDF). Raises DocumentUnreadable for
    a damaged, encrypted or text-less document and UnsupportedDocument for an unknown type."""
    # Imported here: the readers load pypdf, python-docx and selectolax, which the web
    # process (it only sniffs) never needs; and they import this module's types.
    from chatplane.knowledge import readers

    read: dict[str, Callable[[bytes, SectionBuilder], int | None]] = {
        PDF: readers.read_pdf,
        DOCX: readers.read_docx,
        HTML: readers.read_html,
        MARKDOWN: readers.read_markdown,
        PLAIN_TEXT: readers.read_plain_text,
    }
    if media_type not in read:
        _unsupported(f"of type {media_type}")
    builder = readers.SectionBuilder(limits)
    pages = read[media_type](data, builder)
    builder.flush()
    if not builder.sections:
        what = "no extractable text (a scanned PDF?)" if media_type == PDF else "no text"
        raise DocumentUnreadable(f"The document has {what}.")
    return ExtractedDocument(media_type=media_type, sections=builder.sections, pages=pages)
