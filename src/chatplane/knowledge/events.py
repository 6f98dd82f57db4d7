"""`GET /api/kb/{kb_id}/documents/{document_id}/events`: a document's ingestion progress as
server-sent events, with the same ids, resume and keep-alives as a turn's events."""

from __future__ import annotations

from collections.abc import Mapping

from chatplane.auth.principal import Principal
from chatplane.broker.protocol import Event
from chatplane.chat.sse import BrokerEvents
from chatplane.container import Services
from chatplane.knowledge.service import document_stream

DOCUMENT_TERMINAL_EVENTS = frozenset({"document.ready", "document.failed"})


class DocumentEvents(BrokerEvents):
    terminal = DOCUMENT_TERMINAL_EVENTS

    def stream_of(self, params: Mapping[str, str]) -> str:
        return document_stream(params["document_id"])

    async def ended(
        self, services: Services, principal: Principal, params: Mapping[str, str]
    ) -> bool:
        document = await services.knowledge.get_document(
            principal, params["kb_id"], params["document_id"]
        )
        return document.status in ("ready", "failed")

    async def outcome(
        self, services: Services, principal: Principal, params: Mapping[str, str]
    ) -> Event | None:
        """Once the events expired, the document's row says how it ended."""
        latest = await services.knowledge.get_document(
            principal, params["kb_id"], params["document_id"]
        )
        if latest.status == "ready":
            return Event(id="", type="document.ready", data={"chunks": latest.chunk_count})
        if latest.status == "failed":
            error = {"code": "document_failed", "message": latest.error or "failed"}
            return Event(id="", type="document.failed", data={"error": error})
        return None
