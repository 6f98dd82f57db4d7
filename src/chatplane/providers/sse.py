"""An incremental server-sent-events decoder over raw bytes.

Upstream reads cut events anywhere (even inside a UTF-8 character), so the decoder keeps
the unfinished tail and only ever hands out whole events. It works on bytes and decodes
nothing: callers parse the `data` they care about.
"""

from __future__ import annotations

from dataclasses import dataclass

# A well-behaved upstream never sends an event this large; a broken one must not make
# us buffer without bound.
MAX_EVENT_BYTES = 1024 * 1024


class SSEProtocolError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: bytes
    event: str | None = None


class SSEDecoder:
    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by `chunk`, in order."""
        buffer = self._tail + chunk if self._tail else chunk
        pending_cr = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # maybe the first half of a CRLF
                buffer, pending_cr = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, rest = buffer.split(b"\n\n")
        if len(rest) > MAX_EVENT_BYTES:
            raise SSEProtocolError(f"an event exceeds {MAX_EVENT_BYTES} bytes")
        self._tail = rest + pending_cr
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[ServerSentEvent]:
        """At end of stream: the last event, when the upstream omitted the blank line."""
        block, self._tail = self._tail.replace(b"\r", b""), b""
        event = _parse_block(block) if block.strip() else None
        return [event] if event is not None else []


def _parse_block(block: bytes) -> ServerSentEvent | None:
    data: list[bytes] = []
    event: str | None = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data:
        return None  # comments, keep-alives, or fields we do not use
    return ServerSentEvent(data=b"\n".join(data), event=event)
