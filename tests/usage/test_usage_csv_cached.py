"""The CSV export counts the calls answered from the gateway response cache, as the JSON
report does (`cached_requests`)."""

from __future__ import annotations

import csv
import io

from tests.admin.support import new_org
from tests.api.live import LiveServer
from tests.usage.support import insert_usage, report, utc


async def test_the_csv_export_has_the_cached_requests_of_each_group(live: LiveServer) -> None:
    org = await new_org(live)
    when = utc("2024-02-10T10:00:00")
    await insert_usage(
        live,
        {"tenant_id": org.tenant_id, "created_at": when, "model": "gpt-x", "cost_usd": 2},
        *(
            {
                "tenant_id": org.tenant_id,
                "created_at": when,
                "model": "gpt-x",
                "cost_usd": 0.0,
                "cached": True,
            }
            for _ in range(2)
        ),
        {"tenant_id": org.tenant_id, "created_at": when, "model": "gpt-y", "cost_usd": 1},
    )
    span = {"from": "2024-02-10", "to": "2024-02-10"}
    async with live.client(org.owner.key) as client:
        answer = await client.get("/api/admin/usage.csv", params=span)
    assert answer.status_code == 200, answer.text
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert [(row["model"], row["requests"], row["cached_requests"]) for row in table] == [
        ("gpt-x", "3", "2"),
        ("gpt-y", "1", "0"),
    ]
    json_report = await report(live, org.owner.key, group_by="model", **span)
    assert json_report["totals"]["cached_requests"] == 2
    assert [(row["model"], row["cached_requests"]) for row in json_report["rows"]] == [
        ("gpt-x", 2),
        ("gpt-y", 0),
    ]
