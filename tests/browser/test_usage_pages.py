"""The usage and prices pages of /admin, and "My usage" on My account, in headless Chromium
against a live `chatplane serve`: the chart, the totals, the CSV link, editing a price."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from .conftest import LiveServer, PageLog
from .test_admin_pages import assert_clean, confirm, dialog, need, open_admin, shot, sign_in

pytestmark = pytest.mark.browser

SEED_MODEL = "demo-large"
DAYS = 14


def cost_on(days_ago: int) -> float:
    return (DAYS - days_ago) * 0.25


# Alice's records over the last 14 days, the admin's every other day, the member's today.
SEEDED_COST = sum(cost_on(n) for n in range(DAYS)) + 0.5 * (DAYS // 2) + 1.0


def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    found = sorted(tmp_path_factory.getbasetemp().glob("chatplane-data[0-9]*"))
    assert len(found) == 1, found
    return found[0]


def _api_key(server: LiveServer, email: str, password: str) -> tuple[str, str]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        login = client.post("/api/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        bearer = {"authorization": f"Bearer {login.json()['access_token']}"}
        created = client.post("/api/keys", json={"name": "usage-page"}, headers=bearer)
        assert created.status_code == 201, created.text
        return created.json()["id"], created.json()["key"]


@pytest.fixture(scope="module")
def seeded(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Usage of the default tenant over the last two weeks, written as the server writes it
    (UTC text in SQLite), plus one real gateway call; answers Alice's key name."""
    if live_server.admin is None or live_server.member is None:
        pytest.skip("needs the local test server (its database is seeded directly)")
    key_id, key = _api_key(live_server, live_server.email, live_server.password)
    with httpx.Client(base_url=live_server.base_url, timeout=10) as client:
        call = client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert call.status_code == 200, call.text
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    with sqlite3.connect(_data_dir(tmp_path_factory) / "chatplane.db") as db:
        users = dict(db.execute("SELECT email, id FROM users").fetchall())
        tenant = db.execute("SELECT tenant_id FROM users WHERE email = ?", (live_server.email,))
        tenant_id = tenant.fetchone()[0]
        rows = []
        for days_ago in range(DAYS):
            when = now - timedelta(days=days_ago)
            rows.append(
                (
                    when,
                    users[live_server.email],
                    key_id,
                    "gateway",
                    SEED_MODEL,
                    1200 * (DAYS - days_ago),
                    300,
                    cost_on(days_ago),
                )
            )
            if days_ago % 2 == 0:
                rows.append(
                    (when, users[live_server.admin.email], None, "chat", "mock", 800, 150, 0.5)
                )
        rows.append((now, users[live_server.member.email], None, "chat", SEED_MODEL, 500, 100, 1.0))
        db.executemany(
            "INSERT INTO usage_records (id, created_at, tenant_id, user_id, api_key_id, turn_id,"
            " source, model, prompt_tokens, completion_tokens, cost_usd)"
            " VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            [
                (uuid.uuid4().hex, when.strftime("%Y-%m-%d %H:%M:%S.%f"), tenant_id, *rest)
                for when, *rest in rows
            ],
        )
    db.close()
    return "usage-page"


async def test_usage_page_shows_the_chart_totals_and_a_csv_link(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    live_server: LiveServer,
    seeded: str,
    artifacts: Path,
) -> None:
    admin = need(live_server.admin)
    for (page, log), size in ((desktop, "desktop"), (mobile, "mobile")):
        await sign_in(page, admin)
        await open_admin(page, "#/usage")
        await expect(page.locator("#page-title")).to_have_text("Usage")
        await expect(page.locator(".adm-loading")).to_have_count(0)
        # 30 days of bars, the 14 seeded ones (at least) drawn.
        chart = page.locator("#usage-chart svg")
        await expect(chart.locator("rect.usg-bar")).to_have_count(30)
        await expect(chart.locator("rect.usg-bar:not(.usg-bar-empty)")).to_have_count(DAYS)
        await expect(page.locator("#usage-total-cost")).to_contain_text(f"${SEEDED_COST:,.2f}")
        rows = page.locator(".usage-row")
        await expect(rows.filter(has_text=SEED_MODEL)).to_have_count(1)
        await expect(rows.first).to_contain_text(SEED_MODEL)  # the largest cost first
        await shot(page, artifacts, f"usage-01-page-{size}", full_page=True)

        await page.locator("#usage-breakdown").scroll_into_view_if_needed()
        await shot(page, artifacts, f"usage-01-totals-{size}")
        await page.locator("#usage-group").select_option("user")
        await expect(rows.filter(has_text=live_server.email)).to_have_count(1)
        await expect(rows.filter(has_text=admin.email)).to_have_count(1)
        await page.locator("#usage-group").select_option("key")
        await expect(rows.filter(has_text=seeded)).to_have_count(1)
        await page.locator('.usg-toggle-btn[data-metric="tokens"]').click()
        await expect(page.locator('.usg-toggle-btn[data-metric="tokens"]')).to_have_attribute(
            "aria-pressed", "true"
        )
        await expect(chart.locator("rect.usg-bar:not(.usg-bar-empty)")).to_have_count(DAYS)

        # A shorter range redraws fewer bars.
        await page.locator("#usage-range").select_option("7")
        await expect(page.locator("#usage-chart svg rect.usg-bar")).to_have_count(7)
        await shot(page, artifacts, f"usage-02-tokens-7-days-{size}", full_page=True)
        await assert_clean(page, log)

    page, _ = desktop
    link = page.locator("#usage-csv")
    href = await link.get_attribute("href")
    assert href is not None
    assert href.startswith("/api/admin/usage.csv?from=")
    async with page.expect_download() as download_info:
        await link.click()
    download = await download_info.value
    assert download.suggested_filename.startswith("usage-")
    assert download.suggested_filename.endswith(".csv")
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    table = list(csv.DictReader(io.StringIO(text)))
    seeded_rows = [row for row in table if row["model"] == SEED_MODEL]
    assert {row["user_email"] for row in seeded_rows} == {
        live_server.email,
        need(live_server.member).email,
    }
    assert any(row["key_name"] == seeded for row in seeded_rows)
    assert all(len(row["cost_usd"].split(".")[1]) == 8 for row in table)


async def test_my_account_shows_my_usage_this_month(
    mobile: tuple[Page, PageLog], live_server: LiveServer, seeded: str, artifacts: Path
) -> None:
    page, log = mobile
    await sign_in(page, need(live_server.member))
    await open_admin(page, "#/account")
    usage = page.locator("#my-usage")
    await expect(usage.locator("#my-usage-total-cost")).to_contain_text("$1.00")
    await expect(usage.locator("#my-usage-total-requests")).to_contain_text("1")
    await expect(usage.locator(".usg-models li")).to_contain_text(SEED_MODEL)
    await usage.scroll_into_view_if_needed()
    await shot(page, artifacts, "usage-03-my-usage-mobile")
    await assert_clean(page, log)


async def test_superadmin_edits_and_reverts_a_price(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    live_server: LiveServer,
    artifacts: Path,
) -> None:
    page, log = desktop
    await sign_in(page, need(live_server.superadmin))
    await open_admin(page, "#/prices")
    await expect(page.locator("#page-title")).to_have_text("Prices")
    row = page.locator('.price-row[data-model="mock"]')
    await expect(row).to_contain_text("Unpriced")

    await row.locator(".edit-price").click()
    form = dialog(page)
    await form.get_by_label("Input (prompt) tokens").fill("2.5")
    await form.get_by_label("Output (completion) tokens").fill("10")
    await shot(page, artifacts, "prices-01-edit-desktop")
    await form.get_by_role("button", name="Save price").click()
    await expect(form).to_have_count(0)
    await expect(row).to_have_attribute("data-source", "admin")
    await expect(row.locator(".price-input")).to_have_text("$2.50")
    await expect(row.locator(".price-output")).to_have_text("$10.00")
    await expect(row).to_contain_text("Set here")
    prices = await (await page.request.get("/api/admin/prices")).json()
    mock = next(p for p in prices if p["model"] == "mock")
    assert (mock["input_usd_per_mtok"], mock["output_usd_per_mtok"], mock["source"]) == (
        2.5,
        10,
        "admin",
    )
    await shot(page, artifacts, "prices-02-list-desktop")

    phone, phone_log = mobile
    await sign_in(phone, need(live_server.superadmin))
    await open_admin(phone, "#/prices")
    await expect(phone.locator('.price-row[data-model="mock"]')).to_contain_text("Set here")
    await shot(phone, artifacts, "prices-03-list-mobile", full_page=True)
    await assert_clean(phone, phone_log)

    await row.locator(".revert-price").click()
    await confirm(page, "Revert")
    await expect(row).to_have_attribute("data-source", "default")
    await expect(row.locator(".price-input")).to_have_text("$0.00")
    await expect(row.locator(".revert-price")).to_have_count(0)
    await assert_clean(page, log)
