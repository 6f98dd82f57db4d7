"""Organisations and accounts of their own for each test (the live servers are shared)."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select, update

from chatplane.auth.models import AuditEvent, User
from tests.api.live import PASSWORD, LiveServer

_addresses = itertools.count(random.randrange(1, 2**19))


def client_ip() -> str:
    """A client address of its own, sent through the trusted proxy (X-Forwarded-For), so
    the per-IP login lockout of one test never touches another."""
    return str(ipaddress.ip_address("172.16.0.0") + next(_addresses))


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def unique_email(name: str) -> str:
    return f"{unique(name)}@example.com"


@dataclass(frozen=True)
class Account:
    id: str
    email: str
    key: str  # an API key: chat and admin scopes for owners and admins, chat for members


@dataclass(frozen=True)
class Org:
    tenant_id: str
    slug: str
    owner: Account


async def new_org(live: LiveServer, *, superadmin: bool = False) -> Org:
    """A tenant of its own; its first user is its owner."""
    slug = unique("org")
    email = unique_email("owner")
    user = await live.services.auth.create_user(email, PASSWORD, tenant_slug=slug)
    if superadmin:
        await make_superadmin(live, user.id)
    _, key = await live.services.auth.create_api_key(
        email, "owner", scopes=frozenset({"chat", "admin"})
    )
    return Org(user.tenant_id, slug, Account(user.id, email, key))


async def make_superadmin(live: LiveServer, user_id: str) -> None:
    """There is no API for this on purpose: operators set it in the database. Do it before
    the user's credentials are first used (they are cached for a few seconds)."""
    async with live.services.db.session() as session:
        await session.execute(update(User).where(User.id == user_id).values(is_superadmin=True))
        await session.commit()


async def add_user(live: LiveServer, org: Org, *, role: str = "member") -> Account:
    email = unique_email(role)
    user = await live.services.auth.create_user(email, PASSWORD, tenant_slug=org.slug, role=role)
    scopes = {"chat", "admin"} if role != "member" else {"chat"}
    _, key = await live.services.auth.create_api_key(email, role, scopes=frozenset(scopes))
    return Account(user.id, email, key)


async def login(live: LiveServer, email: str, password: str = PASSWORD) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        return await client.post(
            "/api/auth/login",
            json={"email": email, "password": password},
            headers={"x-forwarded-for": client_ip()},
        )


async def access_token(live: LiveServer, email: str) -> str:
    response = await login(live, email)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def status_of(live: LiveServer, token: str, path: str = "/api/auth/me") -> int:
    async with live.client(token) as client:
        return (await client.get(path)).status_code


def expect(response: httpx.Response, status: int, code: str | None = None) -> Any:
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code, response.text
    return response.json() if response.content else None


async def audit_actions(live: LiveServer, tenant_id: str) -> list[tuple[str, str | None]]:
    """(action, subject) of a tenant's audit events, oldest first."""
    async with live.services.db.session() as session:
        rows = await session.execute(
            select(AuditEvent.action, AuditEvent.subject)
            .where(AuditEvent.tenant_id == tenant_id)
            .order_by(AuditEvent.created_at)
        )
        return [(row[0], row[1]) for row in rows.all()]


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10) -> None:
    """Poll `check` until it holds or the deadline passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        await asyncio.sleep(0.02)
