"""Usage records of a test's own, and reports read through the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from chatplane.db.base import new_id
from chatplane.usage.models import UsageRecord
from tests.admin.support import Org, expect, unique_email
from tests.api.live import PASSWORD, LiveServer


@dataclass(frozen=True)
class Keyed:
    """A user of an organisation with one API key (its id and its secret)."""

    user_id: str
    email: str
    key_id: str
    key: str


async def keyed_user(
    live: LiveServer, org: Org, *, role: str = "member", key_name: str = "scripts"
) -> Keyed:
    email = unique_email(role)
    user = await live.services.auth.create_user(email, PASSWORD, tenant_slug=org.slug, role=role)
    scopes = frozenset({"chat", "admin"} if role != "member" else {"chat"})
    key, secret = await live.services.auth.create_api_key(email, key_name, scopes=scopes)
    return Keyed(user.id, email, key.id, secret)


def utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def insert_usage(live: LiveServer, *records: dict[str, Any]) -> None:
    """Records as the recorder and the turn runner write them, at chosen times."""
    rows = []
    for record in records:
        values: dict[str, Any] = {
            "id": new_id(),
            "source": "gateway",
            "model": "mock",
            "user_id": None,
            "api_key_id": None,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "cost_usd": 0.0,
        } | record
        rows.append(UsageRecord(**values))
    async with live.services.db.session() as session:
        session.add_all(rows)
        await session.commit()


async def report(
    live: LiveServer, token: str, path: str = "/api/admin/usage", **params: str
) -> dict[str, Any]:
    async with live.client(token) as client:
        return dict(expect(await client.get(path, params=params), 200))


async def problem(
    live: LiveServer, token: str, status: int, path: str = "/api/admin/usage", **params: str
) -> str:
    """The code of the problem a report request answers."""
    async with live.client(token) as client:
        response: httpx.Response = await client.get(path, params=params)
    assert response.status_code == status, response.text
    return str(response.json()["code"])


def rows_by(answer: dict[str, Any], *fields: str) -> dict[Any, dict[str, Any]]:
    """The report's rows by the value (or tuple of values) of `fields`."""
    out = {}
    for row in answer["rows"]:
        key = row[fields[0]] if len(fields) == 1 else tuple(row[f] for f in fields)
        out[key] = row
    return out
