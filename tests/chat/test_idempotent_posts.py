"""A message post whose COMMIT reached the database while its caller saw the connection
break (a 503): the caller's retry with the same idempotency key gets the stored turn
instead of storing the message twice. On SQLite and on Postgres."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatplane.auth.principal import Principal
from chatplane.container import Services, build_services
from chatplane.db import migrate
from chatplane.errors import DatabaseUnavailable
from tests.conftest import make_settings
from tests.scale.test_database_outage import adds, answers_lost


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the embedded SQLite."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None


@pytest.fixture
async def services(database_url: str | None, tmp_path: Path) -> AsyncIterator[Services]:
    """Services with the in-process broker and no worker: the turns stay queued."""
    if database_url is not None:
        await migrate.upgrade(database_url)
    settings = make_settings(tmp_path, database_url=database_url, mock_chunk_delay_ms=0)
    services = await build_services(settings, run_turns=False)
    yield services
    await services.close(drain_s=1)


async def new_principal(services: Services) -> Principal:
    user = await services.auth.create_user(
        f"retry-{uuid.uuid4().hex[:12]}@example.com", "password-123"
    )
    return Principal(user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role)


async def test_a_retry_after_the_commit_answer_was_lost_gets_the_stored_turn(
    services: Services,
) -> None:
    principal = await new_principal(services)
    chat = services.chat
    conversation = await chat.create_conversation(principal, title=None, model=None)
    with answers_lost(adds("user")) as lost, pytest.raises(DatabaseUnavailable):
        await chat.post_message(
            principal, conversation.id, content="hi", model=None, idempotency_key="k-1"
        )
    assert len(lost) == 1  # the rows are stored, the caller was told 503

    turn = await chat.post_message(
        principal, conversation.id, content="hi", model=None, idempotency_key="k-1"
    )
    view = await chat.get_conversation(principal, conversation.id)
    assert [(m.id, m.content) for m in view.messages] == [(turn.user_message_id, "hi")]
    assert view.active_turn_id == turn.id
    assert turn.status == "queued"


async def test_without_a_key_the_same_retry_stores_the_message_twice(
    services: Services,
) -> None:
    """Why the key exists: the same lost answer, retried without one."""
    principal = await new_principal(services)
    chat = services.chat
    conversation = await chat.create_conversation(principal, title=None, model=None)
    with answers_lost(adds("user")), pytest.raises(DatabaseUnavailable):
        await chat.post_message(principal, conversation.id, content="hi", model=None)
    await chat.post_message(principal, conversation.id, content="hi", model=None)
    view = await chat.get_conversation(principal, conversation.id)
    assert [m.content for m in view.messages] == ["hi", "hi"]
