"""Turn execution in the embedded shape: failures, crash recovery, cancel before start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

import pytest

from chatplane.auth.principal import Principal
from chatplane.broker.memory import MemoryBroker
from chatplane.chat.runner import CancelWatch, fit_context
from chatplane.chat.worker import TurnWorker
from chatplane.container import Services, build_services
from chatplane.errors import ServiceUnavailable
from chatplane.providers.protocol import ChatMessage
from tests.broker.support import events_until_end
from tests.conftest import make_settings


async def _services(tmp_path: Path, **settings: Any) -> Services:
    return await build_services(make_settings(tmp_path, **settings), run_turns=False)


async def _principal(services: Services) -> Principal:
    user = await services.auth.create_user("t@example.com", "password-123")
    return Principal(user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role)


async def _wait_for_delta(services: Services, turn_id: str) -> None:
    """Until the turn has streamed its first words."""
    seen = await services.broker.read(turn_id, None, timeout_s=2)
    async with asyncio.timeout(10):
        while not any(e.type == "message.delta" for e in seen):
            seen += await services.broker.read(turn_id, seen[-1].id, timeout_s=2)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    built = await _services(tmp_path, job_visibility_timeout_s=0.3, mock_chunk_delay_ms=20)
    yield built
    await built.close(drain_s=1)


async def test_a_provider_failure_ends_the_turn_failed(tmp_path: Path) -> None:
    services = await _services(tmp_path, mock_failure_rate=1.0)
    services_worker = TurnWorker(
        services.broker, services.runner, concurrency=2, max_attempts=3, consumer="w1"
    )
    try:
        principal = await _principal(services)
        conversation = await services.chat.create_conversation(principal, title=None, model=None)
        turn = await services.chat.post_message(
            principal, conversation.id, content="this will fail", model=None
        )
        services_worker.start()
        events = await events_until_end(services.broker, turn.id)
        assert events[-1].type == "turn.failed"
        assert events[-1].data["error"]["code"] == "provider_error"
        stored = await services.chat.get_turn(principal, turn.id)
        assert stored.status == "failed"
        assert stored.error_code == "provider_error"
        view = await services.chat.get_conversation(principal, conversation.id)
        assert [m.role for m in view.messages] == ["user"]
    finally:
        await services_worker.stop(deadline_s=1)
        await services.close()


async def test_a_turn_whose_worker_died_is_rerun_and_stored_once(services: Services) -> None:
    principal = await _principal(services)
    conversation = await services.chat.create_conversation(principal, title=None, model=None)
    words = " ".join(f"w{i}" for i in range(15))
    turn = await services.chat.post_message(principal, conversation.id, content=words, model=None)

    # A first worker claims the job and dies mid-answer: no ack, no outcome stored.
    job = await services.broker.claim("doomed", timeout_s=1)
    assert job is not None
    doomed = asyncio.create_task(services.runner.run(job))
    await _wait_for_delta(services, turn.id)
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)

    survivor = TurnWorker(
        services.broker, services.runner, concurrency=2, max_attempts=3, consumer="survivor"
    )
    survivor.start()
    try:
        events = await events_until_end(services.broker, turn.id)
    finally:
        await survivor.stop(deadline_s=1)
    kinds = [e.type for e in events]
    assert kinds.count("turn.restarted") == 1
    assert kinds.index("turn.started") < kinds.index("turn.restarted")
    assert kinds[-1] == "turn.completed"
    after_restart = kinds.index("turn.restarted")
    text = "".join(e.data["text"] for e in events[after_restart:] if e.type == "message.delta")
    assert text == words
    view = await services.chat.get_conversation(principal, conversation.id)
    assert [(m.role, m.content) for m in view.messages] == [("user", words), ("assistant", words)]
    stored = await services.chat.get_turn(principal, turn.id)
    assert stored.status == "completed"
    assert stored.attempts == 2


async def test_a_turn_that_dies_on_every_attempt_ends_failed(tmp_path: Path) -> None:
    services = await _services(
        tmp_path, job_visibility_timeout_s=0.2, turn_max_attempts=1, mock_chunk_delay_ms=20
    )
    worker = TurnWorker(services.broker, services.runner, concurrency=1, max_attempts=1)
    try:
        principal = await _principal(services)
        conversation = await services.chat.create_conversation(principal, title=None, model=None)
        turn = await services.chat.post_message(
            principal, conversation.id, content="a b c d e f g h", model=None
        )
        job = await services.broker.claim("doomed", timeout_s=1)
        assert job is not None
        doomed = asyncio.create_task(services.runner.run(job))
        await _wait_for_delta(services, turn.id)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        assert (await services.chat.get_turn(principal, turn.id)).status == "running"

        # The only attempt is spent: the broker dead-letters the job instead of handing it out.
        assert await services.broker.claim("other", timeout_s=0.6) is None
        assert await worker.fail_dead_lettered() == 1
        assert await worker.fail_dead_lettered() == 0  # each dead letter is handled once
        stored = await services.chat.get_turn(principal, turn.id)
        assert stored.status == "failed"
        assert stored.error_code == "turn_abandoned"
        events = await events_until_end(services.broker, turn.id)
        assert events[-1].type == "turn.failed"
    finally:
        await services.close()


async def test_a_turn_cancelled_while_queued_never_runs(services: Services) -> None:
    principal = await _principal(services)
    conversation = await services.chat.create_conversation(principal, title=None, model=None)
    turn = await services.chat.post_message(principal, conversation.id, content="hi", model=None)
    await services.chat.cancel_turn(principal, turn.id)
    worker = TurnWorker(services.broker, services.runner, concurrency=1, max_attempts=3)
    worker.start()
    try:
        events = await events_until_end(services.broker, turn.id)
    finally:
        await worker.stop(deadline_s=1)
    assert [e.type for e in events] == ["turn.queued", "turn.cancelled"]
    assert (await services.chat.get_turn(principal, turn.id)).status == "cancelled"


def test_context_keeps_the_newest_messages_that_fit() -> None:
    history = [ChatMessage(role="user", content="x" * 400) for _ in range(10)]
    history.append(ChatMessage(role="user", content="last question"))
    kept = fit_context(history, budget_tokens=320)
    assert kept[-1].content == "last question"
    assert 1 < len(kept) < len(history)
    assert kept == history[-len(kept) :]
    huge = [ChatMessage(role="user", content="y" * 100_000)]
    assert fit_context(huge, budget_tokens=256) == huge  # the question itself always goes


class _FlakyCancelChecks(MemoryBroker):
    """The first `cancels_requested` calls fail, as a broker that is briefly away or errs."""

    def __init__(self, failures: list[Exception]) -> None:
        super().__init__()
        self.failures = failures
        self.checks = 0

    async def cancels_requested(self, turn_ids: Collection[str]) -> set[str]:
        self.checks += 1
        if self.failures:
            raise self.failures.pop(0)
        return await super().cancels_requested(turn_ids)


async def test_the_cancel_watch_outlives_failed_checks() -> None:
    broker = _FlakyCancelChecks([ServiceUnavailable("away"), RuntimeError("a bug")])
    watch = CancelWatch(broker, interval_s=0.01)
    await broker.request_cancel("t1")
    with watch.watch("t1") as cancelled, watch.watch("t2") as other:
        async with asyncio.timeout(5):
            await cancelled
        assert not other.done()
    assert broker.checks == 3  # two failed, the third saw the cancel
