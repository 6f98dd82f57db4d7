"""HTTP routes of the native chat API (HTTP only; rules live in ChatService)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from chatplane.auth.deps import ChatPrincipal, ServicesDep
from chatplane.chat.models import Conversation, Turn
from chatplane.chat.schemas import (
    CancelOut,
    ConversationDetail,
    ConversationIn,
    ConversationOut,
    ConversationPage,
    ConversationPatch,
    MessageIn,
    MessageOut,
    ModelOut,
    ModelsOut,
    TurnAccepted,
    TurnOut,
    turn_error,
)

router = APIRouter(prefix="/api", tags=["chat"])


def _conversation(conversation: Conversation) -> ConversationOut:
    return ConversationOut(
        id=conversation.id,
        title=conversation.title,
        model=conversation.model,
        knowledge_base_ids=conversation.knowledge_base_ids or [],
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
    )


def _turn(turn: Turn) -> TurnOut:
    return TurnOut(
        id=turn.id,
        conversation_id=turn.conversation_id,
        status=turn.status,
        model=turn.model,
        attempts=turn.attempts,
        error=turn_error(turn.error_code, turn.error_message),
        assistant_message_id=turn.assistant_message_id,
        created_at=turn.created_at,
        started_at=turn.started_at,
        finished_at=turn.finished_at,
    )


@router.get("/models", response_model=ModelsOut)
async def list_models(_: ChatPrincipal, services: ServicesDep) -> ModelsOut:
    registry = services.registry
    return ModelsOut(
        default_model=registry.default_model,
        models=[ModelOut(id=route.name, provider=route.kind) for route in registry.models()],
    )


@router.get("/conversations", response_model=ConversationPage)
async def list_conversations(
    principal: ChatPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ConversationPage:
    items, next_cursor = await services.chat.list_conversations(
        principal, limit=limit, cursor=cursor
    )
    return ConversationPage(items=[_conversation(c) for c in items], next_cursor=next_cursor)


@router.post("/conversations", status_code=201, response_model=ConversationOut)
async def create_conversation(
    body: ConversationIn, principal: ChatPrincipal, services: ServicesDep
) -> ConversationOut:
    conversation = await services.chat.create_conversation(
        principal,
        title=body.title,
        model=body.model,
        knowledge_base_ids=body.knowledge_base_ids,
    )
    return _conversation(conversation)


@router.get("/conversations/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(
    conversation_id: str, principal: ChatPrincipal, services: ServicesDep
) -> ConversationDetail:
    view = await services.chat.get_conversation(principal, conversation_id)
    return ConversationDetail(
        **_conversation(view.conversation).model_dump(),
        active_turn_id=view.active_turn_id,
        messages=[MessageOut.model_validate(m, from_attributes=True) for m in view.messages],
    )


@router.patch("/conversations/{conversation_id}", response_model=ConversationOut)
async def update_conversation(
    conversation_id: str,
    body: ConversationPatch,
    principal: ChatPrincipal,
    services: ServicesDep,
) -> ConversationOut:
    """Rename it, or change the knowledge bases its turns retrieve from."""
    conversation = await services.chat.update_conversation(
        principal,
        conversation_id,
        title=body.title,
        knowledge_base_ids=body.knowledge_base_ids,
    )
    return _conversation(conversation)


@router.delete("/conversations/{conversation_id}", status_code=204)
async def delete_conversation(
    conversation_id: str, principal: ChatPrincipal, services: ServicesDep
) -> Response:
    await services.chat.delete_conversation(principal, conversation_id)
    return Response(status_code=204)


@router.post(
    "/conversations/{conversation_id}/messages", status_code=202, response_model=TurnAccepted
)
async def post_message(
    conversation_id: str,
    body: MessageIn,
    principal: ChatPrincipal,
    services: ServicesDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> TurnAccepted:
    """Answered at once with 202; the turn runs on a worker. While this server drains
    (a restart), 503 `draining` with `Retry-After`: send it again. With an
    `Idempotency-Key`, sending it again (after a time-out, a 502 or a 503) never stores it
    twice: the same key and body answer the first post's 202."""
    request.app.state.drain.refuse_new_work()
    turn = await services.chat.post_message(
        principal,
        conversation_id,
        content=body.content,
        model=body.model,
        knowledge_base_ids=body.knowledge_base_ids,
        idempotency_key=idempotency_key,
    )
    return TurnAccepted(
        turn_id=turn.id,
        message_id=turn.user_message_id,
        events_url=f"/api/turns/{turn.id}/events",
    )


@router.get("/turns/{turn_id}", response_model=TurnOut)
async def get_turn(turn_id: str, principal: ChatPrincipal, services: ServicesDep) -> TurnOut:
    return _turn(await services.chat.get_turn(principal, turn_id))


@router.post("/turns/{turn_id}/cancel", status_code=202, response_model=CancelOut)
async def cancel_turn(turn_id: str, principal: ChatPrincipal, services: ServicesDep) -> CancelOut:
    turn = await services.chat.cancel_turn(principal, turn_id)
    return CancelOut(turn_id=turn.id, status=turn.status)
