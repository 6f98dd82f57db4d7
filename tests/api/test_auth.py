"""Logins, web sessions with cookies and CSRF, refresh and logout."""

from __future__ import annotations

import httpx

from tests.api.live import PASSWORD, LiveServer


async def _login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


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


async def test_refresh_rotates_the_refresh_token(live: LiveServer) -> None:
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
        reused = await client.post(
            "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert reused.status_code == 401
        assert reused.json()["code"] == "invalid_refresh_token"


async def test_a_tampered_token_is_refused(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        token = (await _login(client, live.email, PASSWORD)).json()["access_token"]
        head, payload, signature = token.split(".")
        forged = f"{head}.{payload}.{signature[:-2]}xx"
        response = await client.get("/api/auth/me", headers={"authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
