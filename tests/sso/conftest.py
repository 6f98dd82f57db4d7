"""SSO fixtures: a local OpenID Connect provider and a live chatplane server that trusts it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.live import LiveServer, start_live_server
from tests.conftest import make_settings
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


@pytest.fixture(scope="session")
async def live(
    provider: FakeOidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("live-sso"),
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_provider_name=PROVIDER_NAME,
    )
    server = await start_live_server(settings, email=ADMIN_EMAIL)
    yield server
    await server.stop()
