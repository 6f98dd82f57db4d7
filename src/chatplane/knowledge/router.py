"""HTTP routes of knowledge bases (`/api/kb/...`); the rules live in KnowledgeService."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Query, Response, UploadFile

from chatplane.auth.deps import ChatPrincipal, ServicesDep
from chatplane.knowledge.models import Document
from chatplane.knowledge.schemas import (
    DocumentAccepted,
    DocumentOut,
    DocumentPage,
    KnowledgeBaseIn,
    KnowledgeBaseList,
    KnowledgeBaseOut,
    KnowledgeBasePatch,
    KnowledgeHealth,
    SearchHit,
    SearchIn,
    SearchOut,
)
from chatplane.knowledge.service import KnowledgeBaseView, events_url

router = APIRouter(prefix="/api/kb", tags=["knowledge"])


def _kb(view: KnowledgeBaseView) -> KnowledgeBaseOut:
    kb = view.kb
    return KnowledgeBaseOut(
        id=kb.id,
        name=kb.name,
        description=kb.description,
        visibility=kb.visibility,
        owner_id=kb.owner_id,
        can_edit=view.can_edit,
        documents=view.documents,
        embedding_model=kb.embedding_model,
        created_at=kb.created_at,
        updated_at=kb.updated_at,
    )


def _document(document: Document) -> DocumentOut:
    return DocumentOut(
        id=document.id,
        kb_id=document.kb_id,
        filename=document.filename,
        media_type=document.media_type,
        size_bytes=document.size_bytes,
        status=document.status,
        error=document.error,
        chunks=document.chunk_count,
        pages=document.pages,
        created_at=document.created_at,
        indexed_at=document.indexed_at,
    )


@router.get("/health", response_model=KnowledgeHealth)
async def knowledge_health(_: ChatPrincipal, services: ServicesDep) -> KnowledgeHealth:
    """Ingestion at a glance: documents by status, the job queue, the embedder."""
    return KnowledgeHealth(**await services.knowledge.health())


@router.get("", response_model=KnowledgeBaseList)
async def list_knowledge_bases(
    principal: ChatPrincipal, services: ServicesDep
) -> KnowledgeBaseList:
    views = await services.knowledge.list_knowledge_bases(principal)
    return KnowledgeBaseList(items=[_kb(view) for view in views])


@router.post("", status_code=201, response_model=KnowledgeBaseOut)
async def create_knowledge_base(
    body: KnowledgeBaseIn, principal: ChatPrincipal, services: ServicesDep
) -> KnowledgeBaseOut:
    view = await services.knowledge.create_knowledge_base(
        principal, name=body.name, description=body.description, visibility=body.visibility
    )
    return _kb(view)


@router.get("/{kb_id}", response_model=KnowledgeBaseOut)
async def get_knowledge_base(
    kb_id: str, principal: ChatPrincipal, services: ServicesDep
) -> KnowledgeBaseOut:
    return _kb(await services.knowledge.get_knowledge_base(principal, kb_id))


@router.patch("/{kb_id}", response_model=KnowledgeBaseOut)
async def update_knowledge_base(
    kb_id: str, body: KnowledgeBasePatch, principal: ChatPrincipal, services: ServicesDep
) -> KnowledgeBaseOut:
    view = await services.knowledge.update_knowledge_base(
        principal,
        kb_id,
        name=body.name,
        description=body.description,
        visibility=body.visibility,
    )
    return _kb(view)


@router.delete("/{kb_id}", status_code=204)
async def delete_knowledge_base(
    kb_id: str, principal: ChatPrincipal, services: ServicesDep
) -> Response:
    await services.knowledge.delete_knowledge_base(principal, kb_id)
    return Response(status_code=204)


@router.post(
    "/{kb_id}/documents",
    status_code=202,
    response_model=DocumentAccepted,
    responses={200: {"model": DocumentAccepted, "description": "The same content is there"}},
)
async def upload_document(
    kb_id: str,
    file: Annotated[UploadFile, File(description="The document (text, Markdown, HTML, PDF, DOCX)")],
    principal: ChatPrincipal,
    services: ServicesDep,
    response: Response,
) -> DocumentAccepted:
    """Answered at once with 202; a worker indexes the document (follow `events_url`).
    The same content uploaded again answers 200 with the document already there."""
    data = await file.read()
    upload = await services.knowledge.upload(principal, kb_id, filename=file.filename, data=data)
    if upload.duplicate:
        response.status_code = 200
    document = upload.document
    return DocumentAccepted(
        document_id=document.id,
        status=document.status,
        events_url=events_url(document),
        duplicate=upload.duplicate,
    )


@router.get("/{kb_id}/documents", response_model=DocumentPage)
async def list_documents(
    kb_id: str,
    principal: ChatPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DocumentPage:
    items, next_cursor = await services.knowledge.list_documents(
        principal, kb_id, limit=limit, cursor=cursor
    )
    return DocumentPage(items=[_document(d) for d in items], next_cursor=next_cursor)


@router.get("/{kb_id}/documents/{document_id}", response_model=DocumentOut)
async def get_document(
    kb_id: str, document_id: str, principal: ChatPrincipal, services: ServicesDep
) -> DocumentOut:
    return _document(await services.knowledge.get_document(principal, kb_id, document_id))


@router.delete("/{kb_id}/documents/{document_id}", status_code=204)
async def delete_document(
    kb_id: str, document_id: str, principal: ChatPrincipal, services: ServicesDep
) -> Response:
    await services.knowledge.delete_document(principal, kb_id, document_id)
    return Response(status_code=204)


@router.get(
    "/{kb_id}/documents/{document_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The original"}},
)
async def document_content(
    kb_id: str, document_id: str, principal: ChatPrincipal, services: ServicesDep
) -> Response:
    document, data = await services.knowledge.document_content(principal, kb_id, document_id)
    disposition = f"attachment; filename*=UTF-8''{quote(document.filename)}"
    return Response(
        content=data,
        media_type=document.media_type,
        headers={"content-disposition": disposition, "x-content-type-options": "nosniff"},
    )


@router.post("/{kb_id}/search", response_model=SearchOut)
async def search(
    kb_id: str, body: SearchIn, principal: ChatPrincipal, services: ServicesDep
) -> SearchOut:
    """Ranked passages for a raw query (a hit test of the retrieval)."""
    result, filenames = await services.knowledge.search(
        principal, kb_id, query=body.query, top_k=body.top_k
    )
    return SearchOut(
        mode=result.mode,
        results=[
            SearchHit(
                chunk_id=p.chunk_id,
                document_id=p.document_id,
                filename=filenames.get(p.document_id, ""),
                text=p.text,
                score=p.score,
                page=p.page,
                heading=p.heading,
            )
            for p in result.passages
        ],
    )
