"""`/api/ws`: the WebSocket channel. One connection carries the events of several turns at
once (the same ids, types and data as `GET /api/turns/{id}/events`) and sends and cancels
turns, with the same credentials, tenant scoping and limits as the HTTP routes.

A plain ASGI route on Starlette's `WebSocket`. Each subscription is one small reader task on
the broker's `read`, which one process already multiplexes over one broker connection; the
reader writes JSON text frames straight to the socket (a frame is written whole, so readers
need no lock between them). Ping frames come from the server (`serve` sets uvicorn's
`ws_ping_interval`), so the channel itself has no keep-alive messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections import OrderedDict
from typing import Any, Literal

import orjson
import structlog
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from chatplane.auth.principal import Principal
from chatplane.broker.protocol import Event
from chatplane.chat.models import TERMINAL_STATES
from chatplane.chat.schemas import MessageIn
from chatplane.chat.sse import MAX_EVENT_ID, TERMINAL_EVENTS, turn_outcome
from chatplane.chat.ws_handshake import Credential, handshake_credential
from chatplane.container import Services
from chatplane.errors import BadRequest, ChatplaneError
from chatplane.http.problems import error_response
from chatplane.observability.metrics import ws_closed, ws_message, ws_opened, ws_subscribed
from chatplane.ops.drain import Drain

log = structlog.get_logger("chatplane.ws")

# Close codes (RFC 6455, section 7.4.1).
CLOSE_POLICY = 1008  # too many messages
CLOSE_TOO_BIG = 1009  # a message over the size limit
CLOSE_RESTART = 1012  # this server drains: reconnect (elsewhere) and resubscribe with `after`
MAX_FOLLOWED = 1000  # turns a connection remembers following (replayed sends)

_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)
_REQUEST_ID = re.compile(r"[\x20-\x7e]{1,128}")


class TurnRef(BaseModel):
    turn_id: str = Field(min_length=1, max_length=64)


class Subscribe(TurnRef):
    type: Literal["subscribe"]
    after: str | None = None


class Unsubscribe(TurnRef):
    type: Literal["unsubscribe"]


class Cancel(TurnRef):
    type: Literal["cancel"]


class SendMessage(MessageIn):
    type: Literal["send"]
    conversation_id: str = Field(min_length=1, max_length=64)
    # As the HTTP post's Idempotency-Key header: a send repeated with it is stored once.
    idempotency_key: str | None = None


ClientMessage = Subscribe | Unsubscribe | Cancel | SendMessage
CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "send": SendMessage,
    "cancel": Cancel,
}


class ChannelError(ChatplaneError):
    """A client message the channel refuses (an `error` message; the connection stays,
    unless the error says it closes)."""

    status = 400


UNEXPECTED = ChatplaneError("Something went wrong on our side; the error was logged")


def invalid(detail: str, **extra: Any) -> ChannelError:
    return ChannelError(detail, code="invalid_message", **extra)


class MessageRate:
    """A token bucket: `rate_per_s` client messages a second, `burst` at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ChatSocket:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services: Services = scope["app"].state.services
        websocket = WebSocket(scope, receive, send)
        structlog.contextvars.clear_contextvars()
        given = websocket.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(16)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            credential = handshake_credential(websocket, services.settings)
            client = scope.get("client")
            await services.limits.check_ip("chat", client[0] if client else "unknown")
            principal = await credential.principal(services)
            await services.limits.check_requests(principal, "chat")
        except ChatplaneError as exc:
            await _refuse(websocket, exc)
            return
        await websocket.accept(subprotocol=credential.subprotocol)
        channel = Channel(websocket, services, credential, scope["app"].state.drain)
        await channel.serve()


async def _refuse(websocket: WebSocket, exc: ChatplaneError) -> None:
    """The handshake's answer is the problem an HTTP route would give (401, 403, 429), where
    the server can send one; else a bare 403."""
    log.info("ws_refused", code=exc.code)
    try:
        await websocket.send_denial_response(error_response(websocket.url.path, exc))
    except RuntimeError:  # no denial responses in this server
        await websocket.close(CLOSE_POLICY)


class Channel:
    """One accepted connection: client messages handled one at a time, in order, and one
    reader task per subscribed turn."""

    def __init__(
        self,
        websocket: WebSocket,
        services: Services,
        credential: Credential,
        drain: Drain,
    ) -> None:
        settings = services.settings
        self.websocket = websocket
        self.services = services
        self.credential = credential
        self.drain = drain
        self.max_bytes = settings.max_request_bytes
        self.max_subscriptions = settings.ws_max_subscriptions
        self.wake_s = settings.sse_keepalive_s
        self.rate = MessageRate(settings.ws_message_rate_per_s, settings.ws_message_burst)
        self.readers: dict[str, asyncio.Task[None]] = {}
        # The turns whose events this connection follows or followed to their end (oldest
        # first, bounded): a `send` replayed by its idempotency key answers `accepted`
        # again without sending those events a second time.
        self.followed: OrderedDict[str, None] = OrderedDict()
        self.posting: asyncio.Task[str | None] | None = None

    async def serve(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        began = time.monotonic()
        close: tuple[int, str] | None = None
        ws_opened()
        try:
            with self.drain.stream():
                try:
                    close = await self._receive_loop()
                except asyncio.CancelledError:
                    if not self.drain.ended_by_drain():
                        raise
                    me.uncancel()  # this server drains: the client resumes on another
                    if self.posting is not None:  # a send in flight is answered first
                        await asyncio.gather(self.posting, return_exceptions=True)
                    close = (CLOSE_RESTART, "server restarting; resubscribe with after")
        finally:
            await self._stop_readers()
            ws_closed(close[0] if close else None)
        if close is not None:
            with contextlib.suppress(*_GONE):
                await self.websocket.close(*close)
        log.info(
            "ws_closed",
            code=close[0] if close else None,
            seconds=round(time.monotonic() - began, 3),
        )

    async def _receive_loop(self) -> tuple[int, str] | None:
        """Client messages until the client leaves (None) or a limit closes the connection."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            text: str | None = message.get("text")
            try:
                if text is None:
                    await self._error(invalid("Send JSON text frames, not binary ones"))
                    continue
                if len(text) > self.max_bytes or len(text.encode()) > self.max_bytes:
                    await self._error(
                        ChannelError(
                            f"A message may have at most {self.max_bytes} bytes",
                            code="message_too_large",
                        )
                    )
                    return CLOSE_TOO_BIG, "message too large"
                if not self.rate.allow():
                    await self._error(
                        ChannelError(
                            "Too many messages on this connection; slow down",
                            code="too_many_messages",
                        )
                    )
                    return CLOSE_POLICY, "too many messages"
                await self._handle(text)
            except _GONE:
                return None

    async def _handle(self, text: str) -> None:
        context: dict[str, str] = {}
        try:
            try:
                command = _parse(text)
            except ChatplaneError:
                ws_message("in", None)
                raise
            ws_message("in", command.type)
            if isinstance(command, SendMessage):
                context["conversation_id"] = command.conversation_id
                await self._send_message(command)
            else:
                context["turn_id"] = command.turn_id
                if isinstance(command, Subscribe):
                    await self._subscribe(command)
                elif isinstance(command, Unsubscribe):
                    self._unsubscribe(command.turn_id)
                    self.followed.pop(command.turn_id, None)
                else:
                    await self.services.chat.cancel_turn(await self._authorize(), command.turn_id)
        except ChatplaneError as exc:
            await self._error(exc, **context)
        except _GONE:
            raise
        except Exception:
            log.exception("ws_command_failed")
            await self._error(UNEXPECTED, **context)

    async def _authorize(self) -> Principal:
        """The handshake's credential, checked again, and one more request in the caller's
        limits, as each HTTP request counts."""
        principal = await self.credential.principal(self.services)
        await self.services.limits.check_requests(principal, "chat")
        return principal

    # Commands -------------------------------------------------------------------------------

    async def _subscribe(self, command: Subscribe) -> None:
        after = command.after or None
        if after is not None and len(after) > MAX_EVENT_ID:
            raise BadRequest("The event id is too long", code="invalid_event_id", field="after")
        self._room_for(command.turn_id)
        principal = await self._authorize()
        turn = await self.services.chat.get_turn(principal, command.turn_id)
        try:
            events = await self.services.broker.read(command.turn_id, after, timeout_s=0)
        except BadRequest as exc:
            raise BadRequest(exc.detail, code="invalid_event_id", field="after") from exc
        ended_long_ago = turn.status in TERMINAL_STATES and not events
        self._follow(principal, command.turn_id, after, events, ended_long_ago)

    def _unsubscribe(self, turn_id: str) -> None:
        reader = self.readers.pop(turn_id, None)
        if reader is not None:
            reader.cancel()

    async def _send_message(self, command: SendMessage) -> None:
        self.drain.refuse_new_work()
        self._room_for(None)
        principal = await self._authorize()

        async def post() -> str | None:
            try:
                turn = await self.services.chat.post_message(
                    principal,
                    command.conversation_id,
                    content=command.content,
                    model=command.model,
                    knowledge_base_ids=command.knowledge_base_ids,
                    idempotency_key=command.idempotency_key,
                )
            except ChatplaneError as exc:
                await self._error(exc, conversation_id=command.conversation_id)
                return None
            await self._send(
                {"type": "accepted", "turn_id": turn.id, "message_id": turn.user_message_id}
            )
            return turn.id

        # A drain does not cut it halfway: the message is stored, queued and answered, or not
        # stored at all; `serve` waits for it before it closes.
        self.posting = posting = asyncio.create_task(post())
        turn_id = await asyncio.shield(posting)
        self.posting = None
        if turn_id is not None and turn_id not in self.followed:  # else: a replay
            self._follow(principal, turn_id, None, [], ended_long_ago=False)

    def _room_for(self, turn_id: str | None) -> None:
        if turn_id not in self.readers and len(self.readers) >= self.max_subscriptions:
            raise ChannelError(
                f"At most {self.max_subscriptions} subscriptions per connection; unsubscribe first",
                code="too_many_subscriptions",
            )

    # Events ---------------------------------------------------------------------------------

    def _follow(
        self,
        principal: Principal,
        turn_id: str,
        after: str | None,
        events: list[Event],
        ended_long_ago: bool,
    ) -> None:
        """Start (or restart, from `after`) the reader of a turn."""
        self._unsubscribe(turn_id)
        first_wait_s = 0.0 if ended_long_ago else self.wake_s
        reader = asyncio.create_task(
            self._read(principal, turn_id, after, events, first_wait_s), name=f"ws-{turn_id}"
        )
        self.readers[turn_id] = reader
        self.followed[turn_id] = None
        self.followed.move_to_end(turn_id)
        if len(self.followed) > MAX_FOLLOWED:
            self.followed.popitem(last=False)
        ws_subscribed(1)

        def done(task: asyncio.Task[None]) -> None:
            ws_subscribed(-1)
            if self.readers.get(turn_id) is task:
                del self.readers[turn_id]

        reader.add_done_callback(done)

    async def _read(
        self,
        principal: Principal,
        turn_id: str,
        after: str | None,
        events: list[Event],
        wait_s: float,
    ) -> None:
        """A turn's events from after `after` to its terminal event, like the SSE stream;
        when its events expired, the stored outcome (with no id) once the wait finds none."""
        checked_outcome = False
        try:
            while True:
                if not events:
                    events = await self.services.broker.read(turn_id, after, timeout_s=wait_s)
                    wait_s = self.wake_s
                if not events:
                    if not checked_outcome:
                        checked_outcome = True
                        final = await turn_outcome(self.services, principal, turn_id)
                        if final is not None:
                            await self._send_event(turn_id, final)
                            return
                    continue
                for event in events:
                    await self._send_event(turn_id, event)
                if any(event.type in TERMINAL_EVENTS for event in events):
                    return
                after, events = events[-1].id, []
        except ChatplaneError as exc:  # the broker is down: the client resubscribes later
            await self._error(exc, turn_id=turn_id)
        except _GONE:
            pass
        except Exception:
            log.exception("ws_reader_failed", turn_id=turn_id)
            await self._error(UNEXPECTED, turn_id=turn_id)

    async def _stop_readers(self) -> None:
        readers = list(self.readers.values())
        self.readers.clear()
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)

    # Frames ---------------------------------------------------------------------------------

    async def _send_event(self, turn_id: str, event: Event) -> None:
        await self._send(
            {
                "type": "event",
                "turn_id": turn_id,
                "id": event.id or None,
                "event": event.type,
                "data": dict(event.data),
            }
        )

    async def _error(self, exc: ChatplaneError, **context: str) -> None:
        extra = {k: v for k, v in exc.extra.items() if not k.startswith("_")}
        await self._send(
            {**extra, **context, "type": "error", "code": exc.code, "message": exc.detail}
        )

    async def _send(self, message: dict[str, Any]) -> None:
        ws_message("out", message["type"])
        await self.websocket.send(
            {"type": "websocket.send", "text": orjson.dumps(message).decode()}
        )


def _parse(text: str) -> ClientMessage:
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise invalid("A message is one JSON object") from exc
    if not isinstance(raw, dict):
        raise invalid("A message is one JSON object")
    kind = raw.get("type")
    model = CLIENT_MESSAGES.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(CLIENT_MESSAGES)
        raise ChannelError(
            f"Unknown message type {kind!r}; use one of {known}", code="unknown_type"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise invalid(f"{field}: {first['msg']}", field=field) from exc
