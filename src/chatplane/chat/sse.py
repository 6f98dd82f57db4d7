"""Server-sent events for a turn: exact resume after an event id, keep-alives, and no
cost once the client is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import Receive, Scope, Send

from chatplane.broker.protocol import Broker, Event

TERMINAL_EVENTS = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE = b": keepalive\n\n"


def frame(event: Event) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event.id.encode(),
        event.type.encode(),
        orjson.dumps(dict(event.data)),
    )


class TurnEventStream:
    """An ASGI response that follows one turn's event stream from `after` on, starting
    with `initial` (read by the route, so a bad id fails before the response starts).

    `ended` is asked when the broker has nothing for us: a turn that finished long ago
    has no stream left, and the stored outcome is sent as the last event instead."""

    def __init__(
        self,
        broker: Broker,
        turn_id: str,
        after: str | None,
        *,
        initial: list[Event],
        keepalive_s: float,
        first_wait_s: float,
        ended: Callable[[], Awaitable[Event | None]],
    ) -> None:
        self.first_wait_s = first_wait_s
        self.initial = initial
        self.broker = broker
        self.turn_id = turn_id
        self.after = after
        self.keepalive_s = keepalive_s
        self.ended = ended

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.create_task(self._stream(send))
        disconnect = asyncio.create_task(_wait_disconnect(receive))
        try:
            await asyncio.wait({stream, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            stream.cancel()  # a no-op when it ended by itself
            await asyncio.gather(disconnect, return_exceptions=True)
            with contextlib.suppress(asyncio.CancelledError):
                await stream  # re-raises what the stream itself raised

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        after = self.after
        checked_ended = False
        wait_s = self.first_wait_s
        events = self.initial
        while True:
            if not events:
                events = await self.broker.read(self.turn_id, after, timeout_s=wait_s)
                wait_s = self.keepalive_s
            if not events:
                if not checked_ended:
                    checked_ended = True
                    final = await self.ended()
                    if final is not None:
                        await send({"type": "http.response.body", "body": _synthetic(final)})
                        return
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                continue
            body = b"".join(frame(event) for event in events)
            after = events[-1].id
            last = any(event.type in TERMINAL_EVENTS for event in events)
            await send({"type": "http.response.body", "body": body, "more_body": not last})
            if last:
                return
            events = []


def _synthetic(event: Event) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.type.encode(), orjson.dumps(dict(event.data)))


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
