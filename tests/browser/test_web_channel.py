"""The web app follows answers over the tab's one WebSocket (/api/ws), and falls back to
server-sent events where WebSockets do not get through."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, Request, WebSocket, expect

from .conftest import LiveServer, PageLog
from .test_web_chat import (
    HELLO,
    LONG,
    STREAM_TIMEOUT_MS,
    answer_source,
    assert_clean,
    log_in,
    new_chat,
    send,
    shot,
    wait_for_partial_answer,
)

pytestmark = pytest.mark.browser

# Every socket the page opens goes to a path the server does not serve: the handshake
# fails, as behind a proxy that does not route WebSockets.
BROKEN_WEBSOCKETS = """
(() => {
    const Real = window.WebSocket;
    window.WebSocket = class extends Real {
        constructor(url, protocols) { super(url.replace('/api/ws', '/api/ws-blocked'), protocols); }
    };
})();
"""


def watch_traffic(page: Page) -> tuple[list[WebSocket], list[str]]:
    """The page's WebSockets, and the URLs of its turn event-stream requests."""
    sockets: list[WebSocket] = []
    event_streams: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.split("?")[0].endswith("/events"):
            event_streams.append(request.url)

    def on_websocket(socket: WebSocket) -> None:
        sockets.append(socket)

    page.on("websocket", on_websocket)
    page.on("request", on_request)
    return sockets, event_streams


async def test_answers_stream_over_one_websocket(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    sockets, event_streams = watch_traffic(page)
    await log_in(page, live_server)
    await new_chat(page)

    first = await send(page, HELLO)
    await expect(first).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == HELLO
    second = await send(page, LONG)
    partial = await wait_for_partial_answer(page, min_chars=20)
    assert LONG.startswith(partial)
    await expect(second).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == LONG
    await shot(page, artifacts, "channel-01-websocket")

    assert [socket.url.split("/", 3)[3] for socket in sockets] == ["api/ws"]
    assert not sockets[0].is_closed()
    assert event_streams == []  # no answer came over SSE
    await assert_clean(page, log)


async def test_falls_back_to_server_sent_events_without_websockets(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await page.add_init_script(BROKEN_WEBSOCKETS)
    sockets, event_streams = watch_traffic(page)
    await log_in(page, live_server)
    await new_chat(page)

    answer = await send(page, LONG)
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == LONG, "characters lost or repeated in the fallback"
    await shot(page, artifacts, "channel-02-sse-fallback")

    assert len(sockets) >= 2  # tried, failed, tried again, then gave up on WebSockets
    assert all(socket.url.endswith("/api/ws-blocked") for socket in sockets)
    assert len(event_streams) >= 1  # the answer came over server-sent events
    assert log.page_errors == []  # failed handshakes are console noise, not page errors
