"""Sniffing by content and extraction of every supported format, from real files."""

from __future__ import annotations

import pytest

from chatplane.knowledge.extract import (
    DOCX,
    HTML,
    MARKDOWN,
    PDF,
    PLAIN_TEXT,
    DocumentUnreadable,
    ExtractedDocument,
    ExtractionLimits,
    Section,
    UnsupportedDocument,
    extract,
    sniff_media_type,
)
from tests.knowledge.files import (
    DocxBlock,
    docx_bytes,
    docx_with_broken_xml,
    docx_with_extra_entry,
    encrypted_pdf_bytes,
    html_bytes,
    markdown_text,
    pdf_bytes,
    png_bytes,
    random_bytes,
    scanned_pdf_bytes,
    truncated_pdf_bytes,
    xlsx_like_bytes,
    zip_bytes,
)

ALLOWED_NAMES = ("PDF", "DOCX", "HTML", "Markdown", "plain text")


def sniffed_and_extracted(data: bytes, filename: str | None = None) -> ExtractedDocument:
    return extract(data, sniff_media_type(data, filename))


def texts(doc: ExtractedDocument) -> list[tuple[str | None, int | None, str]]:
    return [(s.heading, s.page, s.text) for s in doc.sections]


# --- sniffing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "expected"),
    [
        (pdf_bytes(["Some text."]), "notes.txt", PDF),
        (b"\x00\x00junk\r\n" + pdf_bytes(["Junk before the header."]), None, PDF),
        (b"A note: PDF files start with %PDF-1.7 and a newline.", "note.txt", PLAIN_TEXT),
        (docx_bytes([("p", "Hello")]), "upload.bin", DOCX),
        (html_bytes("<p>Hi</p>"), "page.txt", HTML),
        (b"<html><body><p>no doctype</p></body></html>", None, HTML),
        (b"<!-- generated -->\n<!doctype html><p>x</p>", "x.md", HTML),
        (b"# Title\n\nBody", "notes.txt", MARKDOWN),
        (b"Title\n=====\n\nBody", None, MARKDOWN),
        (b"No headings at all", "readme.md", MARKDOWN),
        (b"No headings at all", "README.MARKDOWN", MARKDOWN),
        (b"Just some words.\nAnd a second line.", "notes.txt", PLAIN_TEXT),
        (b"Just some words.", None, PLAIN_TEXT),
        (b"a <b>tag</b> inside text is not HTML", "x.html", PLAIN_TEXT),
        ("caf\u00e9 with a BOM".encode("utf-8-sig"), "a.txt", PLAIN_TEXT),
        ("UTF-16 little endian".encode("utf-16-le").join([b"\xff\xfe", b""]), None, PLAIN_TEXT),
        ("UTF-16 big endian".encode("utf-16-be").join([b"\xfe\xff", b""]), None, PLAIN_TEXT),
        (b"colour \x1b[31mred\x1b[0m\tand a tab", "log.txt", PLAIN_TEXT),
        (html_bytes("<p>caf\u00e9</p>", encoding="latin-1"), None, HTML),
    ],
)
def test_sniff_decides_by_content(data: bytes, filename: str | None, expected: str) -> None:
    assert sniff_media_type(data, filename) == expected


@pytest.mark.parametrize(
    ("data", "filename", "found"),
    [
        (zip_bytes({"a.txt": b"hello"}), "archive.docx", "a ZIP archive"),
        (xlsx_like_bytes(), "book.docx", "an Excel workbook"),
        (png_bytes(), "photo.txt", "a PNG image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "photo.pdf", "a JPEG image"),
        (b"\x7fELF\x02\x01\x01" + bytes(64), "program.md", "an ELF executable"),
        (random_bytes(4096), "notes.txt", "binary data"),
        (b"text\x00with a NUL", "notes.txt", "binary data"),
        (b"plain words, not a PDF", "report.pdf", "named .pdf"),
        (b"plain words", "letter.docx", "named .docx"),
        (b"{\\rtf1\\ansi Hello}", "letter.txt", "an RTF document"),
        (b"PK\x03\x04 a zip header and nothing else", None, "a ZIP archive that cannot be opened"),
        (b"UTF-16 without a BOM".decode().encode("utf-16-le"), "a.txt", "binary data"),
    ],
)
def test_sniff_refuses_other_content_naming_what_it_found(
    data: bytes, filename: str | None, found: str
) -> None:
    with pytest.raises(UnsupportedDocument) as caught:
        sniff_media_type(data, filename)
    error = caught.value
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert found in error.detail
    assert all(name in error.detail for name in ALLOWED_NAMES)


def test_extract_refuses_an_unknown_media_type() -> None:
    with pytest.raises(UnsupportedDocument, match="image/png"):
        extract(png_bytes(), "image/png")


# --- PDF --------------------------------------------------------------------------------


def test_pdf_sections_are_pages_numbered_from_one() -> None:
    data = pdf_bytes(["Alpha page. Two sentences here.", "", "Gamma page on the third sheet."])
    doc = sniffed_and_extracted(data, "scan.pdf")
    assert doc.media_type == PDF
    assert doc.pages == 3
    # The empty second page gives no section; the numbering still follows the sheets.
    assert texts(doc) == [
        (None, 1, "Alpha page. Two sentences here."),
        (None, 3, "Gamma page on the third sheet."),
    ]


def test_pdf_with_junk_before_its_header_is_read() -> None:
    data = b"\x00\x00junk\r\n" + pdf_bytes(["Junk before the header."])
    assert texts(extract(data, PDF)) == [(None, 1, "Junk before the header.")]


def test_pdf_long_page_keeps_every_word() -> None:
    words = [f"word{i}" for i in range(400)]
    doc = extract(pdf_bytes([" ".join(words)]), PDF)
    assert doc.sections[0].text.split() == words


def test_pdf_without_text_is_unreadable_as_scanned() -> None:
    with pytest.raises(DocumentUnreadable, match="no extractable text") as caught:
        extract(scanned_pdf_bytes(), PDF)
    assert (caught.value.status, caught.value.code) == (422, "document_unreadable")


def test_pdf_with_a_password_is_unreadable() -> None:
    data = encrypted_pdf_bytes(["Top secret."])
    assert sniff_media_type(data, "secret.pdf") == PDF
    with pytest.raises(DocumentUnreadable, match="encrypted"):
        extract(data, PDF)


def test_pdf_encrypted_without_a_user_password_opens() -> None:
    doc = extract(encrypted_pdf_bytes(["Only the owner may print."], user_password=""), PDF)
    assert texts(doc) == [(None, 1, "Only the owner may print.")]


def test_truncated_pdf_is_unreadable() -> None:
    data = truncated_pdf_bytes(["First page text.", "Second page text."])
    assert sniff_media_type(data, None) == PDF
    with pytest.raises(DocumentUnreadable, match="damaged"):
        extract(data, PDF)


def test_pdf_page_limit() -> None:
    with pytest.raises(DocumentUnreadable, match="3 pages; at most 2"):
        extract(pdf_bytes(["a", "b", "c"]), PDF, limits=ExtractionLimits(max_pages=2))


# --- DOCX -------------------------------------------------------------------------------

GUIDE_BLOCKS: list[DocxBlock] = [
    ("p", "Before any heading."),
    ("h1", "Install"),
    ("p", "Install it first."),
    ("h2", "On Linux"),
    ("p", "Use the package manager."),
    ("table", [["System", "Command"], ["Debian", "apt install chatplane"]]),
    ("h3", "Debian details"),
    ("p", "Debian ships it."),
    ("h2", "On macOS"),
    ("p", "Use Homebrew."),
    ("h1", "Usage"),
    ("p", "Run it."),
    ("p", "Then   open\tthe  browser."),
]


def test_docx_headings_build_paths_and_tables_are_text() -> None:
    doc = sniffed_and_extracted(docx_bytes(GUIDE_BLOCKS), "guide.docx")
    assert doc.media_type == DOCX
    assert doc.pages is None
    assert texts(doc) == [
        (None, None, "Before any heading."),
        ("Install", None, "Install it first."),
        (
            "Install > On Linux",
            None,
            "Use the package manager.\n\nSystem | Command\nDebian | apt install chatplane",
        ),
        ("Install > On Linux > Debian details", None, "Debian ships it."),
        ("Install > On macOS", None, "Use Homebrew."),
        ("Usage", None, "Run it.\n\nThen open the browser."),
    ]


def test_docx_heading_without_body_gives_no_section() -> None:
    doc = extract(docx_bytes([("h1", "Empty"), ("h1", "Full"), ("p", "Text.")]), DOCX)
    assert texts(doc) == [("Full", None, "Text.")]


def test_docx_with_only_headings_is_unreadable() -> None:
    with pytest.raises(DocumentUnreadable, match="no text"):
        extract(docx_bytes([("h1", "Nothing under it")]), DOCX)


def test_docx_with_broken_xml_is_unreadable() -> None:
    data = docx_with_broken_xml()
    assert sniff_media_type(data, None) == DOCX
    with pytest.raises(DocumentUnreadable, match="DOCX file is damaged"):
        extract(data, DOCX)


def test_docx_zip_bomb_is_refused_before_inflating() -> None:
    bomb = docx_with_extra_entry([("p", "Hi")], "word/media/image1.bin", 300 * 1024 * 1024)
    assert len(bomb) < 2 * 1024 * 1024
    assert sniff_media_type(bomb, "bomb.docx") == DOCX
    with pytest.raises(DocumentUnreadable, match="unpacks to"):
        extract(bomb, DOCX)


def test_docx_unpacked_size_limit_is_configurable() -> None:
    data = docx_with_extra_entry([("p", "Hi")], "word/media/image1.bin", 2 * 1024 * 1024)
    assert texts(extract(data, DOCX)) == [(None, None, "Hi")]
    with pytest.raises(DocumentUnreadable, match="unpacks to"):
        extract(data, DOCX, limits=ExtractionLimits(max_unpacked_bytes=1024 * 1024))


# --- HTML -------------------------------------------------------------------------------

PAGE = """
<nav><a href="/">Home</a> <a href="/docs">Docs</a></nav>
<header><p>Site banner</p></header>
<h1>Chatplane   <small>guide</small></h1>
<p>Hello <b>bold</b>
   world. <!-- a comment --> Still here.</p>
<script>var hidden = "script text";</script>
<noscript>Enable scripts</noscript>
<h2>Lists</h2>
<ul><li>one</li><li>two <em>items</em></li></ul>
<h3>Table</h3>
<table><tr><th>Name</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
<h2>Code</h2>
<pre>def f():
    return 1</pre>
<p>line<br>break</p>
<h1>Second</h1>
<div>Last&nbsp;words.</div>
"""


def test_html_drops_chrome_and_builds_heading_paths() -> None:
    data = html_bytes(PAGE, head="<style>p { color: red }</style>")
    doc = sniffed_and_extracted(data, "page.html")
    assert doc.media_type == HTML
    assert texts(doc) == [
        (None, None, "Site banner"),
        ("Chatplane guide", None, "Hello bold world. Still here."),
        ("Chatplane guide > Lists", None, "one\n\ntwo items"),
        ("Chatplane guide > Lists > Table", None, "Name | Value\n\na | 1"),
        ("Chatplane guide > Code", None, "def f():\n    return 1\n\nline\nbreak"),
        ("Second", None, "Last words."),
    ]
    everything = " ".join(s.text for s in doc.sections)
    for dropped in ("script text", "Enable scripts", "Home", "color", "Sample"):
        assert dropped not in everything


def test_html_in_a_legacy_charset_follows_its_meta_charset() -> None:
    data = html_bytes("<h1>Caf\u00e9</h1><p>Cr\u00e8me br\u00fbl\u00e9e.</p>", encoding="latin-1")
    assert texts(extract(data, HTML)) == [("Caf\u00e9", None, "Cr\u00e8me br\u00fbl\u00e9e.")]


def test_html_deeply_nested_does_not_exhaust_the_stack() -> None:
    body = "<div>" * 5000 + "<p>deep text</p>" + "</div>" * 5000
    assert texts(extract(html_bytes(body), HTML)) == [(None, None, "deep text")]


# --- Markdown and plain text ------------------------------------------------------------


def test_markdown_headings_atx_and_setext_never_inside_fences() -> None:
    text = markdown_text(
        [
            "Preface line.",
            (1, "Guide"),
            "Intro paragraph.",
            (2, "Install `chatplane`"),
            "```sh\n# not a heading\npip install chatplane\n```",
            "Setext title\n============",
            "Under setext.",
            (3, "Deep *dive*"),
            "- item one\n- item two",
            "> # quoted, not a section\n> text",
        ]
    )
    doc = sniffed_and_extracted(text.encode(), "guide.txt")
    assert doc.media_type == MARKDOWN
    assert texts(doc) == [
        (None, None, "Preface line."),
        ("Guide", None, "Intro paragraph."),
        ("Guide > Install chatplane", None, "```sh\n# not a heading\npip install chatplane\n```"),
        ("Setext title", None, "Under setext."),
        (
            "Setext title > Deep dive",
            None,
            "- item one\n- item two\n\n> # quoted, not a section\n> text",
        ),
    ]


def test_markdown_front_matter_is_text_not_a_heading() -> None:
    text = "---\ntitle: Notes\ntags: [a]\n---\nBody first.\n\n## Part\n\nPart text.\n"
    doc = extract(text.encode(), MARKDOWN)
    assert texts(doc) == [
        (None, None, "---\ntitle: Notes\ntags: [a]\n---\n\nBody first."),
        ("Part", None, "Part text."),
    ]


def test_plain_text_is_one_section_with_whitespace_normalised() -> None:
    raw = (
        "  First\u00a0line   with\tspaces \r\nsecond line\r\n\r\n\r\n\r\n  indented\u200b text\n\n"
    )
    doc = sniffed_and_extracted(raw.encode(), "notes.txt")
    assert doc.media_type == PLAIN_TEXT
    assert doc.sections == [
        Section("First line with spaces\nsecond line\n\n  indented text", None, None)
    ]


def test_utf16_text_is_decoded() -> None:
    doc = sniffed_and_extracted("Grüße aus Köln.".encode("utf-16"), "gruss.txt")
    assert texts(doc) == [(None, None, "Grüße aus Köln.")]


@pytest.mark.parametrize("data", [b"", b"   \n\n\t  \n"])
def test_text_without_words_is_unreadable(data: bytes) -> None:
    with pytest.raises(DocumentUnreadable, match="no text"):
        sniffed_and_extracted(data, "empty.txt")


def test_text_limit_and_time_limit() -> None:
    with pytest.raises(DocumentUnreadable, match="more than 10 characters"):
        extract(b"eleven chars", PLAIN_TEXT, limits=ExtractionLimits(max_text_chars=10))
    with pytest.raises(DocumentUnreadable, match="took longer than"):
        extract(docx_bytes(GUIDE_BLOCKS), DOCX, limits=ExtractionLimits(max_seconds=-1))
