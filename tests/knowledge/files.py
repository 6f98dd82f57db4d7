"""Real sample files for knowledge tests, built in memory and deterministic: PDFs (fpdf2,
encrypted with pypdf), DOCX (python-docx), HTML, Markdown, and files we must refuse (a plain
zip, an xlsx-like zip, a PNG, random bytes, a zip bomb)."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import Literal

import docx
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

# --- PDF --------------------------------------------------------------------------------


def pdf_bytes(pages: Sequence[str]) -> bytes:
    """One page per string (Latin-1 text; "" makes a page without text). Paragraphs are
    separated by blank lines in the string."""
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def scanned_pdf_bytes(pages: int = 2) -> bytes:
    """Pages with only drawings on them, as a scanner's images would be: no text to extract."""
    pdf = FPDF(format="A4")
    for _ in range(pages):
        pdf.add_page()
        pdf.set_fill_color(40, 40, 40)
        pdf.rect(20, 20, 120, 60, style="F")
    return bytes(pdf.output())


def encrypted_pdf_bytes(pages: Sequence[str], *, user_password: str = "secret") -> bytes:
    """AES-256 encrypted; with user_password="" it opens without a password (owner-only)."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf_bytes(pages))))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def truncated_pdf_bytes(pages: Sequence[str]) -> bytes:
    data = pdf_bytes(pages)
    return data[: len(data) // 2]


# --- DOCX -------------------------------------------------------------------------------

DocxBlock = (
    tuple[Literal["h1", "h2", "h3", "p", "title"], str] | tuple[Literal["table"], list[list[str]]]
)


def docx_bytes(blocks: Sequence[DocxBlock]) -> bytes:
    """Blocks in order: ("h1" | "h2" | "h3", heading), ("p", paragraph), ("title", text),
    ("table", rows of cell texts)."""
    document = docx.Document()
    for kind, content in blocks:
        if kind == "table":
            assert isinstance(content, list)
            table = document.add_table(rows=len(content), cols=len(content[0]))
            for row, values in zip(table.rows, content, strict=True):
                for cell, value in zip(row.cells, values, strict=True):
                    cell.text = value
        elif kind == "p":
            assert isinstance(content, str)
            document.add_paragraph(content)
        elif kind == "title":
            assert isinstance(content, str)
            document.add_heading(content, level=0)
        else:
            assert isinstance(content, str)
            document.add_heading(content, level=int(kind[1]))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_with_extra_entry(blocks: Sequence[DocxBlock], name: str, size: int) -> bytes:
    """A valid DOCX plus one more part of `size` zero bytes, deflated to almost nothing: a zip
    bomb when `size` is large."""
    out = io.BytesIO(docx_bytes(blocks))
    with (
        zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open(name, "w", force_zip64=True) as part,
    ):
        block = bytes(1024 * 1024)
        for _ in range(size // len(block)):
            part.write(block)
        part.write(bytes(size % len(block)))
    return out.getvalue()


def docx_with_broken_xml() -> bytes:
    """A zip that sniffs as DOCX whose document part is not XML."""
    out = io.BytesIO(docx_bytes([("p", "placeholder")]))
    rebuilt = io.BytesIO()
    with zipfile.ZipFile(out) as source, zipfile.ZipFile(rebuilt, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "word/document.xml":
                data = b"<w:document this is not xml"
            target.writestr(info, data)
    return rebuilt.getvalue()


# --- HTML and Markdown ------------------------------------------------------------------


def html_bytes(
    body: str, *, title: str = "Sample", head: str = "", encoding: str = "utf-8"
) -> bytes:
    """A whole page around `body` (raw HTML); `head` adds to the <head>."""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="{encoding}"><title>{title}</title>{head}</head>\n'
        f"<body>\n{body}\n</body></html>\n"
    ).encode(encoding)


def markdown_text(blocks: Sequence[tuple[int, str] | str]) -> str:
    """(level, text) makes an ATX heading; a string is a block (paragraph, list, fence, ...)."""
    parts = [
        f"{'#' * block[0]} {block[1]}" if isinstance(block, tuple) else block for block in blocks
    ]
    return "\n\n".join(parts) + "\n"


# --- files to refuse --------------------------------------------------------------------


def zip_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def xlsx_like_bytes() -> bytes:
    return zip_bytes(
        {
            "[Content_Types].xml": b"<Types/>",
            "xl/workbook.xml": b"<workbook/>",
            "xl/worksheets/sheet1.xml": b"<worksheet/>",
        }
    )


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A real (grey) PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(pixels))
        + chunk(b"IEND", b"")
    )


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)
