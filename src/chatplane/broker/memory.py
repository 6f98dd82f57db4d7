"""The in-process broker of the embedded shape: plain asyncio, no background tasks.

Waiting costs one future per waiter: a claimer or reader parks a future, whoever makes
progress possible resolves it, and the waiter looks again. Leases, stream expiry and cancel
flags are `loop.call_later` timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from chatplane.broker.protocol import (
    DEFAULT_CANCEL_TTL_S,
    DEFAULT_STREAM_MAX_EVENTS,
    READ_BATCH,
    DeadLetter,
    Event,
    Job,
    JobAnnouncement,
    JobLost,
    QueueStats,
)
from chatplane.errors import BadRequest, ServiceUnavailable

_EVENT_ID = re.compile(r"0|[1-9][0-9]{0,18}")


def _json_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    copy: dict[str, Any] = orjson.loads(orjson.dumps(dict(data)))
    return copy


@dataclass(slots=True)
class _QueuedJob:
    id: str
    kind: str
    payload: dict[str, Any]
    deliveries: int = 0
    owner: str | None = None
    lease: asyncio.TimerHandle | None = None
    enqueued_at: float = 0.0  # time.monotonic()


@dataclass(slots=True)
class _Stream:
    events: list[Event] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None


class MemoryBroker:
    def __init__(
        self,
        *,
        visibility_timeout_s: float = 30.0,
        max_attempts: int = 3,
        stream_max_events: int = DEFAULT_STREAM_MAX_EVENTS,
        cancel_ttl_s: float = DEFAULT_CANCEL_TTL_S,
        dead_letter_max: int = 10_000,
    ) -> None:
        if visibility_timeout_s <= 0 or max_attempts < 1 or stream_max_events < 1:
            raise ValueError("visibility timeout, max attempts and stream cap must be positive")
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.stream_max_events = stream_max_events
        self.cancel_ttl_s = cancel_ttl_s
        self._closed = False
        self._job_ids = itertools.count(1)
        self._jobs: dict[str, _QueuedJob] = {}  # waiting and claimed, until acked
        self._ready: deque[str] = deque()
        self._claimers: deque[asyncio.Future[None]] = deque()
        self._dead: deque[DeadLetter] = deque(maxlen=dead_letter_max)
        # One counter for every stream: an id is never reused, even by a stream that
        # expired and came back, so a stale Last-Event-ID cannot skip new events.
        self._event_seq = itertools.count(1)
        self._streams: dict[str, _Stream] = {}
        self._readers: dict[str, set[asyncio.Future[None]]] = {}
        self._cancels: dict[str, asyncio.TimerHandle] = {}

    @property
    def pending_reads(self) -> int:
        """Readers parked in `read()` right now."""
        return sum(len(waiters) for waiters in self._readers.values())

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        for waiter in self._claimers:
            if not waiter.done():
                waiter.set_result(None)
        self._claimers.clear()
        for waiters in self._readers.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def ping(self) -> None:
        self._ensure_open()

    # Jobs.

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        event: JobAnnouncement | None = None,
    ) -> str:
        self._ensure_open()
        if event is not None:
            await self.publish(*event)
        job_id = str(next(self._job_ids))
        self._jobs[job_id] = _QueuedJob(
            job_id, kind, _json_copy(payload), enqueued_at=time.monotonic()
        )
        self._ready.append(job_id)
        self._wake_claimer()
        return job_id

    async def claim(self, consumer: str, *, timeout_s: float) -> Job | None:
        self._ensure_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._closed:
            if self._ready:
                return self._deliver(self._ready.popleft(), consumer)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            self._claimers.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_claimer()  # woken, but leaving: pass the wake-up on
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._claimers.remove(waiter)
        return None

    async def heartbeat(self, job: Job) -> None:
        self._ensure_open()
        held = self._held(job)
        if held is None:
            raise JobLost(f"job {job.id} (attempt {job.attempt}) is no longer held")
        assert held.lease is not None
        held.lease.cancel()
        held.lease = self._lease(held)

    async def ack(self, job: Job) -> None:
        self._ensure_open()
        queued = self._jobs.pop(job.id, None)
        if queued is None:
            return
        if queued.lease is not None:
            queued.lease.cancel()
        with contextlib.suppress(ValueError):
            self._ready.remove(job.id)

    async def release(self, job: Job) -> None:
        self._ensure_open()
        held = self._held(job)
        if held is not None:
            self._hand_back(held)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        self._ensure_open()
        return list(itertools.islice(self._dead, max(limit, 0)))

    async def queue_depth(self) -> int:
        self._ensure_open()
        return len(self._jobs)

    async def job_subjects(self, kind: str, key: str) -> set[str]:
        self._ensure_open()
        return {
            str(job.payload[key])
            for job in self._jobs.values()
            if job.kind == kind and key in job.payload
        }

    async def stats(self) -> QueueStats:
        self._ensure_open()
        oldest = min((self._jobs[job_id].enqueued_at for job_id in self._ready), default=None)
        age = 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)
        return QueueStats(depth=len(self._jobs), oldest_waiting_age_s=age)

    def _deliver(self, job_id: str, consumer: str) -> Job:
        queued = self._jobs[job_id]
        queued.deliveries += 1
        queued.owner = consumer
        queued.lease = self._lease(queued)
        return Job(
            queued.id,
            queued.kind,
            queued.payload,
            attempt=queued.deliveries,
            extra={"consumer": consumer},
        )

    def _lease(self, queued: _QueuedJob) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(
            self.visibility_timeout_s, self._lease_expired, queued.id, queued.deliveries
        )

    def _held(self, job: Job) -> _QueuedJob | None:
        queued = self._jobs.get(job.id)
        if queued is None or queued.lease is None or queued.deliveries != job.attempt:
            return None
        return queued

    def _lease_expired(self, job_id: str, delivery: int) -> None:
        queued = self._jobs.get(job_id)
        if queued is not None and queued.lease is not None and queued.deliveries == delivery:
            self._hand_back(queued)

    def _hand_back(self, queued: _QueuedJob) -> None:
        assert queued.lease is not None
        queued.lease.cancel()
        queued.lease = None
        if queued.deliveries >= self.max_attempts:
            del self._jobs[queued.id]
            job = Job(queued.id, queued.kind, queued.payload, attempt=queued.deliveries)
            reason = f"no ack after {queued.deliveries} attempts (last consumer {queued.owner})"
            self._dead.appendleft(DeadLetter(job, reason))
            return
        # Handed-back jobs go first, as in Redis where stale entries are reclaimed first.
        self._ready.appendleft(queued.id)
        self._wake_claimer()

    def _wake_claimer(self) -> None:
        while self._claimers:
            waiter = self._claimers.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # Event streams.

    async def publish(self, stream: str, type: str, data: Mapping[str, Any]) -> Event:
        self._ensure_open()
        seq = next(self._event_seq)
        event = Event(str(seq), type, _json_copy(data))
        entry = self._streams.get(stream)
        if entry is None:
            entry = self._streams[stream] = _Stream()
        entry.events.append(event)
        entry.seqs.append(seq)
        # Trim in batches (like Redis `MAXLEN ~`) so a full stream is not shifted per event.
        excess = len(entry.events) - self.stream_max_events
        if excess > max(1, self.stream_max_events // 16):
            del entry.events[:excess]
            del entry.seqs[:excess]
        for waiter in self._readers.pop(stream, ()):
            if not waiter.done():
                waiter.set_result(None)
        return event

    async def read(self, stream: str, after: str | None, *, timeout_s: float) -> list[Event]:
        self._ensure_open()
        after_seq = self._parse_id(after)
        events = self._events_after(stream, after_seq)
        if events or timeout_s <= 0:
            return events
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._readers.setdefault(stream, set()).add(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except TimeoutError:
            return []
        finally:
            waiters = self._readers.get(stream)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._readers[stream]
        return self._events_after(stream, after_seq)

    async def expire(self, stream: str, ttl_s: float) -> None:
        self._ensure_open()
        entry = self._streams.get(stream)
        if entry is None:
            return
        if entry.expiry is not None:
            entry.expiry.cancel()
        loop = asyncio.get_running_loop()
        entry.expiry = loop.call_later(ttl_s, self._drop_stream, stream, entry)

    def _drop_stream(self, stream: str, entry: _Stream) -> None:
        if self._streams.get(stream) is entry:
            del self._streams[stream]

    def _events_after(self, stream: str, after_seq: int) -> list[Event]:
        entry = self._streams.get(stream)
        if entry is None:
            return []
        start = bisect_right(entry.seqs, after_seq)
        return entry.events[start : start + READ_BATCH]

    @staticmethod
    def _parse_id(after: str | None) -> int:
        if after is None:
            return 0
        if not _EVENT_ID.fullmatch(after):
            raise BadRequest(f"not an event id: {after!r}")
        return int(after)

    # Cancellation.

    async def request_cancel(self, turn_id: str) -> None:
        self._ensure_open()
        previous = self._cancels.pop(turn_id, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._cancels[turn_id] = loop.call_later(self.cancel_ttl_s, self._cancels.pop, turn_id)

    async def cancel_requested(self, turn_id: str) -> bool:
        self._ensure_open()
        return turn_id in self._cancels

    async def cancels_requested(self, turn_ids: Collection[str]) -> set[str]:
        self._ensure_open()
        return {turn_id for turn_id in turn_ids if turn_id in self._cancels}

    def _ensure_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("the broker is closed")
