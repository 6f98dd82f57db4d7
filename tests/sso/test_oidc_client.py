"""The OpenID Connect client on its own: caching, key rotation, client authentication, the
state cookie and the `next` rule, against the local provider."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jwt
import pytest

from chatplane.auth import oidc
from chatplane.auth.oidc import (
    LoginState,
    OidcClient,
    SsoNextInvalid,
    SsoNotConfigured,
    SsoProviderError,
    SsoStateInvalid,
    SsoTokenInvalid,
    safe_next_path,
)
from tests.conftest import make_settings
from tests.sso.flow import with_query
from tests.sso.provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider, SigningKey, Tamper

SECRET = "a-secret-key-of-the-server-for-these-tests-0123456789"
REDIRECT_URI = "http://127.0.0.1:9/api/auth/sso/callback"  # never called: we read the Location


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_client(
    http: aiohttp.ClientSession, tmp_path: Path, issuer: str, **overrides: Any
) -> OidcClient:
    ttl = overrides.pop("metadata_ttl_s", oidc.METADATA_TTL_S)
    settings = make_settings(
        tmp_path,
        oidc_issuer=issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        **overrides,
    )
    return OidcClient(settings, http, metadata_ttl_s=ttl)


async def authorize(client: OidcClient, email: str = "ada@acme.test") -> tuple[str, LoginState]:
    """The browser's part: visit the authorization URL, return the code it sends back."""
    login = LoginState.new(redirect_uri=REDIRECT_URI, next_path="/")
    url = await client.authorization_url(login)
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(with_query(url, login_hint=email))
    assert answer.status_code == 302, answer.text
    back = httpx.URL(answer.headers["location"])
    assert back.params["state"] == login.state
    return back.params["code"], login


# ------------------------------------------------------------------ documents and keys


async def test_discovery_is_fetched_once_and_shared(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = make_client(http, tmp_path, provider.issuer)
    results = await asyncio.gather(*(client.metadata() for _ in range(5)))
    await client.metadata()
    assert provider.hits["discovery"] == 1
    assert {r.token_endpoint for r in results} == {f"{provider.issuer}/token"}


async def test_discovery_is_fetched_again_after_its_ttl(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = make_client(http, tmp_path, provider.issuer, metadata_ttl_s=0.0)
    await client.metadata()
    await client.metadata()
    assert provider.hits["discovery"] == 2


async def test_rotated_keys_are_fetched_when_a_token_names_one(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = make_client(http, tmp_path, provider.issuer)
    assert (await client.sign_in(*await authorize(client))).email == "ada@acme.test"
    assert provider.hits["jwks"] == 1
    provider.key = SigningKey.ec("key-2")
    provider.published = [provider.key]
    assert (await client.sign_in(*await authorize(client))).email == "ada@acme.test"
    assert provider.hits["jwks"] == 2


async def test_an_unknown_key_is_looked_for_once_then_refused(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = make_client(http, tmp_path, provider.issuer)
    provider.tamper = Tamper(key=SigningKey.rsa("rogue"))
    for _ in range(3):
        with pytest.raises(SsoTokenInvalid, match="does not publish"):
            await client.sign_in(*await authorize(client))
    assert provider.hits["jwks"] == 2  # the first fetch, and one more for the unknown kid


async def test_an_issuer_that_does_not_match_its_document_is_refused(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = provider.issuer.rsplit(":", 1)[1]
    client = make_client(http, tmp_path, f"http://localhost:{port}")
    with pytest.raises(SsoProviderError, match="names the issuer"):
        await client.metadata()


async def test_an_unreachable_provider_is_a_provider_error(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(http, tmp_path, f"http://127.0.0.1:{port}")
    with pytest.raises(SsoProviderError, match="Could not reach"):
        await client.metadata()


async def test_plain_http_is_refused_beyond_this_machine(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = make_client(http, tmp_path, "http://idp.example.test")
    with pytest.raises(SsoProviderError, match="https://"):
        await client.metadata()


async def test_without_settings_it_is_not_configured(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = OidcClient(make_settings(tmp_path), http)
    assert not client.enabled
    with pytest.raises(SsoNotConfigured):
        await client.authorization_url(LoginState.new(redirect_uri=REDIRECT_URI, next_path="/"))


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_the_client_authenticates_the_way_the_provider_offers(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path, method: str
) -> None:
    provider.auth_methods = [method]
    client = make_client(http, tmp_path, provider.issuer)
    identity = await client.sign_in(*await authorize(client))
    assert identity.issuer == provider.issuer
    [request] = provider.token_requests
    if method == "client_secret_basic":
        assert request["authorization"].startswith("Basic ")
        assert "client_secret" not in request
    else:
        assert request["authorization"] == ""
        assert request["client_secret"] == CLIENT_SECRET
    assert provider.token_errors == []


async def test_openid_is_always_in_the_scope(
    provider: FakeOidcProvider, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    client = make_client(http, tmp_path, provider.issuer, oidc_scopes="email groups")
    url = await client.authorization_url(LoginState.new(redirect_uri=REDIRECT_URI, next_path="/"))
    assert httpx.URL(url).params["scope"] == "openid email groups"


# ------------------------------------------------------------------ the state cookie


def test_login_state_round_trips() -> None:
    login = LoginState.new(redirect_uri=REDIRECT_URI, next_path="/#/c/1")
    opened = LoginState.unseal(login.seal(SECRET), SECRET, returned_state=login.state)
    assert opened == login


def test_login_state_needs_the_same_state_and_key() -> None:
    login = LoginState.new(redirect_uri=REDIRECT_URI, next_path="/")
    sealed = login.seal(SECRET)
    with pytest.raises(SsoStateInvalid, match="different sign-in"):
        LoginState.unseal(sealed, SECRET, returned_state=login.state + "x")
    with pytest.raises(SsoStateInvalid, match="different sign-in"):
        LoginState.unseal(sealed, SECRET, returned_state=None)
    with pytest.raises(SsoStateInvalid, match="not valid"):
        LoginState.unseal(sealed, SECRET + "other", returned_state=login.state)
    with pytest.raises(SsoStateInvalid, match="No sign-in"):
        LoginState.unseal(None, SECRET, returned_state=login.state)
    # Signed with the server's key itself (as session tokens are) is not good enough.
    claims = jwt.decode(sealed, options={"verify_signature": False})
    forged = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(SsoStateInvalid, match="not valid"):
        LoginState.unseal(forged, SECRET, returned_state=login.state)


def test_login_state_expires_after_ten_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    login = LoginState.new(redirect_uri=REDIRECT_URI, next_path="/")
    started = time.time() - oidc.STATE_TTL_S - 5
    monkeypatch.setattr(time, "time", lambda: started)
    sealed = login.seal(SECRET)
    monkeypatch.undo()
    with pytest.raises(SsoStateInvalid, match="took too long"):
        LoginState.unseal(sealed, SECRET, returned_state=login.state)


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    # The example of RFC 7636, appendix B.
    login = LoginState(
        state="s",
        nonce="n",
        code_verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        redirect_uri=REDIRECT_URI,
        next_path="/",
    )
    assert login.code_challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/"),
        ("", "/"),
        ("/", "/"),
        ("/#/c/abc", "/#/c/abc"),
        ("/admin?tab=users", "/admin?tab=users"),
    ],
)
def test_next_paths_on_this_site_are_kept(given: str | None, expected: str) -> None:
    assert safe_next_path(given) == expected


@pytest.mark.parametrize(
    "given",
    ["//evil.test", "/\\evil.test", "https://evil.test", "/\r\nSet-Cookie: x=1", "./x", "x"],
)
def test_next_paths_elsewhere_are_refused(given: str) -> None:
    with pytest.raises(SsoNextInvalid):
        safe_next_path(given)
