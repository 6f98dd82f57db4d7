"""One reader per format: PDF (pypdf), DOCX (python-docx), HTML (selectolax: Lexbor, the
HTML5 parsing algorithm in C; BeautifulSoup parsed about 0.1 MB/s here), Markdown
(markdown-it-py) and plain text. Each feeds a `SectionBuilder` and returns the page count
(PDF) or None. Used through `chatplane.knowledge.extract.extract`."""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docx
from docx.oxml.ns import qn
from docx.styles.style import ParagraphStyle
from markdown_it import MarkdownIt
from selectolax.lexbor import LexborHTMLParser, LexborNode

from chatplane.errors import ChatplaneError
from chatplane.knowledge.extract import (
    DocumentUnreadable,
    ExtractionLimits,
    Section,
    UnsupportedDocument,
    decode_text,
)
from chatplane.knowledge.pdf import open_pdf


class SectionBuilder:
    """Collects paragraphs under the current heading path and page, within the limits."""

    def __init__(self, limits: ExtractionLimits) -> None:
        self.limits = limits
        self.sections: list[Section] = []
        self.page: int | None = None
        self._path: list[tuple[int, str]] = []
        self._paragraphs: list[str] = []
        self._chars = 0
        self._deadline = time.monotonic() + limits.max_seconds

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        self.flush()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, text))

    def paragraph(self, text: str) -> None:
        self.check_time()
        text = normalise(text)
        if not text:
            return
        self._chars += len(text)
        if self._chars > self.limits.max_text_chars:
            raise DocumentUnreadable(
                f"The document has more than {self.limits.max_text_chars} characters of text."
            )
        self._paragraphs.append(text)

    def new_page(self, page: int) -> None:
        self.flush()
        self.page = page

    def flush(self) -> None:
        if self._paragraphs:
            heading = " > ".join(text for _, text in self._path) or None
            self.sections.append(Section("\n\n".join(self._paragraphs), heading, self.page))
            self._paragraphs = []

    def check_time(self) -> None:
        if time.monotonic() > self._deadline:
            raise DocumentUnreadable(
                f"Reading the document took longer than {self.limits.max_seconds:g} s."
            )


_LINE_BREAKS = str.maketrans({"\r": "\n", "\f": "\n", "\v": "\n", "\u2028": "\n"})
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(r"[\u00ad\u200b\u2060\ufeff]")
_INNER_SPACE = re.compile(r"(?<=\S)[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise(text: str) -> str:
    """One newline style, no invisible characters, single spaces inside lines (a line's
    indentation stays), paragraphs separated by exactly one blank line."""
    text = text.replace("\r\n", "\n").replace("\u2029", "\n\n").translate(_LINE_BREAKS)
    text = _INVISIBLE.sub("", _SPACES.sub(" ", text))
    lines = (_INNER_SPACE.sub(" ", line).rstrip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


@contextmanager
def unreadable_on_error(what: str) -> Iterator[None]:
    """pypdf and python-docx raise many types on damaged input (PdfReadError, KeyError,
    ValueError, XMLSyntaxError, ...); from them, each one means "this file cannot be read"."""
    try:
        yield
    except ChatplaneError:
        raise
    except Exception as exc:
        raise DocumentUnreadable(f"{what} ({exc.__class__.__name__}: {exc}).") from exc


# --- PDF --------------------------------------------------------------------------------


def read_pdf(data: bytes, builder: SectionBuilder) -> int:
    with unreadable_on_error("The PDF is damaged"):
        reader = open_pdf(data)
        pages = len(reader.pages)
    if pages > builder.limits.max_pages:
        raise DocumentUnreadable(f"The PDF has {pages} pages; at most {builder.limits.max_pages}.")
    for number, page in enumerate(reader.pages, start=1):
        builder.new_page(number)
        with unreadable_on_error(f"Page {number} of the PDF is damaged"):
            text = page.extract_text()
        builder.paragraph(text)
    return pages


# --- DOCX -------------------------------------------------------------------------------

_W_P, _W_TBL, _W_TR, _W_TC = qn("w:p"), qn("w:tbl"), qn("w:tr"), qn("w:tc")
_W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML = qn("w:sdt"), qn("w:sdtContent"), qn("w:customXml")
_W_T, _W_TAB, _W_BR, _W_CR = qn("w:t"), qn("w:tab"), qn("w:br"), qn("w:cr")
_W_NO_BREAK_HYPHEN = qn("w:noBreakHyphen")
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_HEADING_STYLE = re.compile(r"heading ([1-9])", re.IGNORECASE)


def read_docx(data: bytes, builder: SectionBuilder) -> None:
    _check_unpacked_size(data, builder.limits)
    with unreadable_on_error("The DOCX file is damaged"):
        document = docx.Document(io.BytesIO(data))
        levels = _heading_styles(document)
    for block in _blocks(document.element.body):
        if block.tag == _W_TBL:
            builder.paragraph(_table_text(block))
            continue
        level = _heading_level(block, levels)
        if level is None:
            builder.paragraph(_paragraph_text(block))
        else:
            builder.heading(level, _paragraph_text(block))


def _check_unpacked_size(data: bytes, limits: ExtractionLimits) -> None:
    """zipfile never inflates past an entry's declared size, so the declared sizes bound the
    memory and time a DOCX can take: refuse a zip bomb before opening it."""
    with (
        unreadable_on_error("The DOCX file is damaged"),
        zipfile.ZipFile(io.BytesIO(data)) as archive,
    ):
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > limits.max_unpacked_bytes:
        raise DocumentUnreadable(
            f"The DOCX file unpacks to {unpacked} bytes; at most {limits.max_unpacked_bytes}."
        )


def _heading_styles(document: Any) -> dict[str, int]:
    """style id -> heading level, for "Heading N" styles and styles based on them."""
    levels: dict[str, int] = {}
    for style in document.styles:
        if not isinstance(style, ParagraphStyle):
            continue
        ancestor: ParagraphStyle | None = style
        for _ in range(10):  # base-style chains are short; a cycle must not loop forever
            if ancestor is None:
                break
            match = _HEADING_STYLE.fullmatch(ancestor.name or "")
            if match:
                levels[style.style_id] = int(match[1])
                break
            ancestor = ancestor.base_style
    return levels


def _heading_level(paragraph: Any, levels: dict[str, int]) -> int | None:
    properties = paragraph.find(qn("w:pPr"))
    if properties is None:
        return None
    style = properties.find(qn("w:pStyle"))
    if style is not None and style.get(qn("w:val")) in levels:
        return levels[style.get(qn("w:val"))]
    outline = properties.find(qn("w:outlineLvl"))
    if outline is not None and (value := outline.get(qn("w:val"), "")).isdigit():
        return int(value) + 1 if int(value) < 9 else None  # 9 means body text
    return None


def _blocks(container: Any) -> Iterator[Any]:
    """Paragraphs and tables in document order, looking inside content controls."""
    for child in container.iterchildren():
        if child.tag in (_W_P, _W_TBL):
            yield child
        elif child.tag == _W_SDT:
            content = child.find(_W_SDT_CONTENT)
            if content is not None:
                yield from _blocks(content)
        elif child.tag == _W_CUSTOM_XML:
            yield from _blocks(child)


def _paragraph_text(paragraph: Any) -> str:
    """Every run's text, hyperlinks and text boxes included; deleted text and field codes are
    other elements and stay out; a shape's VML fallback repeats its text, so it is skipped."""
    parts: list[str] = []
    for element in paragraph.iter(_W_T, _W_TAB, _W_BR, _W_CR, _W_NO_BREAK_HYPHEN, _W_P):
        if any(True for _ in element.iterancestors(_MC_FALLBACK)):
            continue
        if element.tag == _W_T:
            parts.append(element.text or "")
        elif element.tag == _W_TAB:
            parts.append("\t")
        elif element.tag == _W_NO_BREAK_HYPHEN:
            parts.append("-")
        elif element is not paragraph:  # a break, or a text box's own paragraph
            parts.append("\n")
    return "".join(parts)


def _table_text(table: Any) -> str:
    """A row per line, cells joined by " | "; a merged cell is one <w:tc>, so nothing repeats."""
    rows = []
    for row in table.iter(_W_TR):
        if next(row.iterancestors(_W_TBL)) is not table:
            continue  # a nested table's row: its cell renders it
        cells = []
        for cell in row.iterchildren(_W_TC):
            parts = [
                _table_text(block) if block.tag == _W_TBL else _paragraph_text(block)
                for block in _blocks(cell)
            ]
            cells.append(" ".join(" ".join(parts).split()))
        rows.append(" | ".join(cell for cell in cells if cell))
    return "\n".join(row for row in rows if row)


# --- HTML -------------------------------------------------------------------------------

_DROPPED = frozenset({"script", "style", "noscript", "template", "nav", "head", "svg", "iframe"})
_BLOCK_TAGS = frozenset(
    {
        *("p", "div", "section", "article", "main", "header", "footer", "aside", "blockquote"),
        *("pre", "ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr"),
        *("caption", "figure", "figcaption", "address", "hr", "form", "fieldset", "details"),
        *("summary", "h1", "h2", "h3", "h4", "h5", "h6"),
    }
)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_WHITESPACE = re.compile(r"\s+")


def read_html(data: bytes, builder: SectionBuilder) -> None:
    try:
        parser = LexborHTMLParser(decode_text(data))
    except UnsupportedDocument:  # a legacy charset: Lexbor finds it in the <meta charset>
        parser = LexborHTMLParser(data, encoding=True)
    if parser.root is not None:
        _HtmlWalker(builder).walk(parser.root)


class _HtmlWalker:
    """Visible text in document order: blocks become paragraphs, h1-h6 the heading path.
    Iterative, so deeply nested markup cannot exhaust the stack."""

    def __init__(self, builder: SectionBuilder) -> None:
        self.builder = builder
        self.text: list[str] = []
        self.heading: list[str] | None = None
        self.in_pre = 0
        self.row_has_cell = False

    def walk(self, root: LexborNode) -> None:
        stack: list[tuple[LexborNode, bool]] = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            tag = node.tag or "-"
            if tag == "-text":
                text = node.text_content or ""
                text = text if self.in_pre else _WHITESPACE.sub(" ", text)
                (self.heading if self.heading is not None else self.text).append(text)
            elif tag.startswith("-"):  # comments, doctype, processing instructions
                continue
            elif leaving:
                self.leave(tag)
            elif tag not in _DROPPED:
                self.enter(tag)
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(list(node.iter(True))))
        self.end_paragraph()

    def enter(self, tag: str) -> None:
        if tag in _HEADINGS:
            self.end_paragraph()
            self.heading = []
        elif tag in _BLOCK_TAGS:
            self.end_paragraph()
        if tag == "br":
            self.text.append("\n")
        elif tag == "pre":
            self.in_pre += 1
        elif tag == "tr":
            self.row_has_cell = False
        elif tag in ("td", "th"):
            if self.row_has_cell:
                self.text.append(" | ")
            self.row_has_cell = True

    def leave(self, tag: str) -> None:
        if tag in _HEADINGS and self.heading is not None:
            self.builder.heading(_HEADINGS[tag], "".join(self.heading))
            self.heading = None
        elif tag in _BLOCK_TAGS:
            self.end_paragraph()
        if tag == "pre":
            self.in_pre -= 1

    def end_paragraph(self) -> None:
        if self.text:
            self.builder.paragraph("".join(self.text))
            self.text = []


# --- Markdown and plain text ------------------------------------------------------------

_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$")


def read_markdown(data: bytes, builder: SectionBuilder) -> None:
    """Headings from markdown-it's block tokens (ATX and setext; never inside code fences);
    each section keeps its Markdown source text."""
    lines = normalise_newlines(decode_text(data)).split("\n")
    start = _front_matter_end(lines)
    if start:
        builder.paragraph("\n".join(lines[:start]))
    tokens = MarkdownIt("commonmark").parse("\n".join(lines[start:]))
    body_from = start
    for index, token in enumerate(tokens):
        if token.type != "heading_open" or token.level != 0 or token.map is None:
            continue
        first, last = token.map[0] + start, token.map[1] + start
        builder.paragraph("\n".join(lines[body_from:first]))
        builder.heading(int(token.tag[1]), _inline_text(tokens[index + 1].children or []))
        body_from = last
    builder.paragraph("\n".join(lines[body_from:]))


def _front_matter_end(lines: list[str]) -> int:
    """The line after a leading YAML front-matter block (which markdown-it would read as a
    rule and a setext heading), or 0."""
    if not lines or lines[0].rstrip() != "---":
        return 0
    for index, line in enumerate(lines[1:200], start=1):
        if _FRONT_MATTER_END.match(line):
            return index + 1
    return 0


def _inline_text(children: list[Any]) -> str:
    return "".join(
        " " if child.type in ("softbreak", "hardbreak") else child.content
        for child in children
        if child.type in ("text", "code_inline", "softbreak", "hardbreak")
    )


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_plain_text(data: bytes, builder: SectionBuilder) -> None:
    builder.paragraph(decode_text(data))
