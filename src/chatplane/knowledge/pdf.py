"""Opening a PDF the way a viewer does, for the upload check and the worker's reader alike.
A module of its own so the API process loads pypdf only when a PDF arrives, not the other
parsers with it."""

from __future__ import annotations

import io

from pypdf import PasswordType, PdfReader

from chatplane.knowledge.extract import DocumentUnreadable


def open_pdf(data: bytes) -> PdfReader:
    """The reader of a PDF that opens without a password. An empty user password (a file that
    only restricts printing or copying) opens it, as in any viewer; a real one is a document
    we cannot read. pypdf's own errors on a damaged file are the caller's to translate."""
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise DocumentUnreadable("The PDF is encrypted with a password.")
    return reader
