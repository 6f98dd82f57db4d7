"""The OpenAI-compatible gateway, driven by the official `openai` SDK against a live server."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from chatplane.usage.models import UsageRecord
from tests.api.live import LiveServer
from tests.providers.fakes import FakeOpenAI


def sdk(live: LiveServer, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{live.base_url}/v1", api_key=key or live.api_key, max_retries=0
    )


async def _usage_rows(live: LiveServer, model: str) -> list[UsageRecord]:
    async with live.services.db.session() as session:
        rows = await session.scalars(select(UsageRecord).where(UsageRecord.model == model))
        return list(rows.all())


async def _wait_for_usage(live: LiveServer, model: str, count: int) -> list[UsageRecord]:
    deadline = time.monotonic() + 5
    while True:
        await live.services.usage.flush()
        rows = await _usage_rows(live, model)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_models_lists_mock_and_upstream_models(live: LiveServer) -> None:
    async with sdk(live) as client:
        models = [m.id async for m in client.models.list()]
    assert {"mock-echo", "mock", "gpt-fake", "gpt-fake-mini"} <= set(models)


async def test_non_streaming_completion_with_the_mock(live: LiveServer) -> None:
    async with sdk(live) as client:
        completion = await client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "ping pong"}]
        )
    assert completion.choices[0].message.content == "ping pong"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert completion.model == "mock-echo"


async def test_streaming_completion_with_usage(live: LiveServer) -> None:
    text = "the quick brown fox jumps"
    async with sdk(live) as client:
        stream = await client.chat.completions.create(
            model="mock-echo",
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces: list[str] = []
        usage = None
        finish = None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage is not None:
                usage = chunk.usage
    assert "".join(pieces) == text
    assert len([p for p in pieces if p]) == len(text.split())
    assert finish == "stop"
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_passthrough_streams_the_upstream_and_records_usage(
    live: LiveServer, fake_openai: FakeOpenAI
) -> None:
    before = len(await _usage_rows(live, "gpt-fake"))
    async with sdk(live) as client:
        stream = await client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        completion = await client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "hi"}]
        )
    assert text == "Hello, world!"
    assert completion.choices[0].message.content == "Hello, world!"
    sent = fake_openai.requests[-2].json
    assert sent["stream_options"] == {"include_usage": True}
    rows = await _wait_for_usage(live, "gpt-fake", before + 2)
    assert len(rows) == before + 2
    assert {(r.prompt_tokens, r.completion_tokens) for r in rows[-2:]} == {(9, 4)}
    # Priced at 2 USD in and 8 USD out per million tokens.
    assert rows[-1].cost_usd == pytest.approx((9 * 2 + 4 * 8) / 1e6)
    assert rows[-1].api_key_id is not None


async def test_gateway_errors_use_openai_shapes(live: LiveServer) -> None:
    async with sdk(live, key="cp_wrong") as bad:
        with pytest.raises(openai.AuthenticationError) as denied:
            await bad.models.list()
    assert denied.value.code == "invalid_api_key"
    async with sdk(live) as client:
        with pytest.raises(openai.NotFoundError) as missing:
            await client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}]
            )
        assert missing.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as invalid:
            await client.chat.completions.create(model="mock-echo", messages=[])
        assert invalid.value.code == "invalid_request"
    async with httpx.AsyncClient(base_url=live.base_url) as raw:
        response = await raw.post(
            "/v1/chat/completions",
            content=b"{oops",
            headers={"authorization": f"Bearer {live.api_key}"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        anonymous = await raw.post("/v1/chat/completions", json={})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "missing_api_key"


async def test_gateway_responses_carry_the_request_id_headers_and_metrics(
    live: LiveServer,
) -> None:
    """The /v1 routes skip the framework's layers, not the app's own middleware."""
    async with live.client() as api:
        answer = await api.post(
            "/v1/chat/completions",
            json={"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-id": "gateway-request-1"},
        )
        listed = await api.get("/v1/models", headers={"x-request-id": "gateway-request-2"})
        wrong_method = await api.get("/v1/chat/completions")
        scraped = (await api.get("/metrics")).text
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "gateway-request-1"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in answer.headers
    assert int(answer.headers["ratelimit-limit"]) > 0
    assert listed.headers["x-request-id"] == "gateway-request-2"
    # Another method is the full stack's, as before: a 405 in OpenAI's shape.
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert 'route="/v1/chat/completions",status="200"' in scraped
    assert 'route="/v1/models",status="200"' in scraped


async def test_a_client_that_leaves_mid_stream_stops_the_upstream_and_pays_what_it_got(
    live: LiveServer, fake_openai: FakeOpenAI
) -> None:
    before = len(await _usage_rows(live, "gpt-fake"))
    disconnects, completed = fake_openai.disconnects, fake_openai.completed_streams
    chunks, delay = fake_openai.chunks, fake_openai.chunk_delay_s
    fake_openai.chunks = [f" word{i}" for i in range(500)]
    fake_openai.chunk_delay_s = 0.01
    try:
        async with live.client() as api:
            body = {
                "model": "gpt-fake",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            }
            async with api.stream("POST", "/v1/chat/completions", json=body) as stream:
                assert stream.status_code == 200
                received = b""
                async for part in stream.aiter_bytes():
                    received += part
                    if received.count(b"word") >= 3:
                        break
        for _ in range(250):  # the server notices the disconnect within moments
            if fake_openai.disconnects != disconnects:
                break
            await asyncio.sleep(0.02)
        assert fake_openai.disconnects == disconnects + 1
        assert fake_openai.completed_streams == completed
    finally:
        fake_openai.chunks, fake_openai.chunk_delay_s = chunks, delay
    rows = await _wait_for_usage(live, "gpt-fake", before + 1)
    assert len(rows) == before + 1
    assert 3 <= rows[-1].completion_tokens < 500
