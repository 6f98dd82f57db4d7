"""The response cache's key and the answers it keeps, on their own (no server)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from chatplane.gateway.caching import (
    CachedAnswer,
    StreamCapture,
    answer_from_completion,
    cache_key,
)
from chatplane.gateway.request import parse_request
from chatplane.providers.protocol import Usage

BASE: dict[str, Any] = {
    "model": "gpt-fake",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
}


def key(tenant: str = "t1", **fields: Any) -> str:
    return cache_key(tenant, parse_request(orjson.dumps({**BASE, **fields})))


def test_delivery_and_caller_fields_are_not_in_the_key() -> None:
    same = key()
    assert key(stream=True, stream_options={"include_usage": True}) == same
    assert key(user="someone") == same
    assert key(chatplane={"cache": True}) == same
    assert key(temperature=0.0) == same  # 0 and 0.0 ask the same
    assert key(max_tokens=50) == key(max_completion_tokens=50)
    assert key(stop="END") == key(stop=["END"])


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"max_tokens": 50},
        {"stop": ["x"]},
        {"n": 2},
        {"seed": 7},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"presence_penalty": 1},
        {"frequency_penalty": 1},
        {"logit_bias": {"50256": -100}},
        {"model": "gpt-fake-mini"},
        {"messages": [{"role": "user", "content": "hello!"}]},
        {"chatplane": {"knowledge_base_ids": ["kb1"]}},
    ],
)
def test_every_field_that_changes_the_answer_changes_the_key(fields: dict[str, Any]) -> None:
    assert key(**fields) != key()


def test_the_key_names_the_tenant() -> None:
    assert key("t1") != key("t2")
    assert len(key()) == 64  # SHA-256, hex


def test_only_deterministic_or_asked_for_requests_may_be_cached() -> None:
    def may(**fields: Any) -> bool:
        return parse_request(orjson.dumps({**BASE, **fields})).may_cache

    assert may()
    assert not may(temperature=0.7)
    assert not may(temperature=None)  # the model's default is not deterministic
    assert may(temperature=0.7, chatplane={"cache": True})
    assert not may(chatplane={"cache": False})
    assert not may(chatplane={"knowledge_base_ids": ["kb1"], "cache": True})


def test_an_answer_replays_as_a_completion_and_as_a_stream() -> None:
    answer = CachedAnswer("Hi there", "stop", "gpt-fake", Usage(5, 2))
    assert CachedAnswer.decode(answer.encode()) == answer
    completion = orjson.loads(answer.replay(stream=False, include_usage=False))
    assert completion["choices"][0]["message"]["content"] == "Hi there"
    assert completion["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    again = orjson.loads(answer.replay(stream=False, include_usage=False))
    assert again["id"] != completion["id"]  # a new completion each time
    stream = answer.replay(stream=True, include_usage=True)
    events = [e[6:] for e in stream.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hi there"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 7
    assert "usage" not in orjson.loads(
        answer.replay(stream=True, include_usage=False).split(b"\n\n")[-3][6:]
    )
    assert CachedAnswer.decode(b"not json") is None


def _completion(message: dict[str, Any], **extra: Any) -> bytes:
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    usage = {"prompt_tokens": 3, "completion_tokens": 1}
    return orjson.dumps({"model": "m", "choices": [choice], "usage": usage, **extra})


def test_only_plain_text_completions_are_kept() -> None:
    kept = answer_from_completion(_completion({"role": "assistant", "content": "ok"}))
    assert kept == CachedAnswer("ok", "stop", "m", Usage(3, 1))
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert answer_from_completion(_completion({"content": None, "tool_calls": [call]})) is None
    two = orjson.loads(_completion({"content": "a"}))
    two["choices"].append({**two["choices"][0], "index": 1})
    assert answer_from_completion(orjson.dumps(two)) is None
    assert answer_from_completion(b'{"error": {"message": "no"}}') is None


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _delta(delta: dict[str, Any], reason: str | None = None) -> bytes:
    return _event(
        {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
    )


def test_a_stream_is_read_across_split_reads() -> None:
    capture = StreamCapture("upstream")
    raw = (
        _delta({"role": "assistant", "content": ""})
        + _delta({"content": "Hel"})
        + _delta({"content": "lo"})
        + _delta({}, "stop")
        + _event({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}})
        + b"data: [DONE]\n\n"
    )
    for start in range(0, len(raw), 7):  # events cut anywhere
        capture.feed(raw[start : start + 7])
    assert capture.answer() == CachedAnswer("Hello", "stop", "m", Usage(4, 2))


USAGE = _event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


@pytest.mark.parametrize(
    "events",
    [
        [_delta({"content": "Hi"}), USAGE],  # no finish reason: cut short
        [_delta({"content": "Hi"}, "stop")],  # no usage
        [_delta({"tool_calls": [{"index": 0}]}), _delta({}, "tool_calls"), USAGE],
        [_delta({"content": "Hi"}), _event({"error": {"message": "failed"}}), USAGE],
    ],
    ids=["cut-short", "no-usage", "tool-calls", "error-event"],
)
def test_streams_that_are_not_one_finished_answer_are_not_kept(events: list[bytes]) -> None:
    capture = StreamCapture("m")
    for event in events:
        capture.feed(event)
    assert capture.answer() is None
