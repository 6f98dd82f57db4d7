"""Claims jobs from the broker and runs them with bounded concurrency: turns, and the other
kinds registered as handlers (document ingestion).

The same class runs inside `chatplane serve` (embedded shape) and `chatplane worker`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping
from typing import Protocol

import structlog

from chatplane.broker.memory import MemoryBroker
from chatplane.broker.protocol import Broker, Job
from chatplane.chat.runner import TurnRunner
from chatplane.chat.service import TURN_JOB
from chatplane.chat.sweeper import TurnSweeper
from chatplane.db.base import utcnow
from chatplane.errors import DatabaseUnavailable, ServiceUnavailable
from chatplane.observability.metrics import turn_worker_done, turn_worker_took

log = structlog.get_logger("chatplane.worker")

CLAIM_WAIT_S = 1.0
DEAD_LETTER_SWEEP_S = 10.0
SEEN_DEAD_LETTERS_MAX = 10_000
BROKER_RETRY_S = 1.0
# What a job works on, named in the log line (and the error report) of a crash.
JOB_SUBJECTS = ("turn_id", "document_id")


class JobHandler(Protocol):
    async def run(self, job: Job) -> None:
        """Do the job; raising hands it back for another attempt."""

    async def abandon(self, job: Job, reason: str) -> None:
        """The job failed on every attempt: record the outcome it ends with."""


class TurnJobs:
    """Turn jobs, run by the `TurnRunner`."""

    def __init__(self, runner: TurnRunner) -> None:
        self.runner = runner

    async def run(self, job: Job) -> None:
        await self.runner.run(job)

    async def abandon(self, job: Job, reason: str) -> None:
        await self.runner.fail_abandoned(str(job.payload.get("turn_id")), reason, job.payload)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class TurnWorker:
    def __init__(
        self,
        broker: Broker,
        runner: TurnRunner,
        *,
        concurrency: int,
        max_attempts: int,
        consumer: str | None = None,
        handlers: Mapping[str, JobHandler] | None = None,
    ) -> None:
        self.broker = broker
        self.runner = runner
        self.handlers: dict[str, JobHandler] = {TURN_JOB: TurnJobs(runner), **(handlers or {})}
        self.max_attempts = max_attempts
        self.consumer = consumer or consumer_name()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[asyncio.Task[None], Job] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._turn_sweep_task: asyncio.Task[None] | None = None
        self.turn_sweep_interval_s = runner.settings.turn_sweep_interval_s
        # The embedded shape (SQLite, the in-process broker: one process owns the database)
        # starts with an empty broker: whatever a previous `serve` had queued or running is
        # gone, so the first sweep recovers every turn older than this worker.
        embedded = isinstance(broker, MemoryBroker) and runner.settings.is_embedded_db
        self.sweeper = TurnSweeper(
            runner.db,
            broker,
            runner,
            runner.settings,
            recover_before=utcnow() if embedded else None,
        )
        self._seen_dead: dict[str, None] = {}  # insertion-ordered, bounded
        self._stopping = asyncio.Event()

    @property
    def running_turns(self) -> int:
        return len(self._running)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._claim_loop(), name="turn-claim-loop")
            self._sweep_task = asyncio.create_task(self._sweep_loop(), name="dead-letter-sweep")
            if self.turn_sweep_interval_s > 0:
                self._turn_sweep_task = asyncio.create_task(
                    self._turn_sweep_loop(), name="turn-sweep"
                )

    async def _sweep_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.fail_dead_lettered()
            except ServiceUnavailable as exc:
                log.warning("dead_letter_sweep_skipped", error=exc.detail)
            await asyncio.sleep(DEAD_LETTER_SWEEP_S)

    async def _turn_sweep_loop(self) -> None:
        """Sweep at once (recovering what a restart lost), then every interval."""
        while not self._stopping.is_set():
            try:
                result = await self.sweeper.sweep()
            except ServiceUnavailable as exc:
                log.warning("turn_sweep_skipped", error=exc.detail)
            except Exception:  # a failed sweep must not end the sweeping: the next may work
                log.exception("turn_sweep_failed")
            else:
                if result.requeued or result.failed:
                    log.info("turn_sweep_done", requeued=result.requeued, failed=result.failed)
            await asyncio.sleep(self.turn_sweep_interval_s)

    async def fail_dead_lettered(self) -> int:
        """A job that died on every attempt went to the dead-letter list while its turn
        (or document) was still running: end it `failed`. Returns how many it looked at."""
        fresh = [
            dead
            for dead in await self.broker.dead_letters()
            if dead.job.id not in self._seen_dead and dead.job.kind in self.handlers
        ]
        for dead in fresh:
            await self.handlers[dead.job.kind].abandon(dead.job, dead.reason)
            self._seen_dead[dead.job.id] = None
            if len(self._seen_dead) > SEEN_DEAD_LETTERS_MAX:
                del self._seen_dead[next(iter(self._seen_dead))]
        return len(fresh)

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            await self._slots.acquire()
            try:
                job = await self.broker.claim(self.consumer, timeout_s=CLAIM_WAIT_S)
            except ServiceUnavailable as exc:
                self._slots.release()
                log.warning("broker_unavailable", error=exc.detail)
                await asyncio.sleep(BROKER_RETRY_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            if job is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(job), name=f"turn-{job.id}")
            self._running[task] = job
            turn_worker_took()
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slots.release()
        turn_worker_done()

    async def _run(self, job: Job) -> None:
        handler = self.handlers.get(job.kind)
        if handler is None:  # a newer release's job kind during a rolling deploy
            log.warning("job_kind_unknown", job_id=job.id, kind=job.kind)
            await self.broker.release(job)
            return
        while True:
            try:
                await handler.run(job)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable as exc:
                if await self._wait_for_database(job, exc):
                    continue  # run it again here: the outage was not the job's fault
                await self.broker.release(job)
            except Exception:  # the job survives: handed back now, or failed on its last try
                await self._crashed(handler, job)
            else:
                await self.broker.ack(job)
            return

    async def _wait_for_database(self, job: Job, exc: DatabaseUnavailable) -> bool:
        """Hold the job until the database is back (False: the claim was lost or the wait
        ran out). Handing it back at once would count an attempt per try, and an outage of
        a few seconds would fail the job."""
        log.warning(
            "job_waits_for_database",
            job_id=job.id,
            kind=job.kind,
            error=exc.detail,
            **{key: job.payload[key] for key in JOB_SUBJECTS if key in job.payload},
        )
        return await self.runner.hold_until_database(job)

    async def _crashed(self, handler: JobHandler, job: Job) -> None:
        log.exception(
            "job_crashed",
            job_id=job.id,
            kind=job.kind,
            attempt=job.attempt,
            **{key: job.payload[key] for key in JOB_SUBJECTS if key in job.payload},
        )
        if job.attempt >= self.max_attempts:
            await handler.abandon(job, f"The job failed {job.attempt} times")
            await self.broker.ack(job)
        else:
            await self.broker.release(job)

    async def stop(self, *, deadline_s: float) -> None:
        """Stop claiming, let running turns finish within the deadline, hand back the rest."""
        self._stopping.set()
        for task in (self._loop_task, self._sweep_task, self._turn_sweep_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        pending = dict(self._running)
        if pending:
            _, still = await asyncio.wait(pending, timeout=deadline_s)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            for task in still:
                with contextlib.suppress(Exception):
                    await self.broker.release(pending[task])
