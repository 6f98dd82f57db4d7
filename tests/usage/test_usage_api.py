"""Usage reports against a live server (SQLite; Postgres; Postgres and Redis): real traffic
through the gateway and native chat turns, records at chosen times for the day edges, the
grouping, the filters, tenant isolation and the CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from tests.admin.support import add_user, eventually, expect, new_org, unique
from tests.api.live import LiveServer
from tests.api.sse import read_events
from tests.usage.conftest import GPT_FAKE_PRICE
from tests.usage.support import insert_usage, keyed_user, problem, report, rows_by, utc

HI = [{"role": "user", "content": "hi there"}]


def gpt_fake_cost(calls: int) -> float:
    # The fake upstream reports 9 prompt tokens and one completion token per chunk (4).
    return calls * (9 * GPT_FAKE_PRICE[0] + 4 * GPT_FAKE_PRICE[1]) / 1_000_000


async def test_gateway_calls_and_chat_turns_are_counted_and_priced(live: LiveServer) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as client:
        for _ in range(2):
            answer = await client.post(
                "/v1/chat/completions", json={"model": "gpt-fake", "messages": HI}
            )
            assert answer.status_code == 200, answer.text
        streamed = await client.post(
            "/v1/chat/completions", json={"model": "mock-echo", "messages": HI, "stream": True}
        )
        assert streamed.status_code == 200, streamed.text
        conversation = expect(await client.post("/api/conversations", json={}), 201)
        accepted = expect(
            await client.post(
                f"/api/conversations/{conversation['id']}/messages", json={"content": "one two"}
            ),
            202,
        )
        frames = await read_events(client, accepted["events_url"])
        assert frames[-1].event == "turn.completed"

    async def all_recorded() -> bool:
        await live.services.usage.flush()
        totals = (await report(live, org.owner.key))["totals"]
        return bool(totals["requests"] == 4)

    await eventually(all_recorded)
    today = datetime.now(UTC).date().isoformat()
    by_day = await report(live, org.owner.key, group_by="day")
    assert [row["day"] for row in by_day["rows"]] == [today]
    assert by_day["to"] == today
    assert by_day["from"] == (datetime.now(UTC).date() - timedelta(days=29)).isoformat()
    assert by_day["totals"]["cost_usd"] == pytest.approx(gpt_fake_cost(2))

    by_model = rows_by(await report(live, org.owner.key, group_by="model"), "model")
    assert set(by_model) == {"gpt-fake", "mock-echo"}
    fake = by_model["gpt-fake"]
    assert (fake["requests"], fake["prompt_tokens"], fake["completion_tokens"]) == (2, 18, 8)
    assert fake["cost_usd"] == pytest.approx(gpt_fake_cost(2))
    assert by_model["mock-echo"]["requests"] == 2
    assert by_model["mock-echo"]["cost_usd"] == 0
    assert "user_id" not in fake  # only the fields of the groups asked for

    by_source = rows_by(
        await report(live, org.owner.key, group_by="source,model"), "source", "model"
    )
    assert {k: v["requests"] for k, v in by_source.items()} == {
        ("gateway", "gpt-fake"): 2,
        ("gateway", "mock-echo"): 1,
        ("chat", "mock-echo"): 1,
    }
    by_user = await report(live, org.owner.key, group_by="user")
    assert [(r["user_id"], r["user_email"]) for r in by_user["rows"]] == [
        (org.owner.id, org.owner.email)
    ]
    # The owner's own view: the same records.
    mine = await report(live, org.owner.key, "/api/usage", group_by="model")
    assert mine["totals"] == by_day["totals"]


async def test_days_are_utc_days_and_to_is_included(live: LiveServer) -> None:
    org = await new_org(live)
    ada = await keyed_user(live, org, key_name="ada-laptop")
    bob = await keyed_user(live, org, key_name="bob-ci")
    tenant = org.tenant_id
    await insert_usage(
        live,
        {"tenant_id": tenant, "created_at": utc("2024-02-29T23:59:59.999999"), "model": "m-a"},
        {
            "tenant_id": tenant,
            "created_at": utc("2024-03-01T00:00:00"),
            "model": "m-a",
            "user_id": ada.user_id,
            "api_key_id": ada.key_id,
            "cost_usd": 0.5,
        },
        {
            "tenant_id": tenant,
            "created_at": utc("2024-03-01T23:59:59.999999"),
            "model": "m-b",
            "user_id": ada.user_id,
            "api_key_id": ada.key_id,
            "cost_usd": 0.25,
        },
        # 01:30 at +02:00 is 23:30 UTC the day before.
        {
            "tenant_id": tenant,
            "created_at": utc("2024-03-02T01:30:00+02:00"),
            "model": "m-a",
            "user_id": bob.user_id,
            "api_key_id": bob.key_id,
            "cost_usd": 0.125,
            "source": "chat",
        },
        {
            "tenant_id": tenant,
            "created_at": utc("2024-03-02T00:00:00"),
            "model": "m-a",
            "user_id": bob.user_id,
            "api_key_id": bob.key_id,
            "cost_usd": 1.0,
            "prompt_tokens": 100,
            "completion_tokens": 7,
        },
        {
            "tenant_id": tenant,
            "created_at": utc("2024-03-02T23:59:59.5"),
            "model": "m-b",
            "user_id": bob.user_id,
            "cost_usd": 2.0,
            "source": "chat",
        },
        {"tenant_id": tenant, "created_at": utc("2024-03-03T00:00:00"), "model": "m-a"},
    )
    span = {"from": "2024-03-01", "to": "2024-03-02"}
    days = await report(live, org.owner.key, group_by="day", **span)
    assert [(r["day"], r["requests"]) for r in days["rows"]] == [
        ("2024-03-01", 3),
        ("2024-03-02", 2),
    ]
    assert days["totals"] == {
        "requests": 5,
        "prompt_tokens": 4 * 10 + 100,
        "completion_tokens": 4 * 20 + 7,
        "cost_usd": pytest.approx(3.875),
        "cached_requests": 0,
    }
    assert (days["from"], days["to"], days["group_by"]) == ("2024-03-01", "2024-03-02", ["day"])
    one_day = await report(
        live, org.owner.key, group_by="day", **{"from": "2024-03-02", "to": "2024-03-02"}
    )
    assert [(r["day"], r["requests"]) for r in one_day["rows"]] == [("2024-03-02", 2)]

    three = await report(live, org.owner.key, group_by="day,model,user", **span)
    assert {
        (r["day"], r["model"], r["user_email"]): (r["requests"], r["cost_usd"])
        for r in three["rows"]
    } == {
        ("2024-03-01", "m-a", ada.email): (1, 0.5),
        ("2024-03-01", "m-b", ada.email): (1, 0.25),
        ("2024-03-01", "m-a", bob.email): (1, 0.125),
        ("2024-03-02", "m-a", bob.email): (1, 1.0),
        ("2024-03-02", "m-b", bob.email): (1, 2.0),
    }
    # Rows come by day, then the largest cost first.
    assert [r["cost_usd"] for r in three["rows"]] == [0.5, 0.25, 0.125, 2.0, 1.0]

    keys = rows_by(await report(live, org.owner.key, group_by="key", **span), "api_key_id")
    assert {k: (v["key_name"], v["requests"]) for k, v in keys.items()} == {
        ada.key_id: ("ada-laptop", 2),
        bob.key_id: ("bob-ci", 2),
        None: (None, 1),  # a turn in the web app: no key
    }
    filtered = await report(
        live, org.owner.key, group_by="model", model="m-a", user_id=bob.user_id, **span
    )
    assert [(r["model"], r["requests"]) for r in filtered["rows"]] == [("m-a", 2)]
    by_key = await report(live, org.owner.key, group_by="day", api_key_id=ada.key_id, **span)
    assert by_key["totals"]["requests"] == 2
    sources = rows_by(await report(live, org.owner.key, group_by="source", **span), "source")
    assert {k: v["requests"] for k, v in sources.items()} == {"gateway": 3, "chat": 2}
    nothing = await report(live, org.owner.key, group_by="", **span)
    assert nothing["rows"] == []
    assert nothing["totals"]["requests"] == 5

    # A member sees only its own usage, grouped by day, model or key.
    own = await report(live, bob.key, "/api/usage", group_by="model,key", **span)
    assert own["totals"]["requests"] == 3
    assert {(r["model"], r["api_key_id"]) for r in own["rows"]} == {
        ("m-a", bob.key_id),
        ("m-b", None),
    }
    assert "user_id" not in own["rows"][0]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"from": "yesterday"}, 422, "invalid_date"),
        ({"to": "2024-02-30"}, 422, "invalid_date"),
        ({"from": "2024-03-02", "to": "2024-03-01"}, 422, "invalid_range"),
        ({"from": "2023-01-01", "to": "2024-03-01"}, 422, "range_too_long"),
        ({"group_by": "day,week"}, 422, "invalid_group_by"),
        ({"group_by": "day,day"}, 422, "invalid_group_by"),
        ({"group_by": "day,model,user,key"}, 422, "invalid_group_by"),
        ({"group_by": "tenant"}, 403, "not_superadmin"),
    ],
)
async def test_a_bad_report_request_is_a_problem_with_a_stable_code(
    live: LiveServer, params: dict[str, str], status: int, code: str
) -> None:
    org = await new_org(live)
    assert await problem(live, org.owner.key, status, **params) == code


async def test_own_usage_groups_only_by_day_model_and_key(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    for group in ("user", "tenant", "source"):
        code = await problem(live, member.key, 422, "/api/usage", group_by=group)
        assert code == "invalid_group_by"
    assert (await report(live, member.key, "/api/usage"))["totals"]["requests"] == 0


async def test_a_tenant_admin_never_sees_another_tenants_usage(live: LiveServer) -> None:
    mine, theirs = await new_org(live), await new_org(live)
    stranger = await keyed_user(live, theirs)
    when = utc("2024-05-05T12:00:00")
    await insert_usage(
        live,
        {"tenant_id": mine.tenant_id, "created_at": when, "user_id": mine.owner.id, "cost_usd": 1},
        {
            "tenant_id": theirs.tenant_id,
            "created_at": when,
            "user_id": stranger.user_id,
            "api_key_id": stranger.key_id,
            "model": "their-model",
            "cost_usd": 7,
        },
    )
    span = {"from": "2024-05-01", "to": "2024-05-31"}
    seen = await report(live, mine.owner.key, group_by="user,key,model", **span)
    assert seen["totals"]["requests"] == 1
    assert [r["user_id"] for r in seen["rows"]] == [mine.owner.id]
    text = str(seen)
    assert stranger.email not in text
    assert "their-model" not in text
    # Naming the other tenant, its user or its key shows nothing of theirs.
    code = await problem(live, mine.owner.key, 403, tenant_id=theirs.tenant_id, **span)
    assert code == "not_superadmin"
    own_tenant = await report(live, mine.owner.key, tenant_id=mine.tenant_id, **span)
    assert own_tenant["totals"]["requests"] == 1
    for field, value in (("user_id", stranger.user_id), ("api_key_id", stranger.key_id)):
        foreign = await report(live, mine.owner.key, group_by="user", **{field: value}, **span)
        assert foreign["rows"] == []
        assert foreign["totals"]["requests"] == 0
    async with live.client(mine.owner.key) as client:
        exported = await client.get("/api/admin/usage.csv", params=span)
        assert exported.status_code == 200
        assert stranger.email not in exported.text
        assert "their-model" not in exported.text
        assert (
            await client.get("/api/admin/usage.csv", params={"tenant_id": theirs.tenant_id})
        ).status_code == 403

    # The other tenant's member: its own usage only, and no admin reports at all.
    assert (await report(live, stranger.key, "/api/usage", **span))["totals"]["requests"] == 1
    async with live.client(stranger.key) as client:
        for path in ("/api/admin/usage", "/api/admin/usage.csv", "/api/admin/prices"):
            answer = await client.get(path)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["code"] in ("not_admin", "insufficient_scope")


async def test_a_superadmin_sees_every_tenant_or_one(live: LiveServer) -> None:
    operator, first, second = (
        await new_org(live, superadmin=True),
        await new_org(live),
        await new_org(live),
    )
    when = utc("2023-07-14T08:00:00")
    await insert_usage(
        live,
        {"tenant_id": first.tenant_id, "created_at": when, "cost_usd": 1, "model": unique("m")},
        {"tenant_id": second.tenant_id, "created_at": when, "cost_usd": 2},
        {"tenant_id": second.tenant_id, "created_at": when, "cost_usd": 2},
    )
    span = {"from": "2023-07-14", "to": "2023-07-14"}
    everyone = rows_by(
        await report(live, operator.owner.key, group_by="tenant", **span), "tenant_id"
    )
    assert everyone[first.tenant_id]["tenant_slug"] == first.slug
    assert (everyone[first.tenant_id]["requests"], everyone[second.tenant_id]["requests"]) == (1, 2)
    one = await report(live, operator.owner.key, group_by="day", tenant_id=second.tenant_id, **span)
    assert one["totals"]["requests"] == 2
    assert one["totals"]["cost_usd"] == 4
    assert (
        await problem(live, operator.owner.key, 404, tenant_id=unique("nope")) == "tenant_not_found"
    )

    async with live.client(operator.owner.key) as client:
        exported = await client.get("/api/admin/usage.csv", params=span)
    assert exported.status_code == 200
    table = list(csv.reader(io.StringIO(exported.text)))
    assert table[0][:3] == ["day", "tenant_id", "tenant_slug"]
    slugs = {row[2] for row in table[1:]}
    assert {first.slug, second.slug} <= slugs


async def test_the_csv_export_has_names_fixed_decimals_and_no_formulas(live: LiveServer) -> None:
    org = await new_org(live)
    sneaky = await keyed_user(live, org, key_name='=HYPERLINK("http://evil")')
    plain = await keyed_user(live, org, key_name="build server")
    when = utc("2024-01-10T10:00:00")
    await insert_usage(
        live,
        {
            "tenant_id": org.tenant_id,
            "created_at": when,
            "user_id": sneaky.user_id,
            "api_key_id": sneaky.key_id,
            "model": "+cmd|' /C calc'!A0",
            "cost_usd": 0.1234567891,
        },
        {
            "tenant_id": org.tenant_id,
            "created_at": when,
            "user_id": plain.user_id,
            "api_key_id": plain.key_id,
            "model": "gpt-x",
            "cost_usd": 2,
        },
        {
            "tenant_id": org.tenant_id,
            "created_at": when + timedelta(hours=1),
            "user_id": plain.user_id,
            "api_key_id": plain.key_id,
            "model": "gpt-x",
            "cost_usd": 3,
        },
        {
            "tenant_id": org.tenant_id,
            "created_at": when + timedelta(days=1),
            "model": "@sum",
            "prompt_tokens": 5,
            "completion_tokens": 6,
        },
    )
    async with live.client(org.owner.key) as client:
        answer = await client.get(
            "/api/admin/usage.csv", params={"from": "2024-01-10", "to": "2024-01-11"}
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == (
        'attachment; filename="usage-2024-01-10-2024-01-11.csv"'
    )
    table = list(csv.reader(io.StringIO(answer.text)))
    assert table[0] == [
        "day",
        "model",
        "user_id",
        "user_email",
        "api_key_id",
        "key_name",
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "cached_requests",
    ]
    assert table[1:] == [
        [
            "2024-01-10",
            "gpt-x",
            plain.user_id,
            plain.email,
            plain.key_id,
            "build server",
            "2",
            "20",
            "40",
            "5.00000000",
            "0",
        ],
        [
            "2024-01-10",
            "'+cmd|' /C calc'!A0",
            sneaky.user_id,
            sneaky.email,
            sneaky.key_id,
            '\'=HYPERLINK("http://evil")',
            "1",
            "10",
            "20",
            "0.12345679",
            "0",
        ],
        ["2024-01-11", "'@sum", "", "", "", "", "1", "5", "6", "0.00000000", "0"],
    ]
    async with live.client(org.owner.key) as client:
        bad = await client.get("/api/admin/usage.csv", params={"from": "2024-13-01"})
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_date"
