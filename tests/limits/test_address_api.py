"""The gateway's per-address limit through the HTTP API, counted with the admission (one
store call), on a live server with in-process and with Redis limit stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.admin.support import client_ip
from tests.api.live import LiveServer, start_live_server
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings

GATEWAY_PER_ADDRESS = 3


@pytest.fixture(scope="module", params=["memory", "redis"])
async def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    store: dict[str, object] = {}
    if request.param == "redis":
        await require_redis()
        store = {"redis_url": REDIS_URL, "redis_prefix": unique_prefix()}
    settings = make_settings(
        tmp_path_factory.mktemp(f"address-{request.param}"),
        trusted_proxies=["127.0.0.1"],
        rate_limit_ip_zones={"gateway": GATEWAY_PER_ADDRESS},
        **store,
    )
    server = await start_live_server(settings, email=f"address.{request.param}@example.com")
    yield server
    await server.stop()
    if store:
        await delete_keys(str(store["redis_prefix"]))


def completion() -> dict[str, object]:
    return {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


async def test_admitted_calls_count_against_their_address(live: LiveServer) -> None:
    address = client_ip()
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:
        answers = [
            await http.post(
                "/v1/chat/completions",
                json=completion(),
                headers={"authorization": f"Bearer {live.api_key}", "x-forwarded-for": address},
            )
            for _ in range(GATEWAY_PER_ADDRESS + 1)
        ]
    assert [a.status_code for a in answers] == [200] * GATEWAY_PER_ADDRESS + [429]
    assert [a.headers["ratelimit-limit"] for a in answers] == [str(GATEWAY_PER_ADDRESS)] * 4
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "address" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1


async def test_requests_that_end_before_their_admission_are_counted_too(
    live: LiveServer,
) -> None:
    address = client_ip()
    async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as http:
        answers = [
            await http.post(
                "/v1/chat/completions",
                json=completion(),
                headers={"authorization": "Bearer cp_wrong", "x-forwarded-for": address},
            )
            for _ in range(GATEWAY_PER_ADDRESS + 1)
        ]
        bad_body = await http.post(
            "/v1/chat/completions",
            content=b"{",
            headers={"authorization": f"Bearer {live.api_key}", "x-forwarded-for": address},
        )
        # Admitted calls count in the caller's organisation's own bucket of the address.
        admitted = await http.post(
            "/v1/chat/completions",
            json=completion(),
            headers={"authorization": f"Bearer {live.api_key}", "x-forwarded-for": address},
        )
    assert [a.status_code for a in answers] == [401] * GATEWAY_PER_ADDRESS + [429]
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert answers[-1].json()["error"]["code"] == "rate_limited"
    assert bad_body.status_code == 429  # a bad request counts as well
    assert admitted.status_code == 200
    assert admitted.headers["ratelimit-remaining"] == "2"
