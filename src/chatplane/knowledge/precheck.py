"""What an upload is checked for before anything is stored: a PDF or DOCX the workers could
never read (damaged, encrypted, not a document at all) is refused at once with 422, instead
of being accepted and failing later. Quick and structural: the text itself is extracted on
the worker. CPU-bound and sync: callers run it in a thread."""

from __future__ import annotations

from chatplane.knowledge.extract import DOCX, PDF, DocumentUnreadable, extract


def check_readable(data: bytes, media_type: str) -> None:
    """Raise `DocumentUnreadable` for a PDF that does not open (or only with a password) or
    has no pages, and for a DOCX that does not parse; other types were checked by sniffing."""
    if media_type == PDF:
        _check_pdf(data)
    elif media_type == DOCX:
        extract(data, media_type)  # parsing is the check; cheap next to the upload itself


def _check_pdf(data: bytes) -> None:
    from chatplane.knowledge.pdf import open_pdf

    try:
        pages = len(open_pdf(data).pages)
    except DocumentUnreadable:
        raise
    except Exception as exc:  # pypdf raises many kinds for a damaged file
        raise DocumentUnreadable(f"The PDF is damaged ({exc.__class__.__name__}: {exc}).") from exc
    if pages == 0:
        raise DocumentUnreadable("The PDF has no pages.")
