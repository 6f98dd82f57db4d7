"""The limits page of /admin in headless Chromium against a live `chatplane serve`: the rate
limits and where they come from, a key's own limits, budgets, and an operator's overrides."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from .conftest import LiveServer, PageLog
from .test_admin_pages import (
    assert_clean,
    confirm,
    csrf_headers,
    dialog,
    info_toast,
    need,
    open_admin,
    session_of,
    shot,
    sign_in,
    unique,
)

pytestmark = pytest.mark.browser

# What Chromium logs for an API answer the test provokes on purpose (a budget made twice).
RESOURCE_409 = "the server responded with a status of 409"


async def section_shot(page: Page, artifacts: Path, name: str, section: str) -> None:
    """A screenshot with `section` scrolled into view and no toast over it (the page scrolls
    inside its own pane, so a full-page screenshot shows only the top)."""
    for close in await page.locator("#toasts .toast-close").all():
        await close.click()
    await expect(page.locator("#toasts .toast")).to_have_count(0)
    await page.locator(section).scroll_into_view_if_needed()
    await shot(page, artifacts, name)


async def test_tenant_admin_sets_key_limits_and_manages_a_budget(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    browser: Browser,
    live_server: LiveServer,
    artifacts: Path,
) -> None:
    page, log = desktop
    member = need(live_server.member)
    key_name = unique("limited")
    async with session_of(browser, live_server, member) as member_session:
        created = await member_session.request.post(
            "/api/keys", data={"name": key_name}, headers=await csrf_headers(member_session)
        )
        assert created.status == 201, await created.text()
        key_id = (await created.json())["id"]

    await sign_in(page, need(live_server.admin))
    await open_admin(page, "#/limits")
    await expect(page.locator("#page-title")).to_have_text("Limits")
    await expect(page.locator('.adm-nav-link[data-page="limits"]')).to_have_class(
        re.compile(r"\bactive\b")
    )

    # Read-only for a tenant admin: the server's defaults, and who sets them.
    await expect(page.locator("#edit-limits")).to_have_count(0)
    await expect(page.locator("#limits-tenant")).to_have_count(0)
    await expect(page.locator("#limits-note")).to_contain_text("operator sets these")
    tenant_row = page.locator('.limit-row[data-scope="tenant"]')
    await expect(tenant_row).to_contain_text("Unlimited")
    user_row = page.locator('.limit-row[data-scope="user"]')
    await expect(user_row.locator("td").nth(1)).to_contain_text("600")
    await expect(user_row.locator("td").nth(1)).to_contain_text("Server default")
    await expect(user_row.locator("td").nth(3)).to_contain_text("32")  # concurrent

    # A key's own requests/minute; the other two stay inherited.
    key_row = page.locator(f'.key-limit-row[data-name="{key_name}"]')
    await expect(key_row).to_contain_text(member.email)
    await expect(key_row.locator(".key-rpm")).to_contain_text("Inherited")
    await key_row.locator(".edit-key-limits").click()
    form = dialog(page)
    await form.get_by_label("Requests / min").fill("42")
    await shot(page, artifacts, "limits-02-key-limits-desktop")
    await form.get_by_role("button", name="Save limits").click()
    await expect(form).to_have_count(0)
    await expect(await info_toast(page)).to_contain_text(key_name)
    await expect(key_row.locator(".key-rpm")).to_contain_text("42")
    await expect(key_row.locator(".key-rpm")).to_contain_text("Own limit")
    await expect(key_row.locator(".key-tpm")).to_contain_text("Inherited")
    keys = await (await page.request.get("/api/admin/keys")).json()
    stored = next(k for k in keys if k["id"] == key_id)
    assert (stored["rpm"], stored["tpm"], stored["max_concurrent"]) == (42, None, None)

    # A member's daily budget: listed with nothing spent.
    await page.click("#create-budget")
    form = dialog(page)
    await form.get_by_label("For").select_option("user")
    await expect(form.locator("#budget-subject option", has_text=member.email)).to_have_count(1)
    await form.locator("#budget-subject").select_option(label=member.email)
    await form.get_by_label("Period").select_option("day")
    await form.get_by_label("Limit in USD").fill("5")
    await shot(page, artifacts, "limits-03-new-budget-desktop")
    await form.get_by_role("button", name="Create budget").click()
    await expect(form).to_have_count(0)
    row = page.locator('.budget-row[data-scope="user"][data-period="day"]', has_text=member.email)
    await expect(row).to_have_count(1)
    await expect(row.locator(".budget-limit")).to_have_text("$5.00")
    await expect(row.locator(".budget-spent")).to_have_text("$0.00")
    await expect(row.locator(".lim-meter")).to_have_attribute("data-level", "ok")

    # The same budget twice: the problem's detail shows in the dialog.
    await page.click("#create-budget")
    form = dialog(page)
    await form.get_by_label("For").select_option("user")
    await expect(form.locator("#budget-subject option", has_text=member.email)).to_have_count(1)
    await form.locator("#budget-subject").select_option(label=member.email)
    await form.get_by_label("Period").select_option("day")
    await form.get_by_label("Limit in USD").fill("7")
    await form.get_by_role("button", name="Create budget").click()
    await expect(form.locator(".form-error")).to_contain_text("has a day budget already")
    await shot(page, artifacts, "limits-04-budget-error-desktop")
    await form.get_by_role("button", name="Cancel").click()
    await expect(form).to_have_count(0)

    # A key budget of $0 blocks the key: the meter is full (red).
    await page.click("#create-budget")
    form = dialog(page)
    await form.get_by_label("For").select_option("key")
    await form.locator("#budget-subject").select_option(key_id)
    await form.get_by_label("Period").select_option("lifetime")
    await form.get_by_label("Limit in USD").fill("0")
    await form.get_by_role("button", name="Create budget").click()
    await expect(form).to_have_count(0)
    key_budget = page.locator(f'.budget-row[data-subject="{key_id}"]')
    await expect(key_budget.locator(".lim-meter")).to_have_attribute("data-level", "full")
    await section_shot(page, artifacts, "limits-01-page-desktop", "#page-title")
    await section_shot(page, artifacts, "limits-01-budgets-desktop", "#budgets-card")

    phone, phone_log = mobile
    await sign_in(phone, need(live_server.admin))
    await open_admin(phone, "#/limits")
    await expect(phone.locator(".budget-row", has_text=member.email)).to_have_count(1)
    await expect(phone.locator(".adm-loading")).to_have_count(0)
    await shot(phone, artifacts, "limits-05-page-mobile")
    await section_shot(phone, artifacts, "limits-05-keys-mobile", "#key-limits-card")
    await section_shot(phone, artifacts, "limits-05-budgets-mobile", ".budget-row >> nth=-1")
    await phone.locator(f'.key-limit-row[data-name="{key_name}"] .edit-key-limits').click()
    await expect(dialog(phone)).to_be_visible()
    await shot(phone, artifacts, "limits-06-key-limits-mobile")
    await dialog(phone).get_by_role("button", name="Cancel").click()
    await assert_clean(phone, phone_log)

    # Edit the member's budget, then delete both.
    await row.locator(".edit-budget").click()
    form = dialog(page)
    await form.get_by_label("Limit in USD").fill("12.5")
    await form.get_by_role("button", name="Save budget").click()
    await expect(form).to_have_count(0)
    await expect(row.locator(".budget-limit")).to_have_text("$12.50")
    budgets = await (await page.request.get("/api/admin/budgets")).json()
    assert [(b["scope"], b["period"], b["limit_usd"]) for b in budgets if b["scope"] == "user"] == [
        ("user", "day", 12.5)
    ]

    for budget_row in (row, key_budget):
        await budget_row.locator(".delete-budget").click()
        await confirm(page, "Delete budget")
        await expect(budget_row).to_have_count(0)
    assert await (await page.request.get("/api/admin/budgets")).json() == []
    await assert_clean(page, log, allowed=[RESOURCE_409])


async def test_superadmin_edits_the_limits_of_another_tenant(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    live_server: LiveServer,
    artifacts: Path,
) -> None:
    page, log = desktop
    operator = need(live_server.superadmin)
    await sign_in(page, operator)
    slug = f"limited-{uuid.uuid4().hex[:6]}"
    created = await page.request.post(
        "/api/admin/tenants",
        data={"name": f"Limited {slug[-6:]}", "slug": slug},
        headers=await csrf_headers(page.context),
    )
    assert created.status == 201, await created.text()
    tenant_id = (await created.json())["id"]

    await open_admin(page, "#/limits")
    picker = page.locator("#limits-tenant")
    await expect(picker.locator(f'option[value="{tenant_id}"]')).to_have_count(1)
    await picker.select_option(tenant_id)
    await expect(page.locator("#key-limits-card")).to_contain_text("own organisation only")
    await expect(page.locator("#edit-limits")).to_be_enabled()
    await page.click("#edit-limits")
    form = dialog(page)
    await expect(form).to_contain_text(slug)
    await form.get_by_label("Each member: Requests / min").fill("120")
    await form.get_by_label("The organisation: Concurrent").fill("0")
    await shot(page, artifacts, "limits-07-edit-overrides-desktop")
    await form.get_by_role("button", name="Save limits").click()
    await expect(form).to_have_count(0)
    user_rpm = page.locator('.limit-row[data-scope="user"] td').nth(1)
    await expect(user_rpm).to_contain_text("120")
    await expect(user_rpm).to_contain_text("Override · default 600")

    # A budget for the whole organisation: the only kind an operator sets for another tenant.
    await page.click("#create-budget")
    form = dialog(page)
    await expect(form.get_by_label("For").locator("option")).to_have_count(1)
    await form.get_by_label("Limit in USD").fill("250")
    await form.get_by_role("button", name="Create budget").click()
    await expect(form).to_have_count(0)
    await expect(page.locator('.budget-row[data-scope="tenant"]')).to_contain_text("$250.00")
    await section_shot(page, artifacts, "limits-08-other-tenant-desktop", "#page-title")
    await section_shot(page, artifacts, "limits-08-other-tenant-budgets-desktop", "#budgets-card")

    other = await (await page.request.get(f"/api/admin/limits?tenant_id={tenant_id}")).json()
    assert other["overrides"]["user_rpm"] == 120
    assert other["overrides"]["max_concurrent"] == 0
    assert other["overrides"]["rpm"] is None
    own = await (await page.request.get("/api/admin/limits")).json()
    assert own["overrides"]["user_rpm"] is None  # the operator's own tenant is untouched
    assert await (await page.request.get("/api/admin/budgets")).json() == []
    await assert_clean(page, log)

    phone, phone_log = mobile
    await sign_in(phone, operator)
    await open_admin(phone, "#/limits")
    await phone.locator("#limits-tenant").select_option(tenant_id)
    await expect(phone.locator('.limit-row[data-scope="user"]')).to_contain_text("120")
    await expect(phone.locator(".adm-loading")).to_have_count(0)
    await shot(phone, artifacts, "limits-09-other-tenant-mobile")
    await phone.click("#edit-limits")
    await expect(dialog(phone)).to_be_visible()
    await shot(phone, artifacts, "limits-10-edit-overrides-mobile")
    await dialog(phone).get_by_role("button", name="Cancel").click()
    await assert_clean(phone, phone_log)
