"""Queries of the chat tables. Every read of a user's data is scoped by tenant and owner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.chat.models import TERMINAL_STATES, Conversation, Message, Turn
from chatplane.db.base import Base, UTCDateTime
from chatplane.db.cursors import older_than
from chatplane.usage.models import UsageRecord

# The statements of a turn's path, built once with bind parameters. A statement built per
# call costs its construction and its cache key on every execution (SQLAlchemy caches the
# compiled SQL, not the statement): one `UPDATE turns ... WHERE id = ?` on the embedded
# database took 700-935 µs of CPU built per call through the ORM, ~390 prebuilt on the
# table. Writes go to the tables (no ORM bulk path); reads that return objects stay ORM.
CONVERSATIONS = cast(Table, Conversation.__table__)
MESSAGES = cast(Table, Message.__table__)
TURNS = cast(Table, Turn.__table__)

# A bind parameter may not share its name with a column the statement sets.
_OF_CONVERSATION: BindParameter[str] = bindparam("of_conversation")

INSERT_CONVERSATION = insert(CONVERSATIONS)
INSERT_USAGE = insert(cast(Table, UsageRecord.__table__))
INSERT_TURN = insert(TURNS)
# A message after the conversation's last: its `seq` is computed by the INSERT itself, not by
# a query before it.
INSERT_MESSAGE = (
    insert(MESSAGES)
    .values(
        seq=select(func.coalesce(func.max(MESSAGES.c.seq), 0) + 1)
        .where(MESSAGES.c.conversation_id == _OF_CONVERSATION)
        .scalar_subquery()
    )
    .returning(MESSAGES.c.seq)
)
# The SET clause comes from the parameters: `updated_at`, and `title` when it changes.
UPDATE_CONVERSATION = update(CONVERSATIONS).where(CONVERSATIONS.c.id == _OF_CONVERSATION)

_OWNED_CONVERSATION = select(Conversation).where(
    Conversation.id == bindparam("conversation_id"),
    Conversation.tenant_id == bindparam("tenant_id"),
    Conversation.user_id == bindparam("user_id"),
)
_MESSAGES = (
    select(Message)
    .where(Message.conversation_id == bindparam("conversation_id"))
    .order_by(Message.seq, Message.created_at)
)
_START_TURN = (
    update(Turn)
    .where(Turn.id == bindparam("turn_id"), Turn.status.not_in(TERMINAL_STATES))
    .values(
        status="running",
        attempts=Turn.attempts + 1,
        started_at=bindparam("started", type_=UTCDateTime()),
    )
    .returning(Turn)
    .execution_options(synchronize_session=False)
)
_FINISH_TURN = (
    update(TURNS)
    .where(TURNS.c.id == bindparam("turn_id"), TURNS.c.status.not_in(TERMINAL_STATES))
    .values(
        status=bindparam("outcome"),
        finished_at=bindparam("finished", type_=UTCDateTime()),
        error_code=bindparam("code"),
        error_message=bindparam("detail"),
        assistant_message_id=bindparam("answer_id"),
    )
)
# The conversation up to and including the turn's question.
_HISTORY = (
    select(Message)
    .where(
        Message.conversation_id == bindparam("conversation_id"),
        Message.seq
        <= select(Message.seq).where(Message.id == bindparam("question_id")).scalar_subquery(),
    )
    .order_by(Message.seq, Message.created_at)
)


class ChatRepository:
    def __init__(self, session: AsyncSession, *, tenant_id: str, user_id: str) -> None:
        self.session = session
        self.tenant_id = tenant_id
        self.user_id = user_id

    def _owned(self) -> ColumnElement[bool]:
        return and_(Conversation.tenant_id == self.tenant_id, Conversation.user_id == self.user_id)

    async def conversation(self, conversation_id: str) -> Conversation | None:
        result = await self.session.scalars(
            _OWNED_CONVERSATION,
            {
                "conversation_id": conversation_id,
                "tenant_id": self.tenant_id,
                "user_id": self.user_id,
            },
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
        result = await self.session.scalars(_START_TURN, {"turn_id": turn_id, "started": when})
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
            _FINISH_TURN,
            {
                "turn_id": turn_id,
                "outcome": status,
                "finished": when,
                "code": error_code,
                "detail": error_message,
                "answer_id": assistant_message_id,
            },
        )
        return bool(getattr(result, "rowcount", 0))

    async def history(self, turn: Turn) -> Sequence[Message]:
        """The conversation up to and including the turn's question, in one query."""
        parameters = {"conversation_id": turn.conversation_id, "question_id": turn.user_message_id}
        return (await self.session.scalars(_HISTORY, parameters)).all()

    async def add_message(self, values: dict[str, Any]) -> None:
        await insert_message(self.session, values)

    async def touch_conversation(self, conversation_id: str, when: datetime) -> None:
        await update_conversation(self.session, conversation_id, {"updated_at": when})


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


async def insert_message(session: AsyncSession, values: dict[str, Any]) -> int:
    """INSERT a message (its column values) after the conversation's last; its `seq`."""
    parameters = {**values, "of_conversation": values["conversation_id"]}
    return int((await session.execute(INSERT_MESSAGE, parameters)).scalar_one())


async def update_conversation(
    session: AsyncSession, conversation_id: str, changes: dict[str, Any]
) -> None:
    """SET the columns of `changes` on the conversation (no ownership check: the caller's
    transaction has checked it)."""
    await session.execute(UPDATE_CONVERSATION, {**changes, "of_conversation": conversation_id})


async def insert_usage(session: AsyncSession, usage: UsageRecord, when: datetime) -> None:
    """A turn's usage record, created at `when` (its turn's end)."""
    await session.execute(INSERT_USAGE, {**row_of(usage), "created_at": when})


async def messages_of(session: AsyncSession, conversation_id: str) -> Sequence[Message]:
    return (await session.scalars(_MESSAGES, {"conversation_id": conversation_id})).all()
