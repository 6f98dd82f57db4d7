"""Turn event streams on Redis: stream ids, entries, and the fan-out of blocked readers.

Every waiting `read()` of a process is served by ONE loop on ONE dedicated connection. The
loop issues a single blocking `XREAD` over every stream that has waiters (each from the
lowest id any of its waiters needs) and resolves each waiter's future with exactly the
events after its own id. A waiter costs a small object and a future: no task, no queue, no
connection. A reader that registers for a stream the in-flight `XREAD` does not cover
interrupts it by `XADD`ing to this process's wake-up stream, which every `XREAD` includes.

Streams that just delivered stay in the `XREAD` for a second without waiters ("sticky"),
so an SSE client that comes straight back for the next event does not cost a wake-up. When
the `XREAD` fails, every waiter gets `ServiceUnavailable` at once and the loop retries with
a backoff; the reader that comes back after the outage is served as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import structlog
from redis import exceptions as redis_errors

from chatplane.broker.protocol import READ_BATCH, Event
from chatplane.errors import BadRequest, ServiceUnavailable
from chatplane.observability.metrics import redis_error
from chatplane.redis_direct import DirectConnections

StreamId = tuple[int, int]

_STREAM_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_PART = 2**64 - 1
_BACKOFF_MIN_S = 0.05
_BACKOFF_MAX_S = 2.0
_STOP_GRACE_S = 5.0

log = structlog.get_logger(__name__)


def raise_if_cancel_was_lost() -> None:
    """redis-py can swallow a cancellation that lands inside a command (the redis-py#2028
    family): the command returns as if nothing happened. A task that was asked to stop
    (`cancelling()`) still stops, and a caller's `asyncio.timeout` still fires."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def parse_stream_id(value: str | None) -> StreamId:
    """A Redis stream id as a comparable pair; None is the start of the stream."""
    if value is None:
        return (0, 0)
    match = _STREAM_ID.fullmatch(value)
    if match is None:
        raise BadRequest(f"not an event id: {value!r}")
    parsed = (int(match[1]), int(match[2]))
    if max(parsed) > _MAX_PART or parsed == (_MAX_PART, _MAX_PART):
        raise BadRequest(f"event id out of range: {value!r}")
    return parsed


def format_stream_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


def event_from_entry(entry_id: str, fields: Sequence[str]) -> Event:
    """An event from a stream entry as Redis sends it (RESP2): its id and its fields as a
    flat list of names and values (`t` the type, `d` the JSON data)."""
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return Event(entry_id, values["t"], orjson.loads(values["d"]))


class _Waiter:
    __slots__ = ("after", "future")

    def __init__(self, after: StreamId, future: asyncio.Future[list[Event] | Exception]) -> None:
        self.after = after
        self.future = future


class StreamFanout:
    def __init__(
        self,
        *,
        reader: DirectConnections,
        wake_key: str,
        wake: Callable[[], Awaitable[None]],
        unavailable: Callable[[Exception], ServiceUnavailable],
        block_s: float = 2.0,
        sticky_s: float = 1.0,
    ) -> None:
        self._reader = reader  # one connection, used only by the loop
        self._wake_key = wake_key  # the loop reads it; `wake()` appends to it
        self._send_wake = wake
        self._unavailable = unavailable
        self._block_ms = max(1, round(block_s * 1000))
        self._sticky_s = sticky_s
        self._waiters: dict[str, set[_Waiter]] = {}
        self._sticky: dict[str, tuple[StreamId, float]] = {}  # key -> (last id, until)
        self._reading: dict[str, StreamId] = {}  # what the in-flight XREAD covers
        self._wake_last = "0-0"
        self._wake_sent = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending_reads(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    def covers(self, key: str, after: StreamId) -> bool:
        """Whether the in-flight XREAD already returns every event after `after` on `key`."""
        reading = self._reading.get(key)
        return reading is not None and after >= reading

    async def wait(self, key: str, after: StreamId, timeout_s: float) -> list[Event]:
        """Events after `after` on `key` once there are some; [] after `timeout_s`."""
        if self._closed:
            return []
        self._ensure_running()
        future: asyncio.Future[list[Event] | Exception] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(after, future)
        self._waiters.setdefault(key, set()).add(waiter)
        try:
            if not self.covers(key, after):
                await self._wake()
            async with asyncio.timeout(timeout_s):
                result = await future
        except TimeoutError:
            return []
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]
        if isinstance(result, Exception):
            raise result
        return result

    async def close(self) -> None:
        """Wake every waiter with no events and stop the loop. The loop is cancelled and
        also woken, since redis-py may swallow a cancellation during its XREAD."""
        self._closed = True
        self._resolve_all(None)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(ServiceUnavailable):
                await self._send_wake()
            await asyncio.wait({task}, timeout=self._block_ms / 1000 + _STOP_GRACE_S)
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: it was logged where it happened
        self._reading = {}
        self._sticky.clear()

    def _ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        if self._task is not None and not self._task.cancelled() and self._task.exception():
            log.error("broker.reader.crashed", error=repr(self._task.exception()))
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="chatplane-broker-stream-reader")

    async def _wake(self) -> None:
        if self._wake_sent:
            return
        self._wake_sent = True
        try:
            await self._send_wake()
        except BaseException:
            self._wake_sent = False
            raise

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._closed:
            streams = self._snapshot()
            command = ("XREAD", "COUNT", READ_BATCH, "BLOCK", self._block_ms, "STREAMS")
            try:
                reply: Any = await self._reader.call((*command, *streams.keys(), *streams.values()))
                raise_if_cancel_was_lost()
            except redis_errors.RedisError as exc:
                if self._closed:
                    return
                log.warning("broker.reader.error", error=str(exc), retry_in_s=backoff)
                redis_error("broker_reader")
                self._reading = {}
                self._sticky.clear()
                self._resolve_all(self._unavailable(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_MIN_S
            self._dispatch(reply)

    def _snapshot(self) -> dict[str, str]:
        now = asyncio.get_running_loop().time()
        reading = {key: min(w.after for w in waiters) for key, waiters in self._waiters.items()}
        for key, (last, until) in list(self._sticky.items()):
            if until <= now:
                del self._sticky[key]
            elif key not in reading:
                reading[key] = last
        self._reading = reading
        self._wake_sent = False
        streams = {key: format_stream_id(after) for key, after in reading.items()}
        streams[self._wake_key] = self._wake_last
        return streams

    def _dispatch(self, reply: Any) -> None:
        until = asyncio.get_running_loop().time() + self._sticky_s
        for key, entries in reply or ():
            if not entries:
                continue
            if key == self._wake_key:
                self._wake_last = entries[-1][0]
                continue
            events = [event_from_entry(entry_id, fields) for entry_id, fields in entries]
            ids = [parse_stream_id(event.id) for event in events]
            previous = self._sticky.get(key)
            last = ids[-1] if previous is None else max(ids[-1], previous[0])
            self._sticky[key] = (last, until)
            waiters = self._waiters.get(key)
            if not waiters:
                continue
            for waiter in list(waiters):
                start = bisect_right(ids, waiter.after)
                if start < len(events) and not waiter.future.done():
                    waiter.future.set_result(events[start:])
                    waiters.discard(waiter)
            if not waiters:
                del self._waiters[key]

    def _resolve_all(self, error: Exception | None) -> None:
        """Wake every waiter: with the error, or with no events (closing)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result([] if error is None else error)
        self._waiters.clear()


EventBatch = list[tuple[str, str, bytes]]  # (stream key, event type, JSON data)


class EventPublisher:
    """A process's event publishes, sent in pipelines: one that comes while another send
    is on its way waits for it and goes with every other that came meanwhile, in order. One
    alone is sent at once by its own caller, so a quiet process adds no task and no
    latency; a busy one (many turns streaming) pays one round trip and one wake-up per
    batch instead of per event."""

    def __init__(self, send: Callable[[EventBatch], Awaitable[list[Any]]]) -> None:
        self._send = send  # XADDs the batch; one reply (an id or an error) per event
        self._waiting: list[tuple[str, str, bytes, asyncio.Future[str]]] = []
        self._busy = False  # a send is on its way (the caller's own, or the flusher's)

    async def publish(self, key: str, type: str, body: bytes) -> str:
        """The new event's id, once it is in Redis."""
        if self._busy:
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._waiting.append((key, type, body, future))
            return await future
        self._busy = True
        try:
            [reply] = await self._send([(key, type, body)])
        finally:
            self._hand_over()
        if isinstance(reply, Exception):
            raise reply
        return str(reply)

    def _hand_over(self) -> None:
        """A send ended: the publishes that came meanwhile go next, in one batch."""
        if self._waiting:
            asyncio.get_running_loop().create_task(self._flush(), name="chatplane-broker-publisher")
        else:
            self._busy = False

    async def _flush(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            replies = await self._send([(key, type, body) for key, type, body, _ in batch])
        except Exception as exc:  # every publish of the batch fails with it
            replies = [exc] * len(batch)
        except BaseException:  # this task was cancelled (loop shutdown): nobody waits forever
            replies = [ServiceUnavailable("the broker is closed")] * len(batch)
            raise
        finally:
            self._hand_over()
            for (*_, future), reply in zip(batch, replies, strict=True):
                if future.done():  # its publisher was cancelled
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(str(reply))
