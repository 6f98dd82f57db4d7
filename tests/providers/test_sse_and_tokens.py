from __future__ import annotations

import pytest

from chatplane.providers import SSEDecoder, estimate_prompt_tokens, estimate_tokens
from chatplane.providers.protocol import ChatMessage
from chatplane.providers.sse import MAX_EVENT_BYTES, ServerSentEvent, SSEProtocolError
from chatplane.providers.tokens import MESSAGE_OVERHEAD_TOKENS

STREAM = (
    b": keep-alive\n\n"
    b'data: {"text": "h\xc3\xa9llo \xf0\x9f\x8c\x8d"}\n\n'
    b"event: message_delta\r\ndata: first line\r\ndata: second line\r\n\r\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    ServerSentEvent(data='{"text": "héllo 🌍"}'.encode()),
    ServerSentEvent(data=b"first line\nsecond line", event="message_delta"),
    ServerSentEvent(data=b"[DONE]"),
]


def test_decoder_reads_a_whole_stream_at_once() -> None:
    assert SSEDecoder().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 13])
def test_decoder_gives_the_same_events_however_reads_cut_them(piece: int) -> None:
    decoder = SSEDecoder()
    events = []
    for start in range(0, len(STREAM), piece):
        events += decoder.feed(STREAM[start : start + piece])
    assert events == EXPECTED
    assert decoder.flush() == []


def test_decoder_flushes_a_last_event_without_its_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: [DONE]\n") == [ServerSentEvent(b"a")]
    assert decoder.flush() == [ServerSentEvent(b"[DONE]")]


def test_decoder_refuses_an_endless_event() -> None:
    decoder = SSEDecoder()
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 1))


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_estimate_tokens(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_estimate_prompt_tokens_counts_every_message_and_its_overhead() -> None:
    messages = [ChatMessage("system", "be brief"), ChatMessage("user", "hello there")]
    assert estimate_prompt_tokens(messages) == 2 + 3 + 2 * MESSAGE_OVERHEAD_TOKENS
