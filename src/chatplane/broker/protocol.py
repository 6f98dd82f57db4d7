"""The broker: a job queue for the workers and one event stream per turn.

Two implementations share this protocol and one test suite: `memory` (in-process, the
embedded shape) and `redis` (the scaled shape). Event ids are opaque strings that only
ever increase within one stream; `read(after=id)` returns exactly the events after it.

Payloads and event data must be JSON-serializable; both brokers hand back a JSON round-trip
of what was given (a tuple comes back as a list), so the two behave the same.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatplane.errors import Conflict

# One `read()` returns at most this many events; the caller reads on from the last id.
READ_BATCH = 1000
# Events kept per stream unless configured; the oldest are trimmed past it (approximately).
DEFAULT_STREAM_MAX_EVENTS = 100_000
# How long a cancel request stays visible.
DEFAULT_CANCEL_TTL_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    data: Mapping[str, Any]


# An event `enqueue` publishes before its job: (stream, type, data).
JobAnnouncement = tuple[str, str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    payload: Mapping[str, Any]
    attempt: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    job: Job
    reason: str


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int  # jobs waiting plus jobs claimed but not acknowledged
    oldest_waiting_age_s: float  # the oldest job not yet handed to a worker; 0 when none


class JobLost(Conflict):
    """The claim on a job is gone: it was reclaimed after the visibility timeout, acked,
    released or dead-lettered. Whoever still runs it should stop."""

    code = "job_lost"
    title = "The job is no longer held by this consumer"


class Broker(Protocol):
    async def start(self) -> None:
        """Open connections; idempotent."""

    async def close(self) -> None:
        """Release connections and wake every waiter."""

    async def ping(self) -> None:
        """Raise `ServiceUnavailable` when the broker cannot be reached."""

    # Jobs: at-least-once delivery with a visibility timeout.
    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        event: JobAnnouncement | None = None,
    ) -> str:
        """Queue a job and return its id. With `event` (stream, type, data) that event is
        published just before, in the same round trip where the broker can (a new turn's
        `turn.queued`, which is then in its stream before anything the job's run
        publishes)."""

    async def claim(self, consumer: str, *, timeout_s: float) -> Job | None:
        """Wait up to `timeout_s` for a job. Jobs whose owner stopped heartbeating for the
        visibility timeout are handed out again with `attempt` increased; jobs past the
        attempt limit go to the dead-letter list instead. `attempt` counts deliveries
        (a released job counts too). Returns None on time-out or when the broker closes."""

    async def heartbeat(self, job: Job) -> None:
        """Keep a claimed job from being reclaimed for another visibility timeout.
        Raises `JobLost` when this claim no longer holds the job."""

    async def ack(self, job: Job) -> None:
        """The job is done (successfully or not); never deliver it again. Acking a job
        whose claim was lost still removes it (its result is stored idempotently)."""

    async def release(self, job: Job) -> None:
        """Hand a claimed job back at once (graceful shutdown); a no-op when the claim was
        already lost."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Jobs that exceeded the attempt limit, newest first."""

    async def queue_depth(self) -> int:
        """Jobs waiting plus jobs claimed but not acknowledged."""

    async def job_subjects(self, kind: str, key: str) -> set[str]:
        """`payload[key]` of every job of `kind` waiting or claimed (not yet acknowledged
        or dead-lettered): what the queue still holds work for. Reads the whole queue; for
        the sweeper, not for a hot path."""

    async def stats(self) -> QueueStats:
        """The queue at a glance, for metrics: one cheap call (one round trip on Redis)."""

    # Per-turn event streams.
    async def publish(self, stream: str, type: str, data: Mapping[str, Any]) -> Event:
        """Append an event and wake readers."""

    async def read(self, stream: str, after: str | None, *, timeout_s: float) -> list[Event]:
        """Events after `after` (from the start when None), oldest first, at most
        `READ_BATCH` of them. When there are none yet, wait up to `timeout_s` for some; an
        empty list means the wait timed out, the stream is unknown or expired, or the broker
        closed. Raises `BadRequest` for an id this broker could never have issued."""

    async def expire(self, stream: str, ttl_s: float) -> None:
        """Delete the stream `ttl_s` seconds from now (after the turn ended); a no-op for a
        stream that does not exist."""

    # Cancellation, seen by whichever process runs the turn. Flags expire on their own.
    async def request_cancel(self, turn_id: str) -> None: ...

    async def cancel_requested(self, turn_id: str) -> bool: ...

    async def cancels_requested(self, turn_ids: Collection[str]) -> set[str]:
        """Which of these turns have a cancel request: one call for every turn a worker
        runs."""
