"""The turn sweeper, embedded shape (SQLite, in-process broker): a turn left queued or
running with no job is queued again and completes, or fails with `turn_lost`; a restart
of `serve` (a new in-process broker) recovers what the old one lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from chatplane.admin.limits import LimitsAdminService
from chatplane.auth.principal import Principal
from chatplane.chat.models import Turn
from chatplane.chat.sweeper import LOST_CODE, TurnSweeper
from chatplane.chat.worker import TurnWorker
from chatplane.container import Services, build_services
from chatplane.observability.metrics import TURNS_SWEPT
from chatplane.usage.models import UsageRecord
from tests.broker.support import events_until_end, eventually
from tests.conftest import make_settings

ACTIVE = ("queued", "running")
WORDS = " ".join(f"w{i}" for i in range(12))


async def _services(data_dir: Path, *, run_turns: bool = False, **settings: Any) -> Services:
    settings.setdefault("turn_sweep_interval_s", 30.0)  # the default, which tests turn off
    return await build_services(make_settings(data_dir, **settings), run_turns=run_turns)


async def _principal(services: Services, email: str = "t@example.com") -> Principal:
    user = await services.auth.create_user(email, "password-123")
    return Principal(user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role)


async def _post(services: Services, principal: Principal) -> Turn:
    conversation = await services.chat.create_conversation(principal, title=None, model=None)
    return await services.chat.post_message(principal, conversation.id, content=WORDS, model=None)


async def _lose_job(services: Services) -> None:
    """The job is gone as if the process died between the commit and the enqueue."""
    job = await services.broker.claim("lost", timeout_s=1)
    assert job is not None
    await services.broker.ack(job)
    assert await services.broker.queue_depth() == 0


async def _turn_ends(services: Services, principal: Principal, turn_id: str) -> Turn:
    async def ended() -> bool:
        return (await services.chat.get_turn(principal, turn_id)).status not in ACTIVE

    await eventually(ended, timeout_s=20)
    return await services.chat.get_turn(principal, turn_id)


def _swept(action: str) -> float:
    return TURNS_SWEPT.labels(action)._value.get()  # type: ignore[attr-defined, no-any-return]


async def test_a_queued_turn_without_a_job_is_requeued_once_and_completes(
    tmp_path: Path,
) -> None:
    services = await _services(tmp_path, turn_sweep_grace_s=0.01)
    worker = TurnWorker(services.broker, services.runner, concurrency=2, max_attempts=3)
    try:
        principal = await _principal(services)
        turn = await _post(services, principal)
        await _lose_job(services)
        await asyncio.sleep(0.02)  # past the grace period
        sweeper = TurnSweeper(services.db, services.broker, services.runner, services.settings)
        before = _swept("requeued")

        assert (await sweeper.sweep()).requeued == 1
        # Its job is queued now: sweeping again queues no second one.
        assert (await sweeper.sweep()).requeued == 0
        assert await services.broker.queue_depth() == 1
        assert _swept("requeued") == before + 1

        worker.start()
        events = await events_until_end(services.broker, turn.id, timeout_s=20)
        assert events[-1].type == "turn.completed"
        stored = await services.chat.get_turn(principal, turn.id)
        assert stored.status == "completed"
        view = await services.chat.get_conversation(principal, stored.conversation_id)
        assert [(m.role, m.content) for m in view.messages] == [
            ("user", WORDS),
            ("assistant", WORDS),
        ]
    finally:
        await worker.stop(deadline_s=1)
        await services.close()


async def test_a_requeued_turn_settles_the_budget_its_post_reserved(tmp_path: Path) -> None:
    prices = {"mock": [1000.0, 2000.0], "mock-echo": [1000.0, 2000.0]}  # USD per million
    services = await _services(tmp_path, turn_sweep_grace_s=0.01, model_prices=prices)
    worker = TurnWorker(services.broker, services.runner, concurrency=2, max_attempts=3)
    try:
        user = await services.auth.create_user("b@example.com", "password-123", role="admin")
        principal = Principal(
            user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role
        )
        admin = LimitsAdminService(services.db, services.limits, services.audit)
        budget = await admin.create_budget(
            principal, scope_name="user", subject_id=user.id, period="day", limit_usd=5.0
        )
        turn = await _post(services, principal)
        assert turn.budget_keys  # the post reserved under the user's budget
        await _lose_job(services)  # the job that carried the keys is gone
        assert (await admin.budgets(principal))[0].reserved_usd > 0

        await asyncio.sleep(0.02)
        sweeper = TurnSweeper(services.db, services.broker, services.runner, services.settings)
        assert (await sweeper.sweep()).requeued == 1
        worker.start()
        assert (await _turn_ends(services, principal, turn.id)).status == "completed"

        await services.usage.flush()
        async with services.db.session() as session:
            cost = await session.scalar(
                select(UsageRecord.cost_usd).where(UsageRecord.turn_id == turn.id)
            )
        [after] = await admin.budgets(principal)
        assert after.budget.id == budget.budget.id
        assert after.reserved_usd == 0  # settled, not left to lapse
        assert cost is not None
        assert cost > 0
        assert after.spent_usd == pytest.approx(cost, abs=1e-9)
    finally:
        await worker.stop(deadline_s=1)
        await services.close()


async def test_the_grace_period_protects_a_turn_just_posted(tmp_path: Path) -> None:
    services = await _services(tmp_path)  # the default grace: a minute
    try:
        principal = await _principal(services)
        await _post(services, principal)
        await _lose_job(services)
        sweeper = TurnSweeper(services.db, services.broker, services.runner, services.settings)
        result = await sweeper.sweep()
        assert (result.requeued, result.failed) == (0, 0)
        assert await services.broker.queue_depth() == 0
    finally:
        await services.close()


async def test_a_turn_lost_past_the_max_age_fails_with_a_reason(tmp_path: Path) -> None:
    services = await _services(tmp_path, turn_sweep_grace_s=0.01, turn_sweep_max_age_s=0.01)
    try:
        principal = await _principal(services)
        turn = await _post(services, principal)
        await _lose_job(services)
        await asyncio.sleep(0.02)
        sweeper = TurnSweeper(services.db, services.broker, services.runner, services.settings)
        before = _swept("failed")

        result = await sweeper.sweep()
        assert (result.requeued, result.failed) == (0, 1)
        assert _swept("failed") == before + 1
        stored = await services.chat.get_turn(principal, turn.id)
        assert stored.status == "failed"
        assert stored.error_code == LOST_CODE
        events = await events_until_end(services.broker, turn.id, timeout_s=20)
        assert events[-1].type == "turn.failed"
        assert events[-1].data["error"]["code"] == LOST_CODE
        assert await services.broker.queue_depth() == 0
        assert (await sweeper.sweep()).failed == 0  # an ended turn is never swept again
    finally:
        await services.close()


async def test_a_restart_recovers_queued_and_running_turns(tmp_path: Path) -> None:
    """`serve` stops (its in-process broker with it) while one turn is queued and another
    is mid-answer; the next `serve` ends both, without waiting for the grace period."""
    first = await _services(tmp_path, mock_chunk_delay_ms=30)
    try:
        principal = await _principal(first)
        running = await _post(first, principal)
        job = await first.broker.claim("doomed", timeout_s=1)
        assert job is not None
        doomed = asyncio.create_task(first.runner.run(job))
        seen = await first.broker.read(running.id, None, timeout_s=2)
        async with asyncio.timeout(10):
            while not any(e.type == "message.delta" for e in seen):
                seen += await first.broker.read(running.id, seen[-1].id, timeout_s=2)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        assert (await first.chat.get_turn(principal, running.id)).status == "running"
        queued = await _post(first, principal)
    finally:
        await first.close(drain_s=0)

    second = await _services(tmp_path, run_turns=True)  # the default grace: a minute
    try:
        for turn_id in (running.id, queued.id):
            stored = await _turn_ends(second, principal, turn_id)
            assert stored.status == "completed"
            view = await second.chat.get_conversation(principal, stored.conversation_id)
            assert [m.role for m in view.messages] == ["user", "assistant"]
        assert (await second.chat.get_turn(principal, running.id)).attempts == 2
    finally:
        await second.close(drain_s=1)


async def test_a_turn_lost_on_every_run_ends_failed(tmp_path: Path) -> None:
    """A turn started `turn_max_attempts` times and lost each time is not run again."""
    first = await _services(tmp_path, turn_max_attempts=1, mock_chunk_delay_ms=30)
    try:
        principal = await _principal(first)
        turn = await _post(first, principal)
        job = await first.broker.claim("doomed", timeout_s=1)
        assert job is not None
        doomed = asyncio.create_task(first.runner.run(job))

        async def running() -> bool:
            return (await first.chat.get_turn(principal, turn.id)).status == "running"

        await eventually(running, timeout_s=10)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
    finally:
        await first.close(drain_s=0)

    second = await _services(tmp_path, run_turns=True, turn_max_attempts=1)
    try:
        stored = await _turn_ends(second, principal, turn.id)
        assert stored.status == "failed"
        assert stored.error_code == LOST_CODE
        assert stored.attempts == 1
    finally:
        await second.close(drain_s=1)
