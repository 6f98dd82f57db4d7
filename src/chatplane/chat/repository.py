"""Queries of the chat tables. Every read of a user's data is scoped by tenant and owner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Insert,
    ScalarSelect,
    and_,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.chat.models import TERMINAL_STATES, Conversation, Message, Turn
from chatplane.db.base import Base
from chatplane.db.cursors import older_than


class ChatRepository:
    def __init__(self, session: AsyncSession, *, tenant_id: str, user_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.user_id = user_id

    def _owned(self) -> ColumnElement[bool]:
        return and_(Conversation.tenant_id == self.tenant_id, Conversation.user_id == self.user_id)

    async def conversation(self, conversation_id: str) -> Conversation | None:
        result = await self.session.scalars(
            select(Conversation).where(Conversation.id == conversation_id, self._owned())
        )
        return result.first()

    async def conversations_page(
        self, *, limit: int, before: tuple[datetime, str] | None
    ) -> Sequence[Conversation]:
        statement = select(Conversation).where(self._owned())
        if before is not None:
            statement = statement.where(
                older_than(Conversation.updated_at, Conversation.id, before)
            )
        statement = statement.order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        return (await self.session.scalars(statement.limit(limit))).all()

    async def delete_conversation(self, conversation_id: str) -> bool:
        result = await self.session.execute(
            delete(Conversation).where(Conversation.id == conversation_id, self._owned())
        )
        return bool(getattr(result, "rowcount", 0))

    async def turn(self, turn_id: str) -> Turn | None:
        result = await self.session.scalars(
            select(Turn).where(
                Turn.id == turn_id, Turn.tenant_id == self.tenant_id, Turn.user_id == self.user_id
            )
        )
        return result.first()

    async def turn_posted_with(self, conversation_id: str, idempotency_key: str) -> Turn | None:
        result = await self.session.scalars(
            select(Turn).where(
                Turn.conversation_id == conversation_id,
                Turn.idempotency_key == idempotency_key,
                Turn.tenant_id == self.tenant_id,
                Turn.user_id == self.user_id,
            )
        )
        return result.first()

    async def active_turn_id(self, conversation_id: str) -> str | None:
        result = await self.session.scalars(
            select(Turn.id)
            .where(Turn.conversation_id == conversation_id, Turn.status.in_(("queued", "running")))
            .order_by(Turn.created_at.desc())
            .limit(1)
        )
        return result.first()


class TurnRepository:
    """Queries the turn runner makes; the turn id itself is the scope. Core statements on
    the hot path: a turn's start is two statements and its end four, with no unit of work."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def turn(self, turn_id: str) -> Turn | None:
        return await self.session.get(Turn, turn_id)

    async def start(self, turn_id: str, when: datetime) -> Turn | None:
        """Move a queued (or orphaned running) turn to running and return it (`attempts`
        counts this run); None if it already ended or no longer exists.

        On Postgres its commit does not wait for the write-ahead log to reach the disk (the
        first token waits for it): a database crash can lose only this mark, and a lost mark
        leaves the turn `queued`, which its run still ends as usual."""
        if self.session.get_bind().dialect.name == "postgresql":
            await self.session.execute(text("SET LOCAL synchronous_commit TO OFF"))
        result = await self.session.scalars(
            update(Turn)
            .where(Turn.id == turn_id, Turn.status.not_in(TERMINAL_STATES))
            .values(status="running", attempts=Turn.attempts + 1, started_at=when)
            .returning(Turn)
            .execution_options(synchronize_session=False)
        )
        return result.first()

    async def finish(
        self,
        turn_id: str,
        *,
        status: str,
        when: datetime,
        error_code: str | None = None,
        error_message: str | None = None,
        assistant_message_id: str | None = None,
    ) -> bool:
        result = await self.session.execute(
            update(Turn)
            .where(Turn.id == turn_id, Turn.status.not_in(TERMINAL_STATES))
            .values(
                status=status,
                finished_at=when,
                error_code=error_code,
                error_message=error_message,
                assistant_message_id=assistant_message_id,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))

    async def history(self, turn: Turn) -> Sequence[Message]:
        """The conversation up to and including the turn's question, in one query."""
        question_seq = (
            select(Message.seq).where(Message.id == turn.user_message_id).scalar_subquery()
        )
        statement = (
            select(Message)
            .where(Message.conversation_id == turn.conversation_id, Message.seq <= question_seq)
            .order_by(Message.seq, Message.created_at)
        )
        return (await self.session.scalars(statement)).all()

    async def add_message(self, values: dict[str, Any]) -> None:
        await self.session.execute(insert_message(values))

    async def touch_conversation(self, conversation_id: str, when: datetime) -> None:
        await self.session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=when)
            .execution_options(synchronize_session=False)
        )


def row_of(instance: Base) -> dict[str, Any]:
    """The column values an object was given, for a Core INSERT (cheaper than a unit of
    work; the object stays unattached, so a retry after a broken commit inserts the same
    row). A column it was not given is left out, so the INSERT applies its default."""
    given = vars(instance)
    return {
        column.key: given[column.key]
        for column in instance.__table__.columns
        if column.key in given
    }


def seq_after_last(conversation_id: str) -> ScalarSelect[int]:
    """The next `seq` of a conversation, as a subquery an INSERT can use."""
    return (
        select(func.coalesce(func.max(Message.seq), 0) + 1)
        .where(Message.conversation_id == conversation_id)
        .scalar_subquery()
    )


def insert_message(values: dict[str, Any]) -> Insert:
    """INSERT a message after the conversation's last: its `seq` is computed by the
    statement itself, not by a query before it."""
    return insert(Message).values({**values, "seq": seq_after_last(str(values["conversation_id"]))})


async def messages_of(session: AsyncSession, conversation_id: str) -> Sequence[Message]:
    statement = (
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.seq, Message.created_at)
    )
    return (await session.scalars(statement)).all()
