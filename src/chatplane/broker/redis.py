"""The Redis broker of the scaled shape: jobs in one Stream with a consumer group, one
Stream per turn for its events, cancel flags as keys with a TTL.

Jobs. `claim` first runs a script that looks for entries whose owner has been silent for
the visibility timeout (`XPENDING IDLE`): past the attempt limit they move to the
dead-letter list, otherwise the first one is `XCLAIM`ed (its delivery count is the attempt).
Then it takes a new entry with `XREADGROUP`, blocking for at most a short poll interval, so a
blocked claimer also notices reclaimable jobs. `heartbeat` checks that this claim still owns
the entry and resets its idle time (`XCLAIM ... JUSTID`, which leaves the delivery count
alone). `release` passes the entry to a placeholder consumer with a huge idle time, so the
next claim takes it at once, ahead of new jobs, and the attempt still counts. `ack` (and
dead-lettering) `XACK`s and `XDEL`s the entry, so the stream holds exactly the jobs waiting
or claimed, and `XLEN` is the queue depth.

Keys carry the prefix and a hash tag: job keys share `{jobs}`, a turn's keys share the
stream name, so every script touches one slot. (The multiplexed `XREAD` spans many turns;
on Redis Cluster it would need one reader per slot. This broker speaks to one Redis.)
Needs Redis 6.2 or later (`XPENDING IDLE`, exclusive `XRANGE` ranges).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

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
from chatplane.broker.redis_scripts import CLAIM, RENEW, STATS
from chatplane.broker.redis_streams import (
    EventBatch,
    EventPublisher,
    StreamFanout,
    event_from_entry,
    parse_stream_id,
    raise_if_cancel_was_lost,
)
from chatplane.errors import ServiceUnavailable
from chatplane.observability.metrics import redis_error
from chatplane.redis_direct import Command, DirectConnections

_GROUP = "workers"
_RELEASED = "(released)"  # placeholder owner of released jobs
_RELEASED_IDLE_MS = 10**12  # "idle for decades": the next claim takes it
_STALE_SCAN = 16
_SUBJECTS_BATCH = 1000  # queue entries read per XRANGE by `job_subjects`
_CONNECT_TIMEOUT_S = 2.0
_SOCKET_TIMEOUT_S = 5.0
_POOL_WAIT_S = 10.0
_HEALTH_CHECK_S = 15
_WAKE_KEY_TTL_MS = 3_600_000  # a process that dies leaves its wake-up key for an hour
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
)


class _GroupMissing(Exception):
    """The consumer group vanished (Redis restarted empty, key deleted)."""


@dataclass(slots=True)
class _Connections:
    client: Redis  # job commands and scripts, from a bounded pool
    events: DirectConnections  # the event streams' commands (every delta goes through here)
    reader: DirectConnections  # one connection for the stream fan-out's blocking XREAD
    fanout: StreamFanout
    claim: AsyncScript
    renew: AsyncScript
    stats: AsyncScript


class RedisBroker:
    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "chatplane",
        visibility_timeout_s: float = 30.0,
        max_attempts: int = 3,
        stream_max_events: int = DEFAULT_STREAM_MAX_EVENTS,
        cancel_ttl_s: float = DEFAULT_CANCEL_TTL_S,
        max_connections: int = 20,
        dead_letter_max: int = 10_000,
        read_block_s: float = 2.0,
    ) -> None:
        if visibility_timeout_s <= 0 or max_attempts < 1 or stream_max_events < 1:
            raise ValueError("visibility timeout, max attempts and stream cap must be positive")
        self.url = url
        self.key_prefix = key_prefix
        self.visibility_timeout_s = visibility_timeout_s
        self.max_attempts = max_attempts
        self.stream_max_events = stream_max_events
        self.cancel_ttl_s = cancel_ttl_s
        self.max_connections = max_connections
        self.dead_letter_max = dead_letter_max
        self.read_block_s = read_block_s
        # Every connection of this broker carries this name (see CLIENT LIST).
        self.client_name = f"{key_prefix}-broker-{uuid.uuid4().hex[:12]}"
        self._jobs_key = f"{key_prefix}:{{jobs}}:queue"
        self._dead_key = f"{key_prefix}:{{jobs}}:dead"
        self._wake_key = f"{key_prefix}:reader:{{{self.client_name}}}:wake"
        # A blocked claim wakes this often to look for reclaimable jobs.
        self._poll_s = min(1.0, max(0.05, visibility_timeout_s / 4))
        self._conn: _Connections | None = None
        self._where = "Redis"
        self._closed = False
        self._group_ready = False
        # Calls in flight; `close()` lets them finish before it closes the pools, since a call
        # that retries on a closed pool would open a connection nobody closes.
        self._in_flight = 0
        self._idle = asyncio.Event()
        # Blocked claims hold a pooled connection each; a few at a time leave the rest of the
        # pool to publishing and reading however many claim loops a worker runs.
        self._blocking_claims = asyncio.Semaphore(max(1, max_connections // 4))
        self._publisher = EventPublisher(self._send_events)

    @property
    def pending_reads(self) -> int:
        """Readers parked in `read()` right now."""
        return 0 if self._conn is None else self._conn.fanout.pending_reads

    async def start(self) -> None:
        """Build the clients. No I/O: a broker whose Redis is down starts, reports it through
        `ping()` and errors, and works once Redis is back."""
        if self._conn is not None:
            return
        self._closed = False
        client = Redis.from_pool(self._pool())
        events = DirectConnections(client, max_connections=max(2, self.max_connections // 2))
        reader = DirectConnections(
            client, max_connections=1, timeout_s=self.read_block_s + _SOCKET_TIMEOUT_S
        )
        kwargs = client.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._where = f"Redis at {where}"
        fanout = StreamFanout(
            reader=reader,
            wake_key=self._wake_key,
            wake=functools.partial(self._wake_reader, events),
            unavailable=self._unavailable_error,
            block_s=self.read_block_s,
        )
        claim, renew = client.register_script(CLAIM), client.register_script(RENEW)
        stats = client.register_script(STATS)
        self._conn = _Connections(client, events, reader, fanout, claim, renew, stats)

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        await conn.fanout.close()
        if self._in_flight:  # blocked claims see the flag within one poll interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s + _SOCKET_TIMEOUT_S):
                    await self._idle.wait()
        with contextlib.suppress(*_UNAVAILABLE):
            await conn.client.delete(self._wake_key)
        await conn.reader.close()
        await conn.events.close()
        await conn.client.aclose()

    async def ping(self) -> None:
        async with self._op() as conn:
            await conn.client.ping()

    # Jobs.

    async def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        *,
        event: JobAnnouncement | None = None,
    ) -> str:
        commands: list[Command] = []
        if event is not None:
            stream, type, data = event
            body = orjson.dumps(dict(data))
            commands.append(self._xadd_event(self._events_key(stream), type, body))
        payload_json = orjson.dumps(dict(payload))
        commands.append(("XADD", self._jobs_key, "*", "kind", kind, "payload", payload_json))
        async with self._op() as conn:
            replies = await conn.events.pipeline(commands, raise_on_error=True)
        return str(replies[-1])

    async def claim(self, consumer: str, *, timeout_s: float) -> Job | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._op() as conn:
            while not self._closed:
                raise_if_cancel_was_lost()
                try:
                    job = await self._claim_now(conn, consumer)
                    if job is not None:
                        return job
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    reply = await self._wait_for_new(conn, consumer, remaining)
                except _GroupMissing:
                    continue
                for _key, entries in reply or ():
                    entry_id, fields = entries[0]
                    return self._job(entry_id, fields, 1, consumer)
        return None

    async def _wait_for_new(self, conn: _Connections, consumer: str, remaining: float) -> Any:
        """Block for a new job for at most a poll interval, behind the gate."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + remaining
        try:
            async with asyncio.timeout(remaining):
                await self._blocking_claims.acquire()
        except TimeoutError:
            return None
        try:
            block_s = min(deadline - loop.time(), self._poll_s)
            if block_s <= 0 or self._closed:
                return None
            with self._group_missing():
                return await conn.client.xreadgroup(
                    _GROUP,
                    consumer,
                    {self._jobs_key: ">"},
                    count=1,
                    block=round(block_s * 1000) or 1,
                )
        finally:
            self._blocking_claims.release()

    async def heartbeat(self, job: Job) -> None:
        if not await self._renew(job, job.extra.get("consumer", ""), 0):
            raise JobLost(f"job {job.id} (attempt {job.attempt}) is no longer held")

    async def ack(self, job: Job) -> None:
        async with self._op() as conn, conn.client.pipeline(transaction=True) as pipe:
            pipe.xack(self._jobs_key, _GROUP, job.id)
            pipe.xdel(self._jobs_key, job.id)
            await pipe.execute()

    async def release(self, job: Job) -> None:
        await self._renew(job, _RELEASED, _RELEASED_IDLE_MS)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        async with self._op() as conn:
            records = await conn.client.lrange(self._dead_key, 0, limit - 1)
        letters = []
        for raw in records:
            record = orjson.loads(raw)
            job = Job(
                record["id"], record["kind"], orjson.loads(record["payload"]), record["attempt"]
            )
            letters.append(DeadLetter(job, record["reason"]))
        return letters

    async def queue_depth(self) -> int:
        async with self._op() as conn:
            depth: int = await conn.client.xlen(self._jobs_key)
        return depth

    async def job_subjects(self, kind: str, key: str) -> set[str]:
        # The queue stream holds exactly the jobs not yet acknowledged (`ack` deletes the
        # entry, dead-lettering moves it out): waiting and claimed ones alike.
        subjects: set[str] = set()
        start = "-"
        async with self._op() as conn:
            while True:
                entries: Any = await conn.client.xrange(
                    self._jobs_key, min=start, max="+", count=_SUBJECTS_BATCH
                )
                for _entry_id, fields in entries:
                    if fields.get("kind") != kind:
                        continue
                    value = orjson.loads(fields["payload"]).get(key)
                    if value is not None:
                        subjects.add(str(value))
                if len(entries) < _SUBJECTS_BATCH:
                    return subjects
                start = "(" + str(entries[-1][0])

    async def stats(self) -> QueueStats:
        async with self._op() as conn:
            depth, age_ms = await conn.stats(keys=[self._jobs_key], args=[_GROUP])
        return QueueStats(depth=int(depth), oldest_waiting_age_s=int(age_ms) / 1000)

    async def _claim_now(self, conn: _Connections, consumer: str) -> Job | None:
        await self._ensure_group(conn)
        args: list[str | int] = [
            _GROUP,
            consumer,
            round(self.visibility_timeout_s * 1000),
            self.max_attempts,
            self.dead_letter_max,
            _STALE_SCAN,
        ]
        with self._group_missing():
            found = await conn.claim(keys=[self._jobs_key, self._dead_key], args=args)
        if not found:
            return None
        entry_id, flat, attempt = found
        return self._job(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)), attempt, consumer)

    async def _renew(self, job: Job, new_owner: str, idle_ms: int) -> bool:
        consumer = job.extra.get("consumer", "")
        args: list[str | int] = [_GROUP, consumer, job.id, job.attempt, new_owner, idle_ms]
        try:
            async with self._op() as conn:
                with self._group_missing():
                    renewed = await conn.renew(keys=[self._jobs_key], args=args)
        except _GroupMissing:
            return False
        return bool(renewed)

    async def _ensure_group(self, conn: _Connections) -> None:
        if self._group_ready:
            return
        try:
            await conn.client.xgroup_create(self._jobs_key, _GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    @contextlib.contextmanager
    def _group_missing(self) -> Iterator[None]:
        """The group vanished (Redis restarted empty, key deleted): recreate it next time."""
        try:
            yield
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            raise _GroupMissing from exc

    @staticmethod
    def _job(entry_id: str, fields: Mapping[str, Any], attempt: int, consumer: str) -> Job:
        payload = orjson.loads(fields["payload"])
        return Job(entry_id, fields["kind"], payload, attempt, extra={"consumer": consumer})

    # Event streams.

    async def publish(self, stream: str, type: str, data: Mapping[str, Any]) -> Event:
        data = dict(data)
        event_id = await self._publisher.publish(self._events_key(stream), type, orjson.dumps(data))
        return Event(event_id, type, data)

    async def _send_events(self, batch: EventBatch) -> list[Any]:
        """XADD a batch of events in one pipeline (not a transaction: each stands alone,
        and its error is its own)."""
        async with self._op() as conn:
            return await conn.events.pipeline(
                [self._xadd_event(key, type, body) for key, type, body in batch]
            )

    def _xadd_event(self, key: str, type: str, body: bytes) -> Command:
        return ("XADD", key, "MAXLEN", "~", self.stream_max_events, "*", "t", type, "d", body)

    async def read(self, stream: str, after: str | None, *, timeout_s: float) -> list[Event]:
        after_id = parse_stream_id(after)
        key = self._events_key(stream)
        conn = self._conn
        if conn is not None and timeout_s > 0 and conn.fanout.covers(key, after_id):
            # The shared XREAD already covers this id: it will deliver (an SSE stream's next
            # read, once per event it sends, so no other work here).
            return await conn.fanout.wait(key, after_id, timeout_s)
        async with self._op() as conn:
            if timeout_s <= 0 or not conn.fanout.covers(key, after_id):
                start = "-" if after is None else f"({after}"
                entries = await conn.events.call(("XRANGE", key, start, "+", "COUNT", READ_BATCH))
                if entries or timeout_s <= 0:
                    return [event_from_entry(entry_id, fields) for entry_id, fields in entries]
        return await conn.fanout.wait(key, after_id, timeout_s)

    async def expire(self, stream: str, ttl_s: float) -> None:
        async with self._op() as conn:
            await conn.events.call(
                ("PEXPIRE", self._events_key(stream), max(1, round(ttl_s * 1000)))
            )

    def _events_key(self, stream: str) -> str:
        return f"{self.key_prefix}:turn:{{{stream}}}:events"

    # Cancellation.

    async def request_cancel(self, turn_id: str) -> None:
        ttl_ms = round(self.cancel_ttl_s * 1000)
        async with self._op() as conn:
            await conn.client.set(self._cancel_key(turn_id), "1", px=ttl_ms)

    async def cancel_requested(self, turn_id: str) -> bool:
        async with self._op() as conn:
            found: int = await conn.events.call(("EXISTS", self._cancel_key(turn_id)))
        return found > 0

    async def cancels_requested(self, turn_ids: Collection[str]) -> set[str]:
        ids = list(turn_ids)
        if not ids:
            return set()
        async with self._op() as conn:
            found = await conn.events.pipeline(
                [("EXISTS", self._cancel_key(i)) for i in ids], raise_on_error=True
            )
        return {turn_id for turn_id, reply in zip(ids, found, strict=True) if reply}

    def _cancel_key(self, turn_id: str) -> str:
        return f"{self.key_prefix}:turn:{{{turn_id}}}:cancel"

    # Connections.

    def _pool(self) -> BlockingConnectionPool:
        """The pool of the job commands and scripts; the event connections (`DirectConnections`)
        are made like its own."""
        return BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=_POOL_WAIT_S,
            decode_responses=True,
            protocol=2,
            client_name=self.client_name,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            health_check_interval=_HEALTH_CHECK_S,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )

    @contextlib.asynccontextmanager
    async def _op(self) -> AsyncIterator[_Connections]:
        """One call to Redis on the clients (started on first use)."""
        if self._closed:
            raise ServiceUnavailable("the broker is closed")
        if self._conn is None:
            await self.start()
        assert self._conn is not None
        async with self._tracked():
            yield self._conn

    @contextlib.asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        """Counted while in flight, connection trouble as `ServiceUnavailable`, and a
        cancellation that redis-py swallowed raised again."""
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        except _UNAVAILABLE as exc:
            redis_error("broker")
            raise self._unavailable_error(exc) from exc
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        raise_if_cancel_was_lost()

    async def _wake_reader(self, events: DirectConnections) -> None:
        """Interrupt the shared XREAD (it always includes this stream). Also used while
        closing, so it does not check whether the broker is open."""
        async with self._tracked():
            await events.pipeline(
                [
                    ("XADD", self._wake_key, "MAXLEN", 1, "*", "w", "1"),
                    ("PEXPIRE", self._wake_key, _WAKE_KEY_TTL_MS),
                ],
                raise_on_error=True,
            )

    def _unavailable_error(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"{self._where} is unavailable: {exc}")
