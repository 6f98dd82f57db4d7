"""`GET /api/kb/{kb_id}/documents/{document_id}/events`: a document's ingestion progress as
server-sent events, with the same ids, resume and keep-alives as a turn's events."""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from chatplane.auth.deps import authenticate_request, count_request, require_scope
from chatplane.broker.protocol import Event
from chatplane.chat.sse import EventStream, resume_after
from chatplane.container import Services
from chatplane.errors import ChatplaneError
from chatplane.http.problems import error_response
from chatplane.knowledge.service import document_stream

DOCUMENT_TERMINAL_EVENTS = frozenset({"document.ready", "document.failed"})


class DocumentEvents:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        connection = HTTPConnection(scope)
        kb_id: str = scope["path_params"]["kb_id"]
        document_id: str = scope["path_params"]["document_id"]
        stream = document_stream(document_id)
        try:
            principal = require_scope(
                await authenticate_request(
                    services, method="GET", headers=connection.headers, cookies=connection.cookies
                ),
                "chat",
            )
            await count_request(services, principal, scope)
            document = await services.knowledge.get_document(principal, kb_id, document_id)
            after = resume_after(connection)
            events = await services.broker.read(stream, after, timeout_s=0)
        except ChatplaneError as exc:
            await error_response(scope["path"], exc)(scope, receive, send)
            return

        async def stored_outcome() -> Event | None:
            """Once the events expired, the document's row says how it ended."""
            latest = await services.knowledge.get_document(principal, kb_id, document_id)
            if latest.status == "ready":
                return Event(id="", type="document.ready", data={"chunks": latest.chunk_count})
            if latest.status == "failed":
                error = {"code": "document_failed", "message": latest.error or "failed"}
                return Event(id="", type="document.failed", data={"error": error})
            return None

        ended = document.status in ("ready", "failed") and not events
        del connection, document
        await EventStream(
            services,
            stream,
            after,
            events,
            stored_outcome,
            scope["app"].state.drain,
            terminal=DOCUMENT_TERMINAL_EVENTS,
        ).run(receive, send, first_wait_s=0.0 if ended else None)
