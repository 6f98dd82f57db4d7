"""Limits are exact across replicas: two API processes on one Redis share one count."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import httpx
import pytest

from tests.scale.conftest import PASSWORD
from tests.scale.procs import Group, new_key

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def test_a_key_limit_holds_across_two_api_processes(shared: Group) -> None:
    email = f"limited-{uuid.uuid4().hex[:10]}@example.com"
    key = await new_key(shared.env, email, password=PASSWORD, name="rpm", rpm=20)
    first, second = shared.first, shared.second

    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
    async with (
        httpx.AsyncClient(base_url=first.base_url, headers=headers, timeout=30) as one,
        httpx.AsyncClient(base_url=second.base_url, headers=headers, timeout=30) as two,
    ):
        answers = await asyncio.gather(
            *[(one, two)[n % 2].post("/v1/chat/completions", json=body) for n in range(60)]
        )
    assert Counter(a.status_code for a in answers) == {200: 20, 429: 40}
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["ratelimit-limit"] == "20"
        assert refused.headers["ratelimit-remaining"] == "0"
    # Both processes answered (30 requests each): one count between them, not 20 each.
    assert len({a.request.url.port for a in answers}) == 2
