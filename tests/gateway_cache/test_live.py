"""The gateway response cache through a live server, driven by the official `openai` SDK,
in the embedded shape (in-process cache, SQLite) and the scaled one (Redis, Postgres).
Each test has an organisation of its own, and asks questions no other test asks."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from chatplane.usage.models import UsageRecord
from tests.admin.support import Org, add_user, new_org
from tests.api.conftest import Shape, shape_server
from tests.api.live import LiveServer
from tests.broker.support import REDIS_URL, unique_prefix
from tests.providers.fakes import FakeOpenAI

UPSTREAM_TEXT = ("Cached", " answers", " are", " cheap")
PRICES = {"gpt-fake": [2.0, 8.0]}


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(chunks=UPSTREAM_TEXT) as fake:
        yield fake


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def shape(request: pytest.FixtureRequest) -> Shape:
    """In-process cache on SQLite, or the Redis cache on Postgres."""
    if request.param == "embedded":
        return Shape("embedded")
    url: str = request.getfixturevalue("postgres_url")
    return Shape("scaled", database_url=url, redis_url=REDIS_URL, redis_prefix=unique_prefix())


@pytest.fixture(scope="module")
async def live(
    shape: Shape, tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI
) -> AsyncIterator[LiveServer]:
    async with shape_server(
        shape,
        tmp_path_factory.mktemp(f"respcache-{shape.name}"),
        upstream,
        email=f"respcache.{shape.name}@example.com",
        model_prices=PRICES,
        response_cache_max_entry_kb=4,
    ) as server:
        yield server


def sdk(live: LiveServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{live.base_url}/v1", api_key=key, max_retries=0)


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {uuid.uuid4().hex}"}]


def upstream_calls(upstream: FakeOpenAI) -> int:
    return sum(1 for r in upstream.requests if r.path == "/v1/chat/completions")


async def opt_in(live: LiveServer, org: Org, on: bool = True) -> None:
    """The organisation's own admin turns the cache on (no operator needed for this)."""
    async with live.client(org.owner.key) as client:
        response = await client.put("/api/admin/limits", json={"response_cache": on})
    assert response.status_code == 200, response.text
    assert response.json()["response_cache"] is on


async def ask(
    live: LiveServer, key: str, messages: list[dict[str, str]], **options: Any
) -> tuple[str | None, str, Any]:
    """(the X-Chatplane-Cache header, the text, the usage) of a non-streamed call."""
    async with sdk(live, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=options.pop("model", "gpt-fake"), messages=messages, **options
        )
    completion = raw.parse()
    return (
        raw.headers.get("x-chatplane-cache"),
        completion.choices[0].message.content,
        completion.usage,
    )


async def ask_streamed(
    live: LiveServer, key: str, messages: list[dict[str, str]], **options: Any
) -> tuple[str | None, str, Any, list[str]]:
    """(header, text, usage, finish reasons) of a streamed call with the usage chunk."""
    async with sdk(live, key) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=options.pop("model", "gpt-fake"),
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **options,
        )
        pieces: list[str] = []
        reasons: list[str] = []
        usage = None
        async for chunk in raw.parse():
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                if choice.finish_reason:
                    reasons.append(choice.finish_reason)
            usage = chunk.usage or usage
    return raw.headers.get("x-chatplane-cache"), "".join(pieces), usage, reasons


async def usage_rows(live: LiveServer, tenant_id: str, count: int) -> list[UsageRecord]:
    deadline = time.monotonic() + 5
    while True:
        await live.services.usage.flush()
        async with live.services.db.session() as session:
            rows = list(
                (
                    await session.scalars(
                        select(UsageRecord)
                        .where(UsageRecord.tenant_id == tenant_id)
                        .order_by(UsageRecord.created_at)
                    )
                ).all()
            )
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_a_repeated_deterministic_request_calls_upstream_once(
    live: LiveServer, upstream: FakeOpenAI
) -> None:
    org = await new_org(live)
    await opt_in(live, org)
    messages = question()
    before = upstream_calls(upstream)
    first = await ask(live, org.owner.key, messages, temperature=0)
    second = await ask(live, org.owner.key, messages, temperature=0)
    assert upstream_calls(upstream) == before + 1
    assert (first[0], second[0]) == ("miss", "hit")
    assert first[1] == second[1] == "".join(UPSTREAM_TEXT)
    assert (second[2].prompt_tokens, second[2].completion_tokens) == (9, len(UPSTREAM_TEXT))
    # The same question streamed: replayed as chunks the SDK reads, same text and usage.
    header, text, usage, reasons = await ask_streamed(live, org.owner.key, messages, temperature=0)
    assert upstream_calls(upstream) == before + 1
    assert header == "hit"
    assert text == "".join(UPSTREAM_TEXT)
    assert reasons == ["stop"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, len(UPSTREAM_TEXT))


async def test_a_streamed_answer_is_kept_and_replayed(
    live: LiveServer, upstream: FakeOpenAI
) -> None:
    org = await new_org(live)
    await opt_in(live, org)
    messages = question()
    before = upstream_calls(upstream)
    first = await ask_streamed(live, org.owner.key, messages, temperature=0.0)
    second = await ask_streamed(live, org.owner.key, messages, temperature=0)
    third = await ask(live, org.owner.key, messages, temperature=0)
    assert upstream_calls(upstream) == before + 1
    assert [first[0], second[0], third[0]] == ["miss", "hit", "hit"]
    assert first[1] == second[1] == third[1] == "".join(UPSTREAM_TEXT)
    assert first[2] == second[2]


async def test_translated_providers_are_cached_too(live: LiveServer) -> None:
    """The built-in mock (written in OpenAI's format here): a hit is the same text."""
    org = await new_org(live)
    await opt_in(live, org)
    messages = question()
    first = await ask_streamed(live, org.owner.key, messages, model="mock-echo", temperature=0)
    second = await ask(live, org.owner.key, messages, model="mock-echo", temperature=0)
    assert (first[0], second[0]) == ("miss", "hit")
    assert first[1] == second[1] == messages[0]["content"]


async def test_answers_are_never_shared_across_tenants(
    live: LiveServer, upstream: FakeOpenAI
) -> None:
    ours, theirs = await new_org(live), await new_org(live)
    await opt_in(live, ours)
    await opt_in(live, theirs)
    messages = question()
    before = upstream_calls(upstream)
    assert (await ask(live, ours.owner.key, messages, temperature=0))[0] == "miss"
    assert (await ask(live, theirs.owner.key, messages, temperature=0))[0] == "miss"
    assert upstream_calls(upstream) == before + 2
    # Another member of the same tenant shares the tenant's answers.
    member = await add_user(live, ours)
    assert (await ask(live, member.key, messages, temperature=0))[0] == "hit"


async def test_cache_false_bypasses_and_temperature_needs_an_explicit_opt_in(
    live: LiveServer, upstream: FakeOpenAI
) -> None:
    org = await new_org(live)
    await opt_in(live, org)
    key = org.owner.key
    off = {"chatplane": {"cache": False}}
    on = {"chatplane": {"cache": True}}
    messages = question()
    before = upstream_calls(upstream)
    # cache: false is never served from, nor written to, the cache.
    assert (await ask(live, key, messages, temperature=0, extra_body=off))[0] is None
    assert (await ask(live, key, messages, temperature=0, extra_body=off))[0] is None
    assert (await ask(live, key, messages, temperature=0))[0] == "miss"
    assert upstream_calls(upstream) == before + 3
    # Not deterministic: never cached, even for an opted-in tenant, unless asked for.
    warm = question()
    assert (await ask(live, key, warm, temperature=0.7))[0] is None
    assert (await ask(live, key, warm, temperature=0.7))[0] is None
    assert (await ask(live, key, warm))[0] is None  # no temperature: the upstream's default
    assert (await ask(live, key, warm, temperature=0.7, extra_body=on))[0] == "miss"
    assert (await ask(live, key, warm, temperature=0.7, extra_body=on))[0] == "hit"
    assert upstream_calls(upstream) == before + 7


async def test_the_request_can_opt_in_where_the_tenant_did_not(live: LiveServer) -> None:
    org = await new_org(live)
    messages = question()
    on = {"chatplane": {"cache": True}}
    assert (await ask(live, org.owner.key, messages, temperature=0))[0] is None
    assert (await ask(live, org.owner.key, messages, temperature=0, extra_body=on))[0] == "miss"
    assert (await ask(live, org.owner.key, messages, temperature=0, extra_body=on))[0] == "hit"
    # Without the flag the tenant's choice (off) holds: no lookup, no header.
    assert (await ask(live, org.owner.key, messages, temperature=0))[0] is None


async def test_keys_opt_in_or_out_on_their_own(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    async with live.client(org.owner.key) as admin:
        keys = (await admin.get("/api/admin/keys")).json()
        member_key_id = next(k["id"] for k in _items(keys) if k["user_id"] == member.id)
        response = await admin.patch(
            f"/api/admin/keys/{member_key_id}/limits", json={"response_cache": True}
        )
        assert response.status_code == 200, response.text
        assert response.json()["response_cache"] is True
    messages = question()
    # The tenant is off: the owner's key does not cache, the member's key does.
    assert (await ask(live, org.owner.key, messages, temperature=0))[0] is None
    assert (await ask(live, member.key, messages, temperature=0))[0] == "miss"
    assert (await ask(live, member.key, messages, temperature=0))[0] == "hit"
    # The tenant on, a key off: that key never uses the cache.
    await opt_in(live, org)
    async with live.client(org.owner.key) as admin:
        response = await admin.patch(
            f"/api/admin/keys/{member_key_id}/limits", json={"response_cache": False}
        )
        assert response.json()["response_cache"] is False
    assert (await ask(live, member.key, messages, temperature=0))[0] is None
    assert (await ask(live, org.owner.key, messages, temperature=0))[0] == "hit"


async def test_a_hit_is_recorded_at_zero_cost_and_marked_cached(live: LiveServer) -> None:
    org = await new_org(live)
    await opt_in(live, org)
    messages = question()
    await ask(live, org.owner.key, messages, temperature=0)
    await ask(live, org.owner.key, messages, temperature=0)
    rows = await usage_rows(live, org.tenant_id, 2)
    assert [(r.cached, r.model) for r in rows] == [(False, "gpt-fake"), (True, "gpt-fake")]
    assert rows[0].cost_usd == pytest.approx((9 * 2 + 4 * 8) / 1e6)
    assert rows[1].cost_usd == 0
    assert (rows[1].prompt_tokens, rows[1].completion_tokens) == (9, 4)
    async with live.client(org.owner.key) as admin:
        report = (await admin.get("/api/admin/usage", params={"group_by": "model"})).json()
    assert report["totals"]["requests"] == 2
    assert report["totals"]["cached_requests"] == 1
    assert report["rows"][0]["cached_requests"] == 1


async def test_a_hit_spends_no_budget_but_counts_against_requests_per_minute(
    live: LiveServer,
) -> None:
    org = await new_org(live)
    await opt_in(live, org)
    member = await add_user(live, org)
    messages = question()
    await ask(live, org.owner.key, messages, temperature=0)  # fills the cache
    async with live.client(org.owner.key) as admin:
        keys = (await admin.get("/api/admin/keys")).json()
        key_id = next(k["id"] for k in _items(keys) if k["user_id"] == member.id)
        budget = {"scope": "key", "subject_id": key_id, "period": "day", "limit_usd": 0}
        assert (await admin.post("/api/admin/budgets", json=budget)).status_code == 201
        limits = await admin.patch(f"/api/admin/keys/{key_id}/limits", json={"rpm": 1})
        assert limits.status_code == 200
    # A budget of 0 refuses any model call, but a hit calls no model.
    with pytest.raises(openai.APIStatusError) as refused:
        await ask(live, member.key, question(), temperature=0)
    assert refused.value.status_code == 402
    assert (await ask(live, member.key, messages, temperature=0))[0] == "hit"
    # The hit was this minute's one request (a refused call takes nothing): the next is over.
    with pytest.raises(openai.RateLimitError):
        await ask(live, member.key, messages, temperature=0)


async def test_an_answer_over_the_entry_cap_is_not_kept(
    live: LiveServer, upstream: FakeOpenAI
) -> None:
    """The server keeps answers up to 4 KB here; the mock-echo answer is the question."""
    org = await new_org(live)
    await opt_in(live, org)
    long = [{"role": "user", "content": "x" * 5000}]
    assert (await ask(live, org.owner.key, long, model="mock-echo", temperature=0))[0] == "miss"
    assert (await ask(live, org.owner.key, long, model="mock-echo", temperature=0))[0] == "miss"


async def test_an_invalid_cache_flag_is_a_bad_request(live: LiveServer) -> None:
    org = await new_org(live)
    async with httpx.AsyncClient(base_url=live.base_url) as raw:
        response = await raw.post(
            "/v1/chat/completions",
            json={"model": "gpt-fake", "messages": question(), "chatplane": {"cache": "yes"}},
            headers={"authorization": f"Bearer {org.owner.key}"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "chatplane.cache"


def _items(listing: Any) -> list[dict[str, Any]]:
    return listing["items"] if isinstance(listing, dict) else listing


async def test_tenant_admins_set_the_cache_but_not_the_limits(live: LiveServer) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as admin:
        assert (await admin.get("/api/admin/limits")).json()["response_cache"] is False
        both = await admin.put("/api/admin/limits", json={"response_cache": True, "rpm": 5})
        assert both.status_code == 403
        assert both.json()["code"] == "not_superadmin"
        assert (await admin.get("/api/admin/limits")).json()["response_cache"] is False
        await opt_in(live, org)
        after = (await admin.get("/api/admin/limits")).json()
    assert after["response_cache"] is True
    assert after["overrides"]["rpm"] is None
