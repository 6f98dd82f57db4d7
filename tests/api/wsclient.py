"""A small client of the WebSocket channel for tests, on the `websockets` library."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.api.sse import TERMINAL, Frame

CHANNEL_PROTOCOL = "chatplane.v1"


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/api/ws"


def bearer_protocol(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return f"base64url.bearer.chatplane.{encoded}"


@asynccontextmanager
async def channel(
    base_url: str, token: str | None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A connection with a bearer token in the Authorization header (None: no token)."""
    headers = dict(kwargs.pop("additional_headers", {}))
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with connect(
        ws_url(base_url),
        additional_headers=headers,
        proxy=None,
        open_timeout=10,
        close_timeout=5,
        **kwargs,
    ) as ws:
        yield ws


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection, *, timeout_s: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        raw = await ws.recv()
    message: dict[str, Any] = json.loads(raw)
    return message


async def expect(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message, which must be of this type."""
    message = await receive(ws)
    assert message["type"] == kind, message
    return message


async def read_turns(
    ws: ClientConnection,
    turn_ids: set[str],
    *,
    limit: int | None = None,
    timeout_s: float = 20.0,
    received: list[dict[str, Any]] | None = None,
) -> dict[str, list[Frame]]:
    """Event messages per turn (`received` first, then from the socket) until every turn
    in `turn_ids` ended (or `limit` events in all); any other message fails the test."""
    frames: dict[str, list[Frame]] = {turn_id: [] for turn_id in turn_ids}
    open_turns = set(turn_ids)
    backlog = list(received or [])
    count = 0
    async with asyncio.timeout(timeout_s):
        while open_turns and (limit is None or count < limit):
            message = backlog.pop(0) if backlog else await receive(ws, timeout_s=timeout_s)
            assert message["type"] == "event", message
            assert message["turn_id"] in frames, message
            frames[message["turn_id"]].append(
                Frame(message["id"], message["event"], message["data"])
            )
            count += 1
            if message["event"] in TERMINAL:
                open_turns.discard(message["turn_id"])
    return frames


async def events_until_closed(ws: ClientConnection, turn_id: str) -> tuple[list[Frame], int | None]:
    """A turn's events until the server closes the connection, and the close code."""
    frames: list[Frame] = []
    try:
        while True:
            frames += (await read_turns(ws, {turn_id}, limit=1))[turn_id]
    except ConnectionClosed as closed:
        return frames, closed.rcvd.code if closed.rcvd else None


def as_tuples(frames: list[Frame]) -> list[tuple[str | None, str, dict[str, Any]]]:
    return [(frame.id, frame.event, frame.data) for frame in frames]
