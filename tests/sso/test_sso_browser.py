"""Single sign-on in headless Chromium: the button, the round trip through a provider on
another site (`localhost` against the app's `127.0.0.1`, so SameSite rules apply), and an
error shown on the login view."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.api.live import LiveServer, start_live_server
from tests.conftest import make_settings
from tests.sso.provider import CLIENT_ID, CLIENT_SECRET, FakeOidcProvider

pytestmark = pytest.mark.browser

EMAIL = "grace@acme.test"
CSP_RECORDER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""


@pytest.fixture(scope="module")
async def remote_provider() -> AsyncIterator[FakeOidcProvider]:
    async with FakeOidcProvider(public_host="localhost") as running:
        yield running


@pytest.fixture(scope="module")
async def app_server(
    remote_provider: FakeOidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        tmp_path_factory.mktemp("live-sso-browser"),
        oidc_issuer=remote_provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_provider_name="Acme ID",
    )
    server = await start_live_server(settings, email=EMAIL)
    yield server
    await server.stop()


@pytest.fixture
async def page(
    browser: Browser, app_server: LiveServer, remote_provider: FakeOidcProvider
) -> AsyncIterator[Page]:
    remote_provider.reset()
    remote_provider.login_as = EMAIL
    context = await browser.new_context(base_url=app_server.base_url)
    context.set_default_timeout(10_000)
    await context.add_init_script(CSP_RECORDER)
    opened = await context.new_page()
    yield opened
    assert await opened.evaluate("window.__csp") == []
    await context.close()


async def test_sign_in_with_the_provider_button(
    page: Page, app_server: LiveServer, remote_provider: FakeOidcProvider
) -> None:
    await page.goto("/")
    button = page.locator("#sso-login")
    await expect(button).to_be_visible()
    await expect(button).to_have_text("Sign in with Acme ID")
    await button.click()
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#user-email")).to_have_text(EMAIL)
    assert page.url == f"{app_server.base_url}/"
    assert remote_provider.hits["token"] == 1
    cookies = {c["name"] for c in await page.context.cookies()}
    assert "chatplane_session" in cookies
    assert "chatplane_sso" not in cookies


async def test_a_failed_sign_in_is_explained_on_the_login_view(
    page: Page, app_server: LiveServer, remote_provider: FakeOidcProvider
) -> None:
    remote_provider.deny = True
    await page.goto("/")
    await page.locator("#sso-login").click()
    await expect(page.locator("#login-error")).to_have_text("Sign-in was cancelled.")
    await expect(page.locator("#login-view")).to_be_visible()
    assert page.url == f"{app_server.base_url}/"  # the code left the address bar
