"""`GET /api/turns/{turn_id}/events`: server-sent events for a turn, exact resume after an
event id, keep-alives, and no cost once the client is gone.

A plain ASGI route, not a FastAPI endpoint: an open stream is the thing a process holds
thousands of, so each one keeps only its own frame, one small watcher task and a waiter
in the broker (no dependency graph, no response object, no extra streaming task)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qs

import orjson
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from chatplane.auth.deps import authenticate_request, count_request, require_scope
from chatplane.auth.principal import Principal
from chatplane.broker.protocol import Event
from chatplane.chat.models import TERMINAL_STATES
from chatplane.chat.schemas import turn_error
from chatplane.container import Services
from chatplane.errors import BadRequest, ChatplaneError
from chatplane.http.problems import error_response
from chatplane.observability.metrics import sse_stream_ended, sse_stream_started
from chatplane.ops.drain import Drain

TERMINAL_EVENTS = frozenset({"turn.completed", "turn.failed", "turn.cancelled"})
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
RETRY = b"retry: 1000\n\n"
KEEPALIVE = b": keepalive\n\n"
# The last words of a stream this server ends because it drains: the client reconnects
# (EventSource by itself) with Last-Event-ID and resumes on another server.
DRAINING = b": this server is restarting; resume elsewhere\nretry: 500\n\n"
MAX_EVENT_ID = 64


def frame(event: Event) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event.id.encode(),
        event.type.encode(),
        orjson.dumps(dict(event.data)),
    )


def _final(event: Event) -> bytes:
    """The stored outcome of a turn whose events expired: no id, nothing follows it."""
    return b"event: %s\ndata: %s\n\n" % (event.type.encode(), orjson.dumps(dict(event.data)))


def resume_after(connection: HTTPConnection) -> str | None:
    after = connection.headers.get("last-event-id")
    if after is None:
        values = parse_qs(connection.scope["query_string"].decode("latin-1")).get("after")
        after = values[0] if values else None
    if after is not None and len(after) > MAX_EVENT_ID:
        raise BadRequest("The event id is too long", code="invalid_event_id", field="after")
    return after or None


class BrokerEvents:
    """A plain ASGI route that streams one broker stream (a turn's, a document's events) to
    a caller allowed to read its subject: authenticate, count, check access, read what is
    there (a bad id is a 400, not a broken stream), then follow it with `EventStream`.
    Subclasses name the stream, check access, and tell the stored outcome once the events
    have expired."""

    terminal: frozenset[str]

    def stream_of(self, params: Mapping[str, str]) -> str:
        raise NotImplementedError

    async def ended(
        self, services: Services, principal: Principal, params: Mapping[str, str]
    ) -> bool:
        """Raise when the principal may not read the subject; whether it has ended."""
        raise NotImplementedError

    async def outcome(
        self, services: Services, principal: Principal, params: Mapping[str, str]
    ) -> Event | None:
        """How the subject ended, from its stored row (no id: nothing follows it)."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        connection = HTTPConnection(scope)
        params: dict[str, str] = scope["path_params"]
        stream = self.stream_of(params)
        try:
            principal = require_scope(
                await authenticate_request(
                    services, method="GET", headers=connection.headers, cookies=connection.cookies
                ),
                "chat",
            )
            await count_request(services, principal, scope)
            ended = await self.ended(services, principal, params)
            after = resume_after(connection)
            events = await services.broker.read(stream, after, timeout_s=0)
        except ChatplaneError as exc:
            await error_response(scope["path"], exc)(scope, receive, send)
            return

        async def stored_outcome() -> Event | None:
            return await self.outcome(services, principal, params)

        ended_long_ago = ended and not events
        del connection  # an idle stream keeps only what it needs
        await EventStream(
            services,
            stream,
            after,
            events,
            stored_outcome,
            scope["app"].state.drain,
            terminal=self.terminal,
        ).run(receive, send, first_wait_s=0.0 if ended_long_ago else None)


async def turn_outcome(services: Services, principal: Principal, turn_id: str) -> Event | None:
    """The stored outcome of an ended turn (its events expired); None while it runs."""
    latest = await services.chat.get_turn(principal, turn_id)
    if latest.status not in TERMINAL_STATES:
        return None
    data: dict[str, object] = {"message_id": latest.assistant_message_id}
    if latest.status == "failed":
        data = {"error": turn_error(latest.error_code, latest.error_message)}
    return Event(id="", type=f"turn.{latest.status}", data=data)


class TurnEvents(BrokerEvents):
    terminal = TERMINAL_EVENTS

    def stream_of(self, params: Mapping[str, str]) -> str:
        return params["turn_id"]

    async def ended(
        self, services: Services, principal: Principal, params: Mapping[str, str]
    ) -> bool:
        turn = await services.chat.get_turn(principal, params["turn_id"])
        return turn.status in TERMINAL_STATES

    async def outcome(
        self, services: Services, principal: Principal, params: Mapping[str, str]
    ) -> Event | None:
        return await turn_outcome(services, principal, params["turn_id"])


class EventStream:
    """One client's SSE stream of a broker stream (a turn's or a document's events), from
    after `after` until one of the `terminal` event types."""

    def __init__(
        self,
        services: Services,
        stream: str,
        after: str | None,
        events: list[Event],
        stored_outcome: Callable[[], Awaitable[Event | None]],
        drain: Drain,
        terminal: frozenset[str] = TERMINAL_EVENTS,
    ) -> None:
        self.broker = services.broker
        self.drain = drain
        self.terminal = terminal
        self.started = False
        self.keepalive_s = services.settings.sse_keepalive_s
        self.stream = stream
        self.after = after
        self.events = events
        self.stored_outcome = stored_outcome

    async def run(self, receive: Receive, send: Send, *, first_wait_s: float | None) -> None:
        """Stream until a terminal event; a watcher cancels us when the client leaves."""
        me = asyncio.current_task()
        assert me is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            me.cancel()

        watcher = asyncio.create_task(watch())
        sse_stream_started()
        try:
            with self.drain.stream():
                try:
                    await self._send_events(send, first_wait_s)
                except asyncio.CancelledError:
                    if gone:
                        me.uncancel()  # the client left: a normal end, not a cancellation
                    elif self.drain.ended_by_drain():
                        me.uncancel()  # this server drains: the client resumes on another
                        if not self.started:
                            await self._start(send)
                        await send({"type": "http.response.body", "body": DRAINING})
                    else:
                        raise
        except OSError:
            pass  # the connection broke while we were writing
        finally:
            sse_stream_ended()
            watcher.cancel()

    async def _start(self, send: Send) -> None:
        self.started = True
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send({"type": "http.response.body", "body": RETRY, "more_body": True})

    async def _send_events(self, send: Send, first_wait_s: float | None) -> None:
        await self._start(send)
        after, events = self.after, self.events
        wait_s = self.keepalive_s if first_wait_s is None else first_wait_s
        checked_outcome = False
        while True:
            if not events:
                events = await self.broker.read(self.stream, after, timeout_s=wait_s)
                wait_s = self.keepalive_s
            if not events:
                if not checked_outcome:
                    checked_outcome = True
                    final = await self.stored_outcome()
                    if final is not None:
                        await send({"type": "http.response.body", "body": _final(final)})
                        return
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
                continue
            last = any(event.type in self.terminal for event in events)
            body = b"".join(frame(event) for event in events)
            await send({"type": "http.response.body", "body": body, "more_body": not last})
            if last:
                return
            after, events = events[-1].id, []
