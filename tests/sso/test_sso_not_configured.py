"""A server without OpenID Connect settings offers no single sign-on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.api.live import LiveServer, start_live_server
from tests.conftest import make_settings
from tests.sso.flow import assert_refused, browser, start


@pytest.fixture(scope="module")
async def plain(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    server = await start_live_server(
        make_settings(tmp_path_factory.mktemp("live-no-sso")), email="bob@example.test"
    )
    yield server
    await server.stop()


async def test_config_says_disabled(plain: LiveServer) -> None:
    async with browser() as client:
        response = await client.get(f"{plain.base_url}/api/auth/sso/config")
    assert response.status_code == 200
    assert response.json() == {"enabled": False, "name": "Single sign-on"}


async def test_login_and_callback_send_the_browser_back_with_a_code(plain: LiveServer) -> None:
    async with browser() as client:
        login = await start(client, plain, "/")
        callback = await client.get(
            f"{plain.base_url}/api/auth/sso/callback", params={"code": "c", "state": "s"}
        )
    assert login.status_code == 302
    assert login.headers["location"] == "/?sso_error=sso_not_configured"
    assert_refused(callback, "sso_not_configured")
