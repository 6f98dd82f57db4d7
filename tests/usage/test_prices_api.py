"""The operators' price table against a live server: where each price comes from, a price
set here costing the next calls at once (in this process, and in another after its load),
reverting, validation and who may do it."""

from __future__ import annotations

from typing import Any

import pytest

from chatplane.providers.endpoints import ModelEndpointService
from chatplane.providers.registry import build_registry
from tests.admin.support import audit_actions, eventually, expect, new_org, unique
from tests.api.live import LiveServer
from tests.providers.fakes import FakeOpenAI
from tests.usage.conftest import GPT_FAKE_PRICE
from tests.usage.support import report


async def prices(live: LiveServer, key: str) -> dict[str, dict[str, Any]]:
    async with live.client(key) as client:
        return {p["model"]: p for p in expect(await client.get("/api/admin/prices"), 200)}


async def test_prices_name_their_source(live: LiveServer) -> None:
    operator = await new_org(live, superadmin=True)
    listed = await prices(live, operator.owner.key)
    echo = listed["mock-echo"]
    assert (echo["input_usd_per_mtok"], echo["output_usd_per_mtok"], echo["source"]) == (
        0,
        0,
        "default",
    )
    assert echo["provider"] == "mock"
    assert echo["updated_at"] is None
    fake = listed["gpt-fake"]
    assert (fake["input_usd_per_mtok"], fake["output_usd_per_mtok"]) == GPT_FAKE_PRICE
    assert fake["source"] == "settings"
    assert fake["underlying"]["source"] == "settings"
    assert list(listed) == sorted(listed)


async def test_a_price_set_here_costs_the_next_calls_and_reverts(
    live: LiveServer, fake_openai: FakeOpenAI
) -> None:
    operator = await new_org(live, superadmin=True)
    org = await new_org(live)
    model = unique("priced")
    async with live.client(operator.owner.key) as admin:
        expect(
            await admin.post(
                "/api/admin/models",
                json={
                    "name": model,
                    "base_url": fake_openai.base_url,
                    "upstream_model": "gpt-fake",
                    "input_usd_per_mtok": 1.0,
                    "output_usd_per_mtok": 1.0,
                },
            ),
            201,
        )
    try:
        listed = await prices(live, operator.owner.key)
        assert listed[model]["source"] == "endpoint"
        assert await call_cost(live, org.owner.key, model) == pytest.approx((9 + 4) / 1e6)

        async with live.client(operator.owner.key) as admin:
            saved = expect(
                await admin.put(
                    f"/api/admin/prices/{model}",
                    json={"input_usd_per_mtok": 1000, "output_usd_per_mtok": 2000.5},
                ),
                200,
            )
        assert (saved["input_usd_per_mtok"], saved["output_usd_per_mtok"]) == (1000, 2000.5)
        assert saved["source"] == "admin"
        assert saved["updated_at"] is not None
        assert saved["underlying"] == {
            "input_usd_per_mtok": 1.0,
            "output_usd_per_mtok": 1.0,
            "source": "endpoint",
        }
        # At once in this process: the very next call costs the new price.
        new_cost = (9 * 1000 + 4 * 2000.5) / 1e6
        assert await call_cost(live, org.owner.key, model) == pytest.approx(new_cost)
        # Another process picks it up on its next load (every 30 s).
        other = await build_registry(live.services.settings, live.services.http)
        loader = ModelEndpointService(
            live.services.db, other, live.services.endpoints.box, live.services.audit
        )
        await loader.load()
        route = await other.resolve(model)
        assert (route.input_usd_per_mtok, route.output_usd_per_mtok) == (1000, 2000.5)

        async with live.client(operator.owner.key) as admin:
            gone = await admin.delete(f"/api/admin/prices/{model}")
            assert gone.status_code == 204, gone.text
            again = await admin.delete(f"/api/admin/prices/{model}")
            assert again.status_code == 404
            assert again.json()["code"] == "price_not_found"
        assert (await prices(live, operator.owner.key))[model]["source"] == "endpoint"
        assert await call_cost(live, org.owner.key, model) == pytest.approx((9 + 4) / 1e6)
        await loader.load()
        assert (await other.resolve(model)).input_usd_per_mtok == 1.0
        await other.close()

        actions = await audit_actions(live, operator.tenant_id)
        assert ("price.set", model) in actions
        assert ("price.removed", model) in actions
    finally:
        async with live.client(operator.owner.key) as admin:
            await admin.delete(f"/api/admin/prices/{model}")
            endpoint = next(
                m for m in expect(await admin.get("/api/admin/models"), 200) if m["name"] == model
            )
            await admin.delete(f"/api/admin/models/{endpoint['id']}")


async def call_cost(live: LiveServer, key: str, model: str) -> float:
    """The cost recorded for one more gateway call of `model` by `key`'s user."""
    before = await model_totals(live, key, model)
    async with live.client(key) as client:
        answer = await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 200, answer.text
    after: dict[str, Any] = {}

    async def recorded() -> bool:
        nonlocal after
        await live.services.usage.flush()
        after = await model_totals(live, key, model)
        return bool(after["requests"] == before["requests"] + 1)

    await eventually(recorded)
    return float(after["cost_usd"] - before["cost_usd"])


async def model_totals(live: LiveServer, key: str, model: str) -> dict[str, Any]:
    return dict((await report(live, key, "/api/usage", model=model))["totals"])


@pytest.mark.parametrize(
    "body",
    [
        {"input_usd_per_mtok": -1, "output_usd_per_mtok": 1},
        {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1e9},
        {"input_usd_per_mtok": "NaN", "output_usd_per_mtok": 1},
        {"input_usd_per_mtok": 1},
        {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "currency": "EUR"},
    ],
)
async def test_a_bad_price_is_refused(live: LiveServer, body: dict[str, Any]) -> None:
    operator = await new_org(live, superadmin=True)
    async with live.client(operator.owner.key) as admin:
        answer = await admin.put("/api/admin/prices/mock-echo", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "validation_error"
    assert (await prices(live, operator.owner.key))["mock-echo"]["source"] == "default"


async def test_only_operators_price_and_only_known_models(live: LiveServer) -> None:
    operator, org = await new_org(live, superadmin=True), await new_org(live)
    body = {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}
    async with live.client(org.owner.key) as tenant_admin:
        for method, path in (
            ("GET", "/api/admin/prices"),
            ("PUT", "/api/admin/prices/mock-echo"),
            ("DELETE", "/api/admin/prices/mock-echo"),
        ):
            answer = await tenant_admin.request(
                method, path, json=body if method == "PUT" else None
            )
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["code"] == "not_superadmin"
    async with live.client(operator.owner.key) as admin:
        missing = await admin.put(f"/api/admin/prices/{unique('nope')}", json=body)
        assert missing.status_code == 404
        assert missing.json()["code"] == "model_not_found"
    assert (await prices(live, operator.owner.key))["mock-echo"]["source"] == "default"
