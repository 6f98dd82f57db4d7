"""SSO fixtures: a local OpenID Connect provider and a live chatplane server that trusts it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.api.live import LiveServer, start_live_server
from tests.conftest import RUN_ID, make_settings, postgres_database
from tests.sso.provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider

PROVIDER_NAME = "Test IdP"
ADMIN_EMAIL = "ada@acme.test"


@pytest.fixture(scope="session")
async def provider() -> AsyncIterator[FakeOidcProvider]:
    async with FakeOidcProvider() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_provider(provider: FakeOidcProvider) -> None:
    provider.reset()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def sso_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
async def live(
    provider: FakeOidcProvider, tmp_path_factory: pytest.TempPathFactory, sso_backend: str
) -> AsyncIterator[LiveServer]:
    """The SSO suite runs on SQLite and on a Postgres database of its own (its users and
    tenants are fixed names, so it does not share the API suite's database)."""
    async with contextlib.AsyncExitStack() as stack:
        database_url = None
        if sso_backend == "postgres":
            database_url = await stack.enter_async_context(
                postgres_database(f"chatplane_sso_{RUN_ID}")
            )
        server = await _start(provider, tmp_path_factory, database_url)
        yield server
        await server.stop()


async def _start(
    provider: FakeOidcProvider, tmp_path_factory: pytest.TempPathFactory, database_url: str | None
) -> LiveServer:
    settings = make_settings(
        tmp_path_factory.mktemp("live-sso"),
        database_url=database_url,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_provider_name=PROVIDER_NAME,
    )
    return await start_live_server(settings, email=ADMIN_EMAIL)
