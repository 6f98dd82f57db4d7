"""The rules of conversations and turns (no HTTP here)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import structlog
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.auth.principal import Principal
from chatplane.broker.protocol import Broker
from chatplane.chat.models import Conversation, Message, Turn
from chatplane.chat.repository import (
    INSERT_CONVERSATION,
    INSERT_TURN,
    ChatRepository,
    insert_message,
    messages_of,
    row_of,
    update_conversation,
)
from chatplane.chat.runner import fit_context
from chatplane.db.base import new_id, utcnow
from chatplane.db.cursors import decode_cursor, encode_cursor
from chatplane.db.engine import Database, is_outage
from chatplane.errors import BadRequest, ChatplaneError, Conflict, NotFound, ServiceUnavailable
from chatplane.knowledge.service import KnowledgeService, retrieval_prompt_bound
from chatplane.limits.service import Admission, LimitService
from chatplane.providers.protocol import ChatMessage, Usage
from chatplane.providers.registry import ModelRegistry, ModelRoute, cost_usd
from chatplane.providers.tokens import estimate_prompt_tokens, prompt_tokens_bound
from chatplane.settings import Settings

log = structlog.get_logger("chatplane.chat")

DEFAULT_TITLE = "New chat"
TITLE_FROM_MESSAGE_CHARS = 60
TURN_JOB = "turn"
# An Idempotency-Key: 1 to 255 printable ASCII characters, not starting or ending in a space.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")


@dataclass(frozen=True, slots=True)
class ConversationView:
    conversation: Conversation
    messages: Sequence[Message]
    active_turn_id: str | None


def title_from(content: str) -> str:
    line = " ".join(content.split())
    if len(line) <= TITLE_FROM_MESSAGE_CHARS:
        return line or DEFAULT_TITLE
    return line[:TITLE_FROM_MESSAGE_CHARS].rsplit(" ", 1)[0] + "…"


def check_idempotency_key(key: str) -> str:
    if _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise BadRequest(
            "The idempotency key must be 1 to 255 printable ASCII characters",
            code="invalid_idempotency_key",
        )
    return key


def request_hash(content: str, model: str | None, knowledge_base_ids: Sequence[str] | None) -> str:
    """The fingerprint of a message post's body, to tell a retry from another request
    that reuses its idempotency key."""
    body = {"content": content, "model": model, "knowledge_base_ids": knowledge_base_ids}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _replay(turn: Turn, fingerprint: str | None) -> Turn:
    """The turn an earlier post with the same idempotency key created, if it had this body."""
    if turn.request_hash != fingerprint:
        raise Conflict(
            "This idempotency key was already used with another request body",
            code="idempotency_key_reused",
        )
    return turn


class ChatService:
    def __init__(
        self,
        db: Database,
        broker: Broker,
        registry: ModelRegistry,
        limits: LimitService,
        settings: Settings,
        knowledge: KnowledgeService,
    ) -> None:
        self.db = db
        self.broker = broker
        self.registry = registry
        self.limits = limits
        self.settings = settings
        self.knowledge = knowledge

    async def _model(self, name: str | None) -> str:
        route = await self.registry.resolve(name or self.registry.default_model)
        return route.name

    async def _knowledge_bases(
        self, principal: Principal, kb_ids: Sequence[str] | None
    ) -> list[str] | None:
        """Knowledge bases the caller may read (404 for any other); None for none."""
        if not kb_ids:
            return None
        return await self.knowledge.readable(principal, kb_ids)

    async def create_conversation(
        self,
        principal: Principal,
        *,
        title: str | None,
        model: str | None,
        knowledge_base_ids: Sequence[str] | None = None,
    ) -> Conversation:
        now = utcnow()
        conversation = Conversation(
            id=new_id(),
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            title=(title or "").strip() or DEFAULT_TITLE,
            model=await self._model(model),
            knowledge_base_ids=await self._knowledge_bases(principal, knowledge_base_ids),
            created_at=now,
            updated_at=now,
        )
        async with self.db.session() as session:
            await session.execute(INSERT_CONVERSATION, row_of(conversation))
            await session.commit()
        return conversation

    async def list_conversations(
        self, principal: Principal, *, limit: int, cursor: str | None
    ) -> tuple[Sequence[Conversation], str | None]:
        before = decode_cursor(cursor) if cursor else None
        async with self.db.session() as session:
            repo = _repo(session, principal)
            page = await repo.conversations_page(limit=limit + 1, before=before)
        items = page[:limit]
        next_cursor = (
            encode_cursor(items[-1].updated_at, items[-1].id) if len(page) > limit else None
        )
        return items, next_cursor

    async def get_conversation(
        self, principal: Principal, conversation_id: str
    ) -> ConversationView:
        async with self.db.session() as session:
            repo = _repo(session, principal)
            conversation = await _require(repo, conversation_id)
            messages = await messages_of(session, conversation_id)
            active = await repo.active_turn_id(conversation_id)
        return ConversationView(conversation, messages, active)

    async def update_conversation(
        self,
        principal: Principal,
        conversation_id: str,
        *,
        title: str | None = None,
        knowledge_base_ids: Sequence[str] | None = None,
    ) -> Conversation:
        """Rename it and/or set its knowledge bases (`[]` detaches them all); a patch
        with neither changes nothing."""
        if title is not None:
            title = title.strip()
            if not title:
                raise BadRequest("The title is empty", code="validation_error", field="title")
        kb_ids = (
            await self._knowledge_bases(principal, knowledge_base_ids)
            if knowledge_base_ids is not None
            else None
        )
        async with self.db.session() as session:
            conversation = await _require(_repo(session, principal), conversation_id)
            if title is None and knowledge_base_ids is None:
                return conversation  # nothing to change
            if title is not None:
                conversation.title = title
            if knowledge_base_ids is not None:
                conversation.knowledge_base_ids = kb_ids
            conversation.updated_at = utcnow()
            await session.commit()
        return conversation

    async def delete_conversation(self, principal: Principal, conversation_id: str) -> None:
        async with self.db.session() as session:
            repo = _repo(session, principal)
            active = await repo.active_turn_id(conversation_id)
            if not await repo.delete_conversation(conversation_id):
                raise NotFound("No such conversation", code="conversation_not_found")
            await session.commit()
        if active is not None:
            await self.broker.request_cancel(active)

    async def post_message(
        self,
        principal: Principal,
        conversation_id: str,
        *,
        content: str,
        model: str | None,
        knowledge_base_ids: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Turn:
        """A message's own knowledge bases must all be readable (404 otherwise); the
        conversation's are used when it gives none, less any deleted or made private since.

        With an idempotency key, a post the conversation already has under that key is not
        stored again: the same body answers its turn, another body is refused (409). The
        unique index on (conversation, key) decides between two that race."""
        now = utcnow()
        turn_id = new_id()
        fingerprint: str | None = None
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            fingerprint = request_hash(content, model, knowledge_base_ids)
        async with self.db.session() as session:
            repo = _repo(session, principal)
            conversation = await _require(repo, conversation_id)
            if idempotency_key is not None:
                earlier = await repo.turn_posted_with(conversation_id, idempotency_key)
                if earlier is not None:
                    return _replay(earlier, fingerprint)
            if knowledge_base_ids is not None:
                kb_ids = await self._knowledge_bases(principal, knowledge_base_ids)
            else:
                kb_ids = await self.knowledge.still_readable(
                    principal, conversation.knowledge_base_ids or []
                )
            route = await self.registry.resolve(model or conversation.model)
            admission = await self._admit(
                principal, session, conversation_id, content, route, turn_id, bool(kb_ids)
            )
            try:
                # Core statements, not a unit of work: the message's seq comes from its
                # INSERT, the conversation is updated without loading it again.
                message = {
                    "id": new_id(),
                    "conversation_id": conversation_id,
                    "tenant_id": principal.tenant_id,
                    "role": "user",
                    "content": content,
                    "created_at": now,
                }
                seq = await insert_message(session, message)
                turn = Turn(
                    id=turn_id,
                    conversation_id=conversation_id,
                    tenant_id=principal.tenant_id,
                    user_id=principal.user_id,
                    api_key_id=principal.api_key_id,
                    user_message_id=message["id"],
                    model=route.name,
                    knowledge_base_ids=kb_ids or None,
                    status="queued",
                    attempts=0,
                    created_at=now,
                    idempotency_key=idempotency_key,
                    request_hash=fingerprint,
                    budget_keys=(
                        list(admission.reservation.keys) if admission.reservation else None
                    ),
                )
                await session.execute(INSERT_TURN, row_of(turn))
                changes: dict[str, object] = {"updated_at": now}
                if seq == 1 and conversation.title == DEFAULT_TITLE:
                    changes["title"] = title_from(content)
                await update_conversation(session, conversation_id, changes)
                await self._commit_turn(session, turn_id)
            except IntegrityError:
                await admission.finish(0.0)
                if idempotency_key is None:
                    raise
                # The other post's INSERT won the unique index, so it has committed by now
                # (this INSERT waited for it): answer with its turn.
                await session.rollback()
                winner = await repo.turn_posted_with(conversation_id, idempotency_key)
                if winner is None:
                    raise
                log.info("idempotent_post_raced", turn_id=winner.id)
                return _replay(winner, fingerprint)
            except BaseException:
                await admission.finish(0.0)
                raise
        payload: dict[str, object] = {"turn_id": turn.id}
        if turn.budget_keys:  # also in the job, for the workers of the release before
            payload["budget_keys"] = turn.budget_keys
        try:
            queued = (turn.id, "turn.queued", {"turn_id": turn.id})
            await self.broker.enqueue(TURN_JOB, payload, event=queued)
        except ChatplaneError as exc:
            await admission.finish(0.0)
            await self._withdraw(turn, exc)
            raise ServiceUnavailable(
                "The message could not be queued; retry shortly", retry_after=2
            ) from exc
        return turn

    async def _admit(
        self,
        principal: Principal,
        session: AsyncSession,
        conversation_id: str,
        content: str,
        route: ModelRoute,
        turn_id: str,
        retrieves: bool,
    ) -> Admission:
        """Tokens per minute and a budget reservation for the turn (its requests were
        counted when the call was authenticated). The worst case: every byte of the context
        the runner will send (with the retrieved passages, when it retrieves), and every
        reply token it may ask for."""
        passages_bound = retrieval_prompt_bound(self.settings) if retrieves else 0

        async def measure() -> tuple[int, float]:
            history = [
                ChatMessage(role=m.role, content=m.content)  # type: ignore[arg-type]
                for m in await messages_of(session, conversation_id)
            ]
            context = fit_context(
                [*history, ChatMessage(role="user", content=content)],
                self.settings.context_max_tokens,
            )
            max_out = self.settings.max_output_tokens
            worst = cost_usd(route, Usage(prompt_tokens_bound(context) + passages_bound, max_out))
            return estimate_prompt_tokens(context) + max_out, worst

        return await self.limits.admit(
            principal,
            lease_id=turn_id,
            zone="chat",
            measure=measure,
            count_request=False,
            concurrent=False,
        )

    async def _commit_turn(self, session: AsyncSession, turn_id: str) -> None:
        """Commit a new message and its turn. A connection that breaks during the commit
        leaves it unknown whether the rows are stored: the turn is queued all the same
        (the worker runs a turn only when its row exists), so a stored message is never
        left unanswered, and one that was not stored costs a no-op job."""
        try:
            await session.commit()
        except (DBAPIError, OSError) as exc:
            if is_outage(exc):
                log.warning("turn_commit_uncertain", turn_id=turn_id)
                try:
                    await self.broker.enqueue(TURN_JOB, {"turn_id": turn_id})
                except ChatplaneError as enqueue_failed:
                    log.error("turn_enqueue_failed", turn_id=turn_id, error=enqueue_failed.detail)
            raise

    async def _withdraw(self, turn: Turn, exc: ChatplaneError) -> None:
        """Take back a message whose turn could not be queued, so a retry does not
        store it twice."""
        log.error("turn_enqueue_failed", turn_id=turn.id, error=exc.detail)
        async with self.db.session() as session:
            stored = await session.get(Turn, turn.id)
            if stored is not None and stored.status == "queued":
                await session.delete(stored)
                message = await session.get(Message, turn.user_message_id)
                if message is not None:
                    await session.delete(message)
                await session.commit()

    async def get_turn(self, principal: Principal, turn_id: str) -> Turn:
        async with self.db.one_read() as session:
            turn = await _repo(session, principal).turn(turn_id)
        if turn is None:
            raise NotFound("No such turn", code="turn_not_found")
        return turn

    async def cancel_turn(self, principal: Principal, turn_id: str) -> Turn:
        turn = await self.get_turn(principal, turn_id)
        if turn.status in ("queued", "running"):
            await self.broker.request_cancel(turn_id)
        return turn


def _repo(session: AsyncSession, principal: Principal) -> ChatRepository:
    return ChatRepository(session, tenant_id=principal.tenant_id, user_id=principal.user_id)


async def _require(repo: ChatRepository, conversation_id: str) -> Conversation:
    conversation = await repo.conversation(conversation_id)
    if conversation is None:
        raise NotFound("No such conversation", code="conversation_not_found")
    return conversation
