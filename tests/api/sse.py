"""A small SSE reader for tests: frames as (id, event, data)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

TERMINAL = {
    "turn.completed",
    "turn.failed",
    "turn.cancelled",
    "document.ready",
    "document.failed",
}


@dataclass
class Frame:
    id: str | None
    event: str
    data: dict[str, Any]


async def read_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    last_event_id: str | None = None,
    limit: int | None = None,
) -> list[Frame]:
    """Read frames until a terminal event (or `limit` frames), then hang up."""
    headers = {"last-event-id": last_event_id} if last_event_id else {}
    frames: list[Frame] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in fields:
                    frames.append(
                        Frame(fields.get("id"), fields["event"], json.loads(fields["data"]))
                    )
                    if frames[-1].event in TERMINAL or (limit and len(frames) >= limit):
                        break
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
    return frames


def text_of(frames: list[Frame]) -> str:
    return "".join(f.data["text"] for f in frames if f.event == "message.delta")


def id_order(event_id: str) -> tuple[int, ...]:
    """Event ids are opaque but ordered: "7" in-process, "1700000000000-3" on Redis."""
    return tuple(int(part) for part in event_id.split("-"))
