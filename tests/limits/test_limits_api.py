"""Rate limits, concurrency slots and budgets through the HTTP API, on a live server in the
embedded shape (in-process stores) and the scaled one (Redis stores)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select

from chatplane.usage.models import UsageRecord
from tests.admin.support import Org, add_user, client_ip, new_org
from tests.api.live import LiveServer, start_live_server
from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import make_settings

# USD per million tokens: a token in costs 0.001 USD (mock-echo; free on mock), a token out
# 0.002 USD. The filler model always writes up to its `max_tokens` (10 chunks of filler are
# longer than 10 tokens), so with free input a `mock` call costs exactly its worst case,
# 10 * 0.002 USD: settling it frees nothing, however the calls are spread out.
PRICES = {"mock": [0.0, 2000.0], "mock-echo": [1000.0, 2000.0]}
WORST_CASE_USD = 10 * 0.002


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def shape(request: pytest.FixtureRequest) -> dict[str, object]:
    """In-process stores on SQLite, or Redis stores on Postgres."""
    if request.param == "embedded":
        return {}
    return {
        "database_url": request.getfixturevalue("postgres_url"),
        "redis_url": REDIS_URL,
        "redis_prefix": unique_prefix(),
    }


@pytest.fixture(scope="module")
async def live(
    shape: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    name = "scaled" if shape else "embedded"
    if shape:
        await require_redis()
    settings = make_settings(
        tmp_path_factory.mktemp(f"limits-{name}"),
        model_prices=PRICES,
        mock_chunk_delay_ms=40.0,
        mock_chunks=10,
        trusted_proxies=["127.0.0.1"],
        rate_limit_ip_zones={"auth": 5},
        max_concurrent_user=1000,  # the budget test sends 100 at once
        **shape,
    )
    server = await start_live_server(settings, email=f"limits.{name}@example.com")
    yield server
    await server.stop()
    if shape:
        await delete_keys(str(shape["redis_prefix"]))


def client(live: LiveServer, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=live.base_url,
        headers={"authorization": f"Bearer {key}", "x-forwarded-for": client_ip()},
        timeout=30,
    )


async def new_key(live: LiveServer, org: Org, name: str) -> tuple[str, str]:
    async with client(live, org.owner.key) as admin:
        created = await admin.post("/api/keys", json={"name": name, "scopes": ["chat"]})
    assert created.status_code == 201, created.text
    body = created.json()
    return body["id"], body["key"]


def completion(content: str = "hi", *, stream: bool = False) -> dict[str, object]:
    return {
        "model": "mock",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 10,
        "stream": stream,
    }


async def test_a_key_rate_limit_answers_429_with_headers(live: LiveServer) -> None:
    org = await new_org(live)
    key_id, key = await new_key(live, org, "limited")
    async with client(live, org.owner.key) as admin:
        changed = await admin.patch(f"/api/admin/keys/{key_id}/limits", json={"rpm": 5})
    assert changed.json() == {
        "rpm": 5,
        "tpm": None,
        "max_concurrent": None,
        "response_cache": None,
    }

    async with client(live, key) as api:
        answers = [await api.get("/v1/models") for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
    assert [a.headers["ratelimit-limit"] for a in answers[:5]] == ["5"] * 5
    assert [a.headers["ratelimit-remaining"] for a in answers[:5]] == ["4", "3", "2", "1", "0"]
    refused = answers[5]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["retry-after"]) <= 12  # one request every 12 s
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) <= 60

    # The native API counts against the same key.
    async with client(live, key) as api:
        native = await api.get("/api/conversations")
    assert native.status_code == 429
    assert native.json()["code"] == "rate_limited"
    assert native.json()["limit"] == "key_rpm"
    # Another key of the same user is not limited by it.
    async with client(live, org.owner.key) as api:
        other = await api.get("/api/conversations")
    assert other.status_code == 200
    assert int(other.headers["ratelimit-limit"]) >= 100


async def test_tokens_per_minute_count_the_request_size(live: LiveServer) -> None:
    org = await new_org(live)
    key_id, key = await new_key(live, org, "tpm")
    async with client(live, org.owner.key) as admin:
        await admin.patch(f"/api/admin/keys/{key_id}/limits", json={"tpm": 100})
    async with client(live, key) as api:
        # Each takes 4 prompt tokens (estimated) + 10 reply tokens = 14 of the 100.
        statuses = [(await api.post("/v1/chat/completions", json=completion())).status_code]
        statuses += [
            (await api.post("/v1/chat/completions", json=completion())).status_code
            for _ in range(7)
        ]
        too_big = await api.post("/v1/chat/completions", json=completion("x" * 2000))
    assert statuses == [200] * 7 + [429]
    assert too_big.status_code == 429
    assert too_big.json()["error"]["code"] == "rate_limited"


async def test_concurrent_requests_are_limited_and_slots_come_back(live: LiveServer) -> None:
    org = await new_org(live)
    key_id, key = await new_key(live, org, "concurrency")
    async with client(live, org.owner.key) as admin:
        await admin.patch(f"/api/admin/keys/{key_id}/limits", json={"max_concurrent": 2})
    async with client(live, key) as api:
        answers = await asyncio.gather(
            *[api.post("/v1/chat/completions", json=completion()) for _ in range(5)]
        )
        statuses = Counter(a.status_code for a in answers)
        assert statuses == {200: 2, 429: 3}
        refused = next(a for a in answers if a.status_code == 429)
        assert refused.json()["error"]["code"] == "too_many_concurrent"
        # Ended requests gave their slots back, and so did a client that left mid-stream.
        async with api.stream("POST", "/v1/chat/completions", json=completion(stream=True)) as s:
            async for _ in s.aiter_bytes():
                break
        # The server notices the disconnect a moment later, far sooner than a lease expires.
        for _ in range(50):
            again = await asyncio.gather(
                *[api.post("/v1/chat/completions", json=completion()) for _ in range(2)]
            )
            if [a.status_code for a in again] == [200, 200]:
                break
            await asyncio.sleep(0.1)
    assert [a.status_code for a in again] == [200, 200]


async def spent_by_key(live: LiveServer, key_id: str) -> float:
    await live.services.usage.flush()
    async with live.services.db.session() as session:
        total = await session.scalar(
            select(func.coalesce(func.sum(UsageRecord.cost_usd), 0)).where(
                UsageRecord.api_key_id == key_id
            )
        )
    return float(total or 0)


async def test_a_budget_admits_exactly_what_it_covers_under_concurrency(
    live: LiveServer,
) -> None:
    org = await new_org(live)
    key_id, key = await new_key(live, org, "budgeted")
    budget_usd = round(10 * WORST_CASE_USD, 6)
    async with client(live, org.owner.key) as admin:
        created = await admin.post(
            "/api/admin/budgets",
            json={
                "scope": "key",
                "subject_id": key_id,
                "period": "lifetime",
                "limit_usd": budget_usd,
            },
        )
    assert created.status_code == 201, created.text

    async with client(live, key) as api:
        answers = await asyncio.gather(
            *[api.post("/v1/chat/completions", json=completion(stream=True)) for _ in range(100)]
        )
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {200: 10, 402: 90}
    refused = next(a for a in answers if a.status_code == 402)
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["error"]["type"] == "insufficient_quota"

    spent = await spent_by_key(live, key_id)
    assert spent == pytest.approx(budget_usd, abs=1e-9)  # ten calls at their worst case
    async with client(live, org.owner.key) as admin:
        [budget] = (await admin.get("/api/admin/budgets")).json()
    assert budget["reserved_usd"] == 0  # every reservation was settled
    assert budget["spent_usd"] == pytest.approx(spent, abs=1e-9)
    assert budget["subject_label"].startswith("budgeted (cp_")


async def test_a_native_turn_reserves_and_settles_its_budget(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    async with client(live, org.owner.key) as admin:
        created = await admin.post(
            "/api/admin/budgets",
            json={"scope": "user", "subject_id": member.id, "period": "day", "limit_usd": 5.0},
        )
        assert created.status_code == 201, created.text
        budget_id = created.json()["id"]
    async with client(live, member.key) as api:
        conversation = (await api.post("/api/conversations", json={"model": "mock-echo"})).json()
        posted = await api.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": "one two"}
        )
        assert posted.status_code == 202, posted.text
        turn_url = f"/api/turns/{posted.json()['turn_id']}"
        for _ in range(200):
            if (await api.get(turn_url)).json()["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        async with client(live, org.owner.key) as admin:
            [budget] = (await admin.get("/api/admin/budgets")).json()
        assert budget["reserved_usd"] == 0
        async with live.services.db.session() as session:
            record = await session.scalar(
                select(UsageRecord).where(UsageRecord.turn_id == posted.json()["turn_id"])
            )
        assert record is not None
        assert record.api_key_id is not None  # the turn counts against the key it came with
        assert budget["spent_usd"] == pytest.approx(record.cost_usd, abs=1e-9)
        assert budget["period_start"].startswith(budget["created_at"][:10])

        # Lowered below what was spent: the next turn is refused, nothing is stored for it.
        async with client(live, org.owner.key) as admin:
            lowered = await admin.patch(f"/api/admin/budgets/{budget_id}", json={"limit_usd": 0})
        assert lowered.status_code == 200
        refused = await api.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": "three"}
        )
        assert refused.status_code == 402
        assert refused.json()["code"] == "budget_exceeded"
        assert refused.json()["budget"] == "user_day"
        messages = (await api.get(f"/api/conversations/{conversation['id']}")).json()["messages"]
    assert [m["content"] for m in messages] == ["one two", "one two"]


async def test_budget_admin_rules_and_isolation(live: LiveServer) -> None:
    org, other = await new_org(live), await new_org(live)
    member = await add_user(live, org)
    async with client(live, org.owner.key) as admin:
        tenant_budget = await admin.post(
            "/api/admin/budgets", json={"scope": "tenant", "period": "month", "limit_usd": 5}
        )
        assert tenant_budget.status_code == 403  # the operator's to set
        assert tenant_budget.json()["code"] == "not_superadmin"
        foreign = await admin.post(
            "/api/admin/budgets",
            json={"scope": "user", "subject_id": other.owner.id, "period": "day", "limit_usd": 5},
        )
        assert foreign.status_code == 404
        bad = await admin.post(
            "/api/admin/budgets",
            json={"scope": "user", "subject_id": member.id, "period": "week", "limit_usd": 5},
        )
        assert bad.status_code == 422
        first = await admin.post(
            "/api/admin/budgets",
            json={"scope": "user", "subject_id": member.id, "period": "day", "limit_usd": 5},
        )
        assert first.status_code == 201
        duplicate = await admin.post(
            "/api/admin/budgets",
            json={"scope": "user", "subject_id": member.id, "period": "day", "limit_usd": 7},
        )
        assert duplicate.status_code == 409
        assert duplicate.json()["code"] == "budget_exists"
        assert (await admin.put("/api/admin/limits", json={"rpm": 10})).status_code == 403
        limits = (await admin.get("/api/admin/limits")).json()
    assert limits["overrides"]["rpm"] is None
    assert limits["effective"]["user_rpm"] == limits["defaults"]["user_rpm"]

    budget_id = first.json()["id"]
    async with client(live, other.owner.key) as stranger:
        assert (await stranger.get("/api/admin/budgets")).json() == []
        assert (await stranger.delete(f"/api/admin/budgets/{budget_id}")).status_code == 404
        sneaky = await stranger.get("/api/admin/budgets", params={"tenant_id": org.tenant_id})
        assert sneaky.status_code == 404
    async with client(live, member.key) as plain:
        assert (await plain.get("/api/admin/budgets")).status_code == 403
    async with client(live, org.owner.key) as admin:
        assert (await admin.delete(f"/api/admin/budgets/{budget_id}")).status_code == 204
        assert (await admin.get("/api/admin/budgets")).json() == []


async def test_an_operator_sets_a_tenants_limits(live: LiveServer) -> None:
    operator, org = await new_org(live, superadmin=True), await new_org(live)
    async with client(live, operator.owner.key) as admin:
        changed = await admin.put(
            "/api/admin/limits", params={"tenant_id": org.tenant_id}, json={"user_rpm": 3}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["effective"]["user_rpm"] == 3
        budget = await admin.post(
            "/api/admin/budgets",
            params={"tenant_id": org.tenant_id},
            json={"scope": "tenant", "period": "month", "limit_usd": 100},
        )
        assert budget.status_code == 201, budget.text
        assert budget.json()["subject_id"] == org.tenant_id
    async with client(live, org.owner.key) as api:
        statuses = [(await api.get("/api/conversations")).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # per user: another admin has its own 3
    async with client(live, (await add_user(live, org, role="admin")).key) as api:
        listed = (await api.get("/api/admin/budgets")).json()
    assert [b["scope"] for b in listed] == ["tenant"]
    assert listed[0]["subject_label"] == "The organisation"


async def test_per_address_limits_by_zone(live: LiveServer) -> None:
    address = client_ip()
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        answers = [
            await http.post(
                "/api/auth/login",
                json={"email": "nobody@example.com", "password": "wrong"},
                headers={"x-forwarded-for": address},
            )
            for _ in range(6)
        ]
        elsewhere = await http.post(
            "/api/auth/refresh",
            json={"refresh_token": "nope"},
            headers={"x-forwarded-for": client_ip()},
        )
    assert [a.status_code for a in answers][-1] == 429
    assert answers[-1].json()["code"] == "rate_limited"
    assert answers[-1].json()["limit"] == "ip"
    assert answers[-1].headers["ratelimit-limit"] == "5"
    assert elsewhere.status_code == 401  # another address has its own quota
    assert elsewhere.headers["ratelimit-limit"] == "5"
