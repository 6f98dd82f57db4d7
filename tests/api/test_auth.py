"""Logins, web sessions with cookies and CSRF, refresh and logout."""

from __future__ import annotations

import ipaddress
import itertools
import random

import httpx
from sqlalchemy import select

from chatplane.auth.models import AuditEvent
from tests.api.live import PASSWORD, LiveServer


def client_ip() -> str:
    """A client address of its own, sent through the trusted proxy (X-Forwarded-For)."""
    return str(ipaddress.ip_address("10.0.0.0") + next(_addresses))


_addresses = itertools.count(random.randrange(1, 2**20))


async def _login(
    client: httpx.AsyncClient, email: str, password: str, *, ip: str | None = None
) -> httpx.Response:
    return await client.post(
        "/api/auth/login",
        json={"email": email, "password": password},
        headers={"x-forwarded-for": ip or client_ip()},
    )


async def test_wrong_password_and_unknown_email_look_the_same(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        wrong = await _login(client, live.email, "not the password")
        unknown = await _login(client, "nobody@example.com", PASSWORD)
        malformed = await _login(client, "not-an-email", PASSWORD)
    for response in (wrong, unknown, malformed):
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_credentials"
        assert response.json()["detail"] == wrong.json()["detail"]


async def test_cookie_session_needs_the_csrf_header_for_writes(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as browser:
        login = await _login(browser, live.email.upper(), PASSWORD)
        assert login.status_code == 200
        tokens = login.json()
        assert tokens["token_type"] == "bearer"
        assert tokens["expires_in"] > 0
        cookie_header = ",".join(login.headers.get_list("set-cookie")).lower()
        assert "httponly" in cookie_header
        assert "samesite=lax" in cookie_header

        me = await browser.get("/api/auth/me")
        assert me.status_code == 200
        assert me.json()["email"] == live.email
        assert me.json()["is_superadmin"] is False
        assert me.json()["scopes"] == ["admin", "chat"]

        forged = await browser.post("/api/conversations", json={})
        assert forged.status_code == 403
        assert forged.json()["code"] == "csrf_failed"
        csrf = browser.cookies["chatplane_csrf"]
        allowed = await browser.post("/api/conversations", json={}, headers={"x-csrf-token": csrf})
        assert allowed.status_code == 201

        logout = await browser.post("/api/auth/logout", headers={"x-csrf-token": csrf})
        assert logout.status_code == 204
        browser.cookies.clear()
        assert (await browser.get("/api/auth/me")).status_code == 401
        # The access token of the ended session is refused too.
        ended = await browser.get(
            "/api/auth/me", headers={"authorization": f"Bearer {tokens['access_token']}"}
        )
        assert ended.status_code == 401
        assert ended.json()["code"] == "session_ended"


async def test_refresh_rotates_and_reuse_revokes_the_family(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        first = (await _login(client, live.email, PASSWORD)).json()
        refreshed = await client.post(
            "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert refreshed.status_code == 200
        second = refreshed.json()
        assert second["refresh_token"] != first["refresh_token"]
        me = await client.get(
            "/api/auth/me", headers={"authorization": f"Bearer {second['access_token']}"}
        )
        assert me.status_code == 200
        # The first token is presented again: someone else holds it. The whole family ends.
        reused = await client.post(
            "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert reused.status_code == 401
        assert reused.json()["code"] == "refresh_token_reused"
        successor = await client.post(
            "/api/auth/refresh", json={"refresh_token": second["refresh_token"]}
        )
        assert successor.status_code == 401
        assert successor.json()["code"] == "invalid_refresh_token"
        ended = await client.get(
            "/api/auth/me", headers={"authorization": f"Bearer {second['access_token']}"}
        )
        assert ended.status_code == 401
        assert ended.json()["code"] == "session_ended"


async def test_a_tampered_token_is_refused(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        token = (await _login(client, live.email, PASSWORD)).json()["access_token"]
        head, payload, signature = token.split(".")
        forged = f"{head}.{payload}.{signature[:-2]}xx"
        response = await client.get("/api/auth/me", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_failed_logins_lock_the_account_and_the_ip(live: LiveServer) -> None:
    email = f"locked-{client_ip()}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="acme")
    limit = live.services.settings.login_max_failures
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        for attempt in range(limit):
            wrong = await _login(client, email, f"wrong-{attempt}")
            assert wrong.status_code == 401
        # From yet another address, with the right password: the account is locked.
        locked = await _login(client, email, PASSWORD)
        assert locked.status_code == 429
        assert locked.json()["code"] == "login_locked"
        retry_after = int(locked.headers["retry-after"])
        assert 0 < retry_after <= live.services.settings.login_window_s

        # One address guessing many accounts is locked out as well.
        attacker = client_ip()
        for n in range(limit):
            response = await _login(client, f"nobody{n}@example.com", "x", ip=attacker)
            assert response.status_code == 401
        blocked = await _login(client, live.email, PASSWORD, ip=attacker)
        assert blocked.status_code == 429
        assert blocked.json()["code"] == "login_locked"
        assert (await _login(client, live.email, PASSWORD)).status_code == 200

    async with live.services.db.session() as session:
        actions = (
            await session.scalars(select(AuditEvent.action).where(AuditEvent.subject == email))
        ).all()
    assert actions.count("login.failed") == limit
    assert "login.locked" in actions


async def test_logout_everywhere_and_password_change(live: LiveServer) -> None:
    email = f"mover-{client_ip()}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="acme")
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        laptop = (await _login(client, email, PASSWORD)).json()
        phone = (await _login(client, email, PASSWORD)).json()
        tablet = (await _login(client, email, PASSWORD)).json()

        def bearer(tokens: dict[str, str]) -> dict[str, str]:
            return {"authorization": f"Bearer {tokens['access_token']}"}

        listed = (await client.get("/api/auth/sessions", headers=bearer(laptop))).json()
        assert len(listed) == 3
        assert sum(1 for s in listed if s["current"]) == 1

        changed = await client.post(
            "/api/auth/password",
            json={"current_password": PASSWORD, "new_password": "a new passphrase"},
            headers=bearer(laptop),
        )
        assert changed.status_code == 204
        assert (await client.get("/api/auth/me", headers=bearer(phone))).status_code == 401
        assert (await client.get("/api/auth/me", headers=bearer(laptop))).status_code == 200
        assert (await _login(client, email, PASSWORD)).status_code == 401
        wrong_current = await client.post(
            "/api/auth/password",
            json={"current_password": "nope", "new_password": "another passphrase"},
            headers=bearer(laptop),
        )
        assert wrong_current.status_code == 401

        everywhere = await client.post("/api/auth/logout-all", headers=bearer(laptop))
        assert everywhere.json() == {"sessions_ended": 1}
        assert (await client.get("/api/auth/me", headers=bearer(laptop))).status_code == 401
        assert (await client.get("/api/auth/me", headers=bearer(tablet))).status_code == 401


async def test_api_key_scopes(live: LiveServer) -> None:
    email = f"scoped-{client_ip()}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="acme")
    _, admin_only = await live.services.auth.create_api_key(
        email, "ops", scopes=frozenset({"admin"})
    )
    async with live.client(admin_only) as client:
        refused = await client.get("/api/conversations")
        assert refused.status_code == 403
        assert refused.json()["code"] == "insufficient_scope"
        gateway = await client.post(
            "/v1/chat/completions",
            json={"model": "mock-echo", "messages": [{"role": "user", "content": "x"}]},
        )
        assert gateway.status_code == 403
        assert gateway.json()["error"]["code"] == "insufficient_scope"
        assert (await client.get("/api/auth/me")).status_code == 200
