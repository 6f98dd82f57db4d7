"""The Operations page of /admin in headless Chromium against a live `chatplane serve`: an
operator sees the live tiles (value and state in words) and the charts, and both update
from the event stream as traffic arrives; other admins have no such page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from .conftest import LiveServer, PageLog
from .test_admin_pages import assert_clean, csrf_headers, need, open_admin, shot, sign_in

pytestmark = pytest.mark.browser

TILES = (
    "active_users",
    "open_streams",
    "requests_per_s",
    "latency_p95_s",
    "error_rate",
    "first_token_p95_s",
    "queue_depth",
    "queue_age_s",
    "messages_per_min",
    "turns_per_min",
    "provider_errors_per_min",
)
CHARTS = (
    "requests_per_s",
    "latency_p95_s",
    "error_rate",
    "first_token_p95_s",
    "open_streams",
    "queue_depth",
)


async def frames(page: Page) -> int:
    return int(await page.locator(".adm-page-inner").get_attribute("data-frames") or 0)


async def test_operator_watches_the_dashboard_update_live(
    desktop: tuple[Page, PageLog],
    live_server: LiveServer,
    artifacts: Path,
    tmp_path: Path,
) -> None:
    page, log = desktop
    await sign_in(page, need(live_server.superadmin))
    await open_admin(page, "#/ops")
    await expect(page.locator("#page-title")).to_have_text("Operations")
    await expect(page.locator('.adm-nav-link[data-page="ops"]')).to_be_visible()
    await expect(page.locator("#ops-status")).to_contain_text("Live", timeout=15_000)
    for key in TILES:
        await expect(page.locator(f'.ops-tile[data-tile="{key}"]')).to_have_count(1)
    for key in CHARTS:
        await expect(page.locator(f'.ops-chart[data-chart="{key}"] svg')).to_have_count(1)
    # The state is said in words, not by colour alone.
    users = page.locator('.ops-tile[data-tile="active_users"]')
    await expect(users).to_contain_text(re.compile("OK|Warning|Critical|No data"))
    await expect(users.locator(".ops-tile-value")).to_have_text(re.compile(r"^[1-9]"))

    # Traffic: requests and a chat turn, through the operator's session.
    seen = await frames(page)
    for _ in range(20):
        assert (await page.request.get("/api/conversations")).status == 200
    headers = await csrf_headers(page.context)
    created = await page.request.post("/api/conversations", data={}, headers=headers)
    conversation = await created.json()
    posted = await page.request.post(
        f"/api/conversations/{conversation['id']}/messages",
        data={"content": "watch this"},
        headers=headers,
    )
    assert posted.status == 202, await posted.text()
    first_token = page.locator('.ops-tile[data-tile="first_token_p95_s"] .ops-tile-value')
    await expect(first_token).to_have_text(re.compile(r"^[0-9.]+ m?s$"), timeout=15_000)
    rate = page.locator('.ops-tile[data-tile="requests_per_s"] .ops-tile-value')
    await expect(rate).not_to_have_text("\u2013", timeout=15_000)  # the "no value" dash
    await expect(rate).to_have_text(re.compile(r"^[0-9.,]+ /s$"))
    chart = page.locator('.ops-chart[data-chart="requests_per_s"]')
    await expect(chart.locator("path.ops-line")).to_have_count(1, timeout=15_000)
    await expect(chart).not_to_have_attribute("data-points", re.compile("^[01]$"))
    assert await frames(page) > seen  # frames keep coming
    points = int(await chart.get_attribute("data-points") or 0)
    await expect(chart).not_to_have_attribute("data-points", str(points), timeout=15_000)
    await expect(page.locator(".ops-meta")).to_contain_text("live process")

    await page.set_viewport_size({"width": 1280, "height": 1180})  # tiles and charts in one
    await shot(page, artifacts, "ops-01-dashboard-desktop")
    screenshot = tmp_path / "ops-dashboard.png"
    await page.screenshot(path=str(screenshot))
    shutil.copy(screenshot, artifacts / "ops-dashboard.png")
    await assert_clean(page, log)


async def test_an_organisation_admin_has_no_operations_page(
    desktop: tuple[Page, PageLog], live_server: LiveServer
) -> None:
    page, log = desktop
    await sign_in(page, need(live_server.admin))
    await open_admin(page, "#/ops")
    await expect(page).not_to_have_url(re.compile("#/ops$"))
    await expect(page.locator('.adm-nav-link[data-page="ops"]')).to_be_hidden()
    await expect(page.locator(".ops-tile")).to_have_count(0)
    await assert_clean(page, log)
