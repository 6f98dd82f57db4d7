"""Single sign-on end to end: a live chatplane, a local OpenID Connect provider, and an HTTP
client that follows the redirects by hand, as a browser would."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, update

from chatplane.auth.models import AuditEvent, Tenant, User, WebSession
from tests.api.live import PASSWORD, LiveServer
from tests.sso.conftest import ADMIN_EMAIL, PROVIDER_NAME
from tests.sso.flow import (
    SESSION_COOKIE,
    STATE_COOKIE,
    assert_refused,
    browser,
    set_cookie_headers,
    sign_in,
    start,
    with_query,
)
from tests.sso.provider import CLIENT_ID, DROP, FakeOidcProvider, SigningKey, Tamper, b64url


def unique_email(domain: str) -> str:
    return f"u-{uuid.uuid4().hex[:10]}@{domain}"


async def audit_events(live: LiveServer, action: str, subject: str) -> list[AuditEvent]:
    async with live.services.db.session() as session:
        rows = await session.scalars(
            select(AuditEvent).where(AuditEvent.action == action, AuditEvent.subject == subject)
        )
        return list(rows.all())


async def user_by_email(live: LiveServer, email: str) -> User | None:
    async with live.services.db.session() as session:
        found: User | None = await session.scalar(select(User).where(User.email == email))
        return found


# ------------------------------------------------------------------ the happy path


async def test_config_names_the_provider(live: LiveServer) -> None:
    async with browser() as client:
        response = await client.get(f"{live.base_url}/api/auth/sso/config")
    assert response.status_code == 200
    assert response.json() == {"enabled": True, "name": PROVIDER_NAME}


async def test_sign_in_opens_a_session_that_works(
    live: LiveServer, provider: FakeOidcProvider
) -> None:
    async with browser() as client:
        attempt = await sign_in(client, live, email=ADMIN_EMAIL, next_path="/#/c/abc?x=1")

        params = attempt.authorize_params
        assert attempt.login.headers["location"].startswith(f"{provider.issuer}/authorize?")
        assert params["response_type"] == "code"
        assert params["client_id"] == CLIENT_ID
        assert params["redirect_uri"] == f"{live.base_url}/api/auth/sso/callback"
        assert params["scope"] == "openid email profile"
        assert params["code_challenge_method"] == "S256"
        assert len(params["code_challenge"]) == 43  # base64url of a SHA-256 digest
        assert len(params["state"]) >= 32
        assert len(params["nonce"]) >= 32
        assert params["state"] != params["nonce"]

        assert attempt.landed == "/#/c/abc?x=1"
        assert attempt.callback.headers["cache-control"] == "no-store"
        assert client.cookies.get(STATE_COOKIE, path="/api/auth/sso") is None  # cleared
        assert client.cookies.get(SESSION_COOKIE)

        me = await client.get(f"{live.base_url}/api/auth/me")
        assert me.status_code == 200, me.text
        assert me.json()["email"] == ADMIN_EMAIL

    # The secret went in Basic auth (both offered; the spec's default first), not the form.
    token_request = provider.token_requests[-1]
    assert token_request["authorization"].startswith("Basic ")
    assert "client_secret" not in token_request
    assert token_request["code_verifier"]

    events = await audit_events(live, "login.sso", ADMIN_EMAIL)
    assert events, "no login.sso audit event"
    detail = json.loads(events[-1].detail or "{}")
    assert detail["issuer"] == provider.issuer
    assert detail["provider_subject"].startswith("sub-")
    async with live.services.db.session() as session:
        methods = (await session.scalars(select(WebSession.method))).all()
    assert "sso" in methods


async def test_state_cookie_is_short_lived_httponly_and_lax(live: LiveServer) -> None:
    async with browser() as client:
        response = await start(client, live, "/")
    [cookie] = [c for c in set_cookie_headers(response) if c.startswith(f"{STATE_COOKIE}=")]
    attributes = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes["samesite"].strip().lower() == "samesite=lax"
    assert attributes["max-age"].strip() == "Max-Age=600"
    assert attributes["path"].strip() == "Path=/api/auth/sso"


# ------------------------------------------------------------------ provisioning


async def test_sso_domain_of_a_tenant_provisions_new_members(live: LiveServer) -> None:
    async with live.services.db.session() as session:
        await session.execute(
            update(Tenant).where(Tenant.slug == "acme").values(sso_domains="acme.test, acme.dev")
        )
        await session.commit()
        acme_id = await session.scalar(select(Tenant.id).where(Tenant.slug == "acme"))

    email = unique_email("acme.dev")
    async with browser() as client:
        attempt = await sign_in(client, live, email=email)
        assert attempt.landed == "/"
        me = (await client.get(f"{live.base_url}/api/auth/me")).json()
    assert me["email"] == email
    assert me["tenant_id"] == acme_id
    assert me["role"] == "member"
    assert await audit_events(live, "user.provisioned", email)

    stranger = unique_email("elsewhere.test")
    async with browser() as client:
        attempt = await sign_in(client, live, email=stranger)
    assert_refused(attempt.callback, "sso_not_provisioned")
    assert await user_by_email(live, stranger) is None
    [refusal] = await audit_events(live, "login.failed", stranger)
    assert json.loads(refusal.detail or "{}") == {"method": "sso", "reason": "sso_not_provisioned"}


async def test_a_disabled_account_is_refused(live: LiveServer) -> None:
    email = unique_email("example.test")
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="acme")
    async with live.services.db.session() as session:
        await session.execute(update(User).where(User.email == email).values(disabled=True))
        await session.commit()
    async with browser() as client:
        attempt = await sign_in(client, live, email=email)
    assert_refused(attempt.callback, "account_disabled")


# ------------------------------------------------------------------ state and redirects


async def test_a_tampered_state_is_refused_before_the_code_is_used(
    live: LiveServer, provider: FakeOidcProvider
) -> None:
    async with browser() as client:
        attempt = await sign_in(
            client, live, edit_callback=lambda url: with_query(url, state="forged-" + "x" * 40)
        )
    assert_refused(attempt.callback, "sso_state_invalid")
    assert provider.hits["token"] == 0


async def test_a_callback_from_another_browser_is_refused(
    live: LiveServer, provider: FakeOidcProvider
) -> None:
    """Login CSRF: an attacker's own code and state, delivered to the victim's browser."""
    async with browser() as attacker:
        login = await start(attacker, live, "/")
        authorize = await attacker.get(login.headers["location"])
    async with browser() as victim:
        callback = await victim.get(authorize.headers["location"])
        assert_refused(callback, "sso_state_invalid")
        assert (await victim.get(f"{live.base_url}/api/auth/me")).status_code == 401
    assert provider.hits["token"] == 0


async def test_a_state_cookie_not_made_by_the_server_is_refused(live: LiveServer) -> None:
    """Another token signed with the server's secret (a session token) is no state cookie."""
    async with browser() as client:
        login = await client.post(
            f"{live.base_url}/api/auth/login", json={"email": ADMIN_EMAIL, "password": PASSWORD}
        )
        assert login.status_code == 200
        session_token = client.cookies.get(SESSION_COOKIE)
        assert session_token

        def swap_cookie(url: str) -> str:
            client.cookies.set(STATE_COOKIE, session_token, path="/api/auth/sso")
            return url

        attempt = await sign_in(client, live, edit_callback=swap_cookie)
    assert_refused(attempt.callback, "sso_state_invalid")


async def test_a_callback_works_once(live: LiveServer) -> None:
    async with browser() as client:
        attempt = await sign_in(client, live, email=ADMIN_EMAIL)
        assert attempt.landed == "/"
        replay = await client.get(attempt.callback_url)
    assert_refused(replay, "sso_state_invalid")


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.test/",
        "//evil.test/path",
        "/\\evil.test",
        "\\\\evil.test",
        "/\t/evil.test",
        "javascript:alert(1)",
        "evil.test",
        "http:/evil.test",
        "/" + "a" * 2001,
    ],
)
async def test_next_must_be_a_path_on_this_site(live: LiveServer, next_path: str) -> None:
    async with browser() as client:
        response = await start(client, live, next_path)
    assert response.status_code == 302
    assert response.headers["location"] == "/?sso_error=sso_next_invalid"
    assert not any(
        c.startswith(f"{STATE_COOKIE}=") and "Max-Age=600" in c
        for c in set_cookie_headers(response)
    )


# ------------------------------------------------------------------ the provider's answers


async def test_a_refusal_at_the_provider_is_shown(
    live: LiveServer, provider: FakeOidcProvider
) -> None:
    provider.deny = True
    async with browser() as client:
        attempt = await sign_in(client, live, email=ADMIN_EMAIL)
    assert_refused(attempt.callback, "sso_denied")
    assert provider.hits["token"] == 0


async def test_a_pkce_verifier_that_does_not_match_is_rejected_by_the_provider(
    live: LiveServer, provider: FakeOidcProvider
) -> None:
    """A code issued for someone else's challenge (an injected code) cannot be redeemed."""
    other_challenge = b64url(hashlib.sha256(b"another verifier" * 4).digest())
    async with browser() as client:
        attempt = await sign_in(
            client,
            live,
            email=ADMIN_EMAIL,
            edit_authorize=lambda url: with_query(url, code_challenge=other_challenge),
        )
    assert_refused(attempt.callback, "sso_provider_error")
    assert provider.token_errors == ["invalid_grant: PKCE verifier does not match the challenge"]


def _unsigned(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": "key-1"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def _hmac_with_public_key(provider: FakeOidcProvider) -> Callable[[dict[str, Any]], str]:
    """The classic confusion: HS256 "signed" with the provider's public key as the secret."""
    public_pem = provider.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def forge(claims: dict[str, Any]) -> str:
        header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "key-1"}).encode())
        signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
        signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(signature)}"

    return forge


TAMPERS: dict[str, tuple[Callable[[FakeOidcProvider], Tamper], str]] = {
    "wrong nonce": (lambda p: Tamper(claims={"nonce": "another-attempt"}), "sso_token_invalid"),
    "expired": (
        lambda p: Tamper(claims={"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}),
        "sso_token_invalid",
    ),
    "issued in the future": (
        lambda p: Tamper(claims={"iat": int(time.time()) + 3600}),
        "sso_token_invalid",
    ),
    "wrong audience": (lambda p: Tamper(claims={"aud": "someone-else"}), "sso_token_invalid"),
    "shared audience without azp": (
        lambda p: Tamper(claims={"aud": [CLIENT_ID, "someone-else"]}),
        "sso_token_invalid",
    ),
    "another issuer": (lambda p: Tamper(claims={"iss": "https://evil.test"}), "sso_token_invalid"),
    "another key, same kid": (
        lambda p: Tamper(key=SigningKey.rsa(p.key.kid)),
        "sso_token_invalid",
    ),
    "another key, unknown kid": (
        lambda p: Tamper(key=SigningKey.rsa("rogue")),
        "sso_token_invalid",
    ),
    "alg none": (lambda p: Tamper(forge=_unsigned), "sso_token_invalid"),
    "HS256 with the public key": (
        lambda p: Tamper(forge=_hmac_with_public_key(p)),
        "sso_token_invalid",
    ),
    "unverified email": (
        lambda p: Tamper(claims={"email_verified": False}),
        "sso_email_unverified",
    ),
    "no email_verified claim": (
        lambda p: Tamper(claims={"email_verified": DROP}),
        "sso_email_unverified",
    ),
    "no email": (lambda p: Tamper(claims={"email": DROP}), "sso_email_unverified"),
}


@pytest.mark.parametrize("case", list(TAMPERS))
async def test_an_id_token_that_does_not_hold_is_refused(
    live: LiveServer, provider: FakeOidcProvider, case: str
) -> None:
    make_tamper, code = TAMPERS[case]
    provider.tamper = make_tamper(provider)
    async with browser() as client:
        attempt = await sign_in(client, live, email=ADMIN_EMAIL)
        assert_refused(attempt.callback, code)
        assert (await client.get(f"{live.base_url}/api/auth/me")).status_code == 401
    assert provider.hits["token"] == 1  # the exchange worked: the token itself was refused
    assert provider.token_errors == []


async def test_a_good_token_signed_with_an_ec_key_is_accepted(
    live: LiveServer, provider: FakeOidcProvider
) -> None:
    """The control for the cases above: the provider rotates to an ES256 key, and the
    server fetches the new key set and accepts it."""
    provider.key = SigningKey.ec("key-ec-" + uuid.uuid4().hex[:6])
    provider.published = [provider.first_key, provider.key]
    async with browser() as client:
        attempt = await sign_in(client, live, email=ADMIN_EMAIL)
        assert attempt.landed == "/"
        assert (await client.get(f"{live.base_url}/api/auth/me")).status_code == 200
