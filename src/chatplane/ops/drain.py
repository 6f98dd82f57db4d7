"""Graceful drain of an API process: on SIGTERM (or `POST /api/ops/drain`) it answers 503 on
`/readyz`, refuses new model calls with a retryable 503, ends its event streams so their
clients resume elsewhere (by `Last-Event-ID`), lets the model calls in flight finish, and
then (on SIGTERM) hands over to the server to exit, all within `drain_timeout_s`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog

from chatplane.errors import ServiceUnavailable

log = structlog.get_logger("chatplane.drain")

RETRY_AFTER_S = 1


class Drain:
    def __init__(self, *, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.draining = False
        self.since: datetime | None = None
        self.reason: str | None = None
        self.inflight = 0  # model calls running in this process
        self._idle = asyncio.Event()
        self._idle.set()
        self._streams: set[asyncio.Task[Any]] = set()
        self._ending: set[asyncio.Task[Any]] = set()

    # State ---------------------------------------------------------------------------------

    def start(self, reason: str) -> None:
        if self.draining:
            return
        self.draining, self.since, self.reason = True, datetime.now(UTC), reason
        log.info("drain_started", reason=reason, inflight=self.inflight, streams=len(self._streams))
        for task in list(self._streams):  # clients resume on another process
            self._ending.add(task)
            task.cancel()

    def stop(self) -> None:
        if self.draining:
            log.info("drain_stopped")
        self.draining, self.since, self.reason = False, None, None

    def refuse_new_work(self) -> None:
        """Raise the retryable 503 new model calls get while this process drains."""
        if self.draining:
            raise ServiceUnavailable(
                "This server is restarting; retry (another one will answer)",
                code="draining",
                retry_after=RETRY_AFTER_S,
            )

    # Model calls in flight -----------------------------------------------------------------

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count a model call while it runs, so the drain can wait for it."""
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no model call runs; False when the time ran out first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # Event streams -------------------------------------------------------------------------

    @contextlib.contextmanager
    def stream(self) -> Iterator[None]:
        """An event stream of this process: ended (its task cancelled) when a drain starts;
        `ended_by_drain` tells the stream so."""
        task = asyncio.current_task()
        assert task is not None
        if self.draining:  # it came in after the drain started: end it at once
            self._ending.add(task)
            task.cancel()
        self._streams.add(task)
        try:
            yield
        finally:
            self._streams.discard(task)
            self._ending.discard(task)

    def ended_by_drain(self) -> bool:
        return asyncio.current_task() in self._ending

    # SIGTERM -------------------------------------------------------------------------------

    def install_sigterm(self) -> Callable[[], None]:
        """Drain on SIGTERM, then hand the signal to the server's own handler (uvicorn's
        graceful exit) once the model calls in flight are done or the deadline passed. A
        second SIGTERM exits at once. Returns the undo."""
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return lambda: None  # no server handler to hand over to (not the main thread)
        handover: list[asyncio.Task[None]] = []

        async def hand_over() -> None:
            began = time.monotonic()
            finished = await self.wait_idle(self.deadline_s)
            log.info(
                "drain_handing_over",
                waited_s=round(time.monotonic() - began, 3),
                unfinished_calls=0 if finished else self.inflight,
            )
            previous(signal.SIGTERM, None)

        def on_sigterm() -> None:
            if self.draining and handover:
                previous(signal.SIGTERM, None)  # asked twice: exit now
                return
            self.start("SIGTERM")
            handover.append(loop.create_task(hand_over(), name="chatplane-drain"))

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)

        def undo() -> None:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)

        return undo
