"""The web app while the database is away: a clear banner, no broken page, and the page
fills in by itself when the database is back.

A `chatplane serve` of its own (Postgres through a TCP proxy the test cuts, the in-process
broker), driven in headless Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from sqlalchemy.engine import make_url

from tests.scale.procs import Proc, clean_env, free_port, run_cli
from tests.scale.test_database_outage import TcpProxy, through

from .conftest import CSP_RECORDER, DESKTOP, LiveServer
from .test_web_chat import log_in, new_chat, send

pytestmark = [pytest.mark.browser, pytest.mark.postgres, pytest.mark.slow]

PASSWORD = "outage-banner-password-1"
BANNER_TEXT = "The database is unreachable; your work is safe; retrying"


@pytest.fixture
async def proxied_server(
    postgres_url: str, tmp_path: Path
) -> AsyncIterator[tuple[LiveServer, TcpProxy]]:
    proxy = TcpProxy(make_url(postgres_url).port or 5432)
    await proxy.start()
    env = clean_env(
        CHATPLANE_DATA_DIR=str(tmp_path / "data"),
        CHATPLANE_DATABASE_URL=postgres_url,
        CHATPLANE_MOCK_CHUNK_DELAY_MS="5",
    )
    run_cli(env, "db", "upgrade")
    email = f"banner-{free_port()}@example.com"
    run_cli(env, "users", "create", email, "--password-stdin", stdin=PASSWORD + "\n")
    port = free_port()
    server = Proc(
        "serve",
        ["serve", "--port", str(port)],
        {**env, "CHATPLANE_DATABASE_URL": through(postgres_url, proxy)},
        tmp_path / "serve.log",
        port=port,
    ).start()
    try:
        await server.wait_ready()
        yield LiveServer(base_url=server.base_url, email=email, password=PASSWORD), proxy
    finally:
        # The proxy runs in this event loop: the server's shutdown closes its database
        # connections through it, so wait for the exit without blocking the loop.
        try:
            await server.terminate()
        finally:
            server.stop()  # closes the log (and kills the server if it did not exit)
            await proxy.close()


async def test_the_banner_shows_during_a_database_outage_and_goes_after(
    browser: Browser, proxied_server: tuple[LiveServer, TcpProxy], artifacts: Path
) -> None:
    server, proxy = proxied_server
    context = await browser.new_context(
        base_url=server.base_url, viewport=DESKTOP, color_scheme="light", reduced_motion="reduce"
    )
    await context.add_init_script(CSP_RECORDER)
    page = await context.new_page()
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    try:
        await log_in(page, server)
        conversation_id = await new_chat(page)
        await expect(await send(page, "before the outage")).to_contain_text("before the outage")
        banner = page.locator(".outage-banner")
        await expect(banner).to_have_count(0)

        await proxy.cut()
        # Opening the app again needs the database (who am I, my conversations).
        await page.reload()
        await expect(banner).to_be_visible()
        await expect(banner).to_have_text(BANNER_TEXT + "…")
        await expect(banner).to_have_attribute("role", "status")
        await page.screenshot(path=str(artifacts / "outage-banner-desktop.png"))

        await proxy.restore()
        # /readyz is polled every Retry-After (3 s); then the reads that failed run again.
        await expect(banner).to_be_hidden(timeout=20_000)
        await expect(page.locator("#chat-view")).to_be_visible()
        await expect(page.locator(f'.conv-item[data-id="{conversation_id}"]')).to_be_visible()
        await page.screenshot(path=str(artifacts / "outage-banner-recovered-desktop.png"))
        assert page_errors == []
        assert await page.evaluate("window.__csp") == []
    finally:
        await context.close()
