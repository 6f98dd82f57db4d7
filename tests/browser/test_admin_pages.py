"""The admin pages (/admin) and "My account", driven in headless Chromium against a live
`chatplane serve`: what an owner, an admin, a member and a superadmin see and can do."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

from .conftest import Account, LiveServer, PageLog

pytestmark = pytest.mark.browser

PASSWORD = "a-long-enough-password-1"
# What Chromium logs for an API answer the test asked for on purpose (e.g. a wrong password).
RESOURCE_401 = "the server responded with a status of 401"


# ------------------------------------------------------------------ helpers


def need(account: Account | None) -> Account:
    if account is None:
        pytest.skip("needs the extra accounts that the local test server creates")
    return account


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def sign_in(page: Page, account: Account) -> None:
    """Sign in through the API: the session cookies land in the page's browser context."""
    answer = await page.request.post(
        "/api/auth/login", data={"email": account.email, "password": account.password}
    )
    assert answer.status == 200, await answer.text()


async def open_admin(page: Page, route: str = "") -> None:
    await page.goto(f"/admin{route}")
    await expect(page.locator("#admin-view")).to_be_visible()


async def csrf_headers(context: BrowserContext) -> dict[str, str]:
    cookies = await context.cookies()
    return {"X-CSRF-Token": next(c["value"] for c in cookies if c["name"] == "chatplane_csrf")}


@asynccontextmanager
async def session_of(
    browser: Browser, server: LiveServer, account: Account
) -> AsyncIterator[BrowserContext]:
    """Another browser context, signed in as `account` (for API calls as that user)."""
    context = await browser.new_context(base_url=server.base_url)
    try:
        answer = await context.request.post(
            "/api/auth/login", data={"email": account.email, "password": account.password}
        )
        assert answer.status == 200, await answer.text()
        yield context
    finally:
        await context.close()


async def create_user(admin: BrowserContext, email: str, role: str = "member") -> Account:
    answer = await admin.request.post(
        "/api/admin/users",
        data={"email": email, "password": PASSWORD, "role": role},
        headers=await csrf_headers(admin),
    )
    assert answer.status == 201, await answer.text()
    return Account(email, PASSWORD)


async def me_status(context: BrowserContext) -> int:
    return (await context.request.get("/api/auth/me")).status


def dialog(page: Page) -> Locator:
    return page.locator("dialog.adm-dialog[open]")


async def confirm(page: Page, label: str) -> None:
    confirm_dialog = page.locator("#confirm-dialog")
    await expect(confirm_dialog).to_be_visible()
    await expect(page.locator("#confirm-ok")).to_have_text(label)
    await page.click("#confirm-ok")
    await expect(confirm_dialog).to_be_hidden()


async def info_toast(page: Page) -> Locator:
    toast = page.locator("#toasts .toast-info").last
    await expect(toast).to_be_visible()
    return toast


async def shot(page: Page, artifacts: Path, name: str, *, full_page: bool = False) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=full_page)


async def assert_clean(page: Page, log: PageLog, *, allowed: Iterable[str] = ()) -> None:
    """No console error (but the `allowed` ones), no uncaught exception, no CSP violation."""
    allowed = tuple(allowed)
    errors = [e for e in log.console_errors if not any(a in e for a in allowed)]
    assert errors == [], errors
    assert log.page_errors == [], log.page_errors
    assert await page.evaluate("window.__csp") == []


# ------------------------------------------------------------------ tests


async def test_admin_creates_a_user_changes_its_role_and_disables_it(
    desktop: tuple[Page, PageLog], browser: Browser, live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    admin = need(live_server.admin)
    await sign_in(page, admin)

    # The chat app links to the admin pages for an admin.
    await page.goto("/")
    await expect(page.locator("#admin-link")).to_be_visible()
    await page.click("#admin-link")
    await expect(page.locator("#page-title")).to_have_text("Users")
    await expect(page.locator("#nav-platform")).to_be_hidden()  # not an operator
    await expect(page.locator(f'.user-row[data-email="{admin.email}"]')).to_contain_text("You")

    email = f"{unique('dave')}@example.com"
    await page.click("#create-user")
    form = dialog(page)
    await form.get_by_label("Email").fill(email)
    await form.get_by_label("Password").fill(PASSWORD)
    await shot(page, artifacts, "admin-02-create-user-desktop")
    await form.get_by_role("button", name="Create user").click()
    await expect(form).to_have_count(0)
    await expect(await info_toast(page)).to_contain_text(f"{email} was created")
    row = page.locator(f'.user-row[data-email="{email}"]')
    await expect(row).to_contain_text("Active")
    await expect(row.locator(".role-select")).to_have_value("member")

    # The search finds the user by part of the email.
    await page.fill("#user-search", email.split("@")[0])
    await expect(page.locator(".user-row")).to_have_count(1)
    await expect(page.locator("#user-count")).to_contain_text("1 matching")
    await shot(page, artifacts, "admin-03-user-search-desktop")

    dave = Account(email, PASSWORD)
    async with (
        session_of(browser, live_server, dave) as laptop,
        session_of(browser, live_server, dave) as phone,
    ):
        # Role change: the user's next request has the new role.
        await row.locator(".role-select").select_option("admin")
        await expect(await info_toast(page)).to_contain_text(f"{email} is now an admin")
        me = await (await laptop.request.get("/api/auth/me")).json()
        assert me["role"] == "admin"

        # Sessions: two devices; ending one signs out exactly that one.
        await row.locator(".user-sessions").click()
        sessions = page.locator("#sessions-dialog")
        await expect(sessions.locator(".adm-session")).to_have_count(2)
        await shot(page, artifacts, "admin-04-user-sessions-desktop")
        await sessions.locator(".end-session").first.click()
        await expect(sessions.locator(".adm-session")).to_have_count(1)
        assert sorted([await me_status(laptop), await me_status(phone)]) == [200, 401]
        await sessions.get_by_role("button", name="Close").click()
        await expect(sessions).to_have_count(0)

        # Disabling asks first, then ends every session of the user at once.
        await row.locator(".user-disable").click()
        await confirm(page, "Disable")
        await expect(row).to_contain_text("Disabled")
        assert await me_status(laptop) == 401
        assert await me_status(phone) == 401
        login = await laptop.request.post(
            "/api/auth/login", data={"email": email, "password": PASSWORD}
        )
        assert login.status in (401, 403)

        await row.locator(".user-enable").click()
        await expect(row).to_contain_text("Active")

    users = await (await page.request.get(f"/api/admin/users?email={email}")).json()
    assert [(u["role"], u["disabled"]) for u in users["items"]] == [("admin", False)]
    await assert_clean(page, log)


async def test_invitation_link_signs_the_invitee_in(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    live_server: LiveServer,
    artifacts: Path,
) -> None:
    page, log = desktop
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await sign_in(page, need(live_server.admin))
    await open_admin(page, "#/invitations")
    await expect(page.locator("#page-title")).to_have_text("Invitations")

    email = f"{unique('erin')}@example.com"
    await page.click("#create-invitation")
    form = dialog(page)
    await form.get_by_label("Email").fill(email)
    await form.get_by_label("Role").select_option("member")
    await form.get_by_role("button", name="Create invitation").click()
    link_box = form.locator(".adm-secret-value")
    await expect(link_box).to_be_visible()
    link = await link_box.input_value()
    assert re.fullmatch(re.escape(live_server.base_url) + r"/\?invite=[\w\-]+", link), link
    await form.get_by_role("button", name="Copy").click()
    await expect(form.locator(".adm-copy")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == link
    await shot(page, artifacts, "admin-06-invitation-link-desktop")
    await form.get_by_role("button", name="Done").click()
    row = page.locator(f'.invitation-row[data-email="{email}"]')
    await expect(row).to_be_visible()
    await shot(page, artifacts, "admin-07-invitations-desktop")

    # The invitee opens the link on a phone, chooses a password and lands in the chat.
    invitee, invitee_log = mobile
    await invitee.goto(link)
    await expect(invitee.locator(".login-title")).to_have_text("Accept invitation")
    await expect(invitee.locator("#login-email")).to_be_hidden()
    await invitee.fill("#login-password", "short")
    await invitee.click("#login-submit")
    await expect(invitee.locator("#login-error")).to_contain_text("at least 8 characters")
    await shot(invitee, artifacts, "admin-08-accept-invitation-mobile")
    await invitee.fill("#login-password", PASSWORD)
    await invitee.click("#login-submit")
    await expect(invitee.locator("#chat-view")).to_be_visible()
    await expect(invitee.locator("#user-email")).to_have_text(email)
    await expect(invitee.locator("#admin-link")).to_be_hidden()  # a member
    assert "invite=" not in invitee.url
    await assert_clean(invitee, invitee_log)

    # Accepted: no longer pending; the link does not work twice.
    await page.reload()
    await expect(page.locator("#page-title")).to_have_text("Invitations")
    await expect(page.locator(".adm-card-body .spinner")).to_have_count(0)
    await expect(row).to_have_count(0)
    token = link.split("invite=", 1)[1]
    again = await page.request.post(
        "/api/auth/invitations/accept", data={"token": token, "password": PASSWORD}
    )
    assert again.status >= 400

    # Revoking a pending invitation asks first and kills its link.
    other = f"{unique('frank')}@example.com"
    created = await page.request.post(
        "/api/admin/invitations", data={"email": other}, headers=await csrf_headers(page.context)
    )
    assert created.status == 201, await created.text()
    other_token = (await created.json())["token"]
    await page.reload()
    other_row = page.locator(f'.invitation-row[data-email="{other}"]')
    await other_row.locator(".revoke-invitation").click()
    await confirm(page, "Revoke")
    await expect(other_row).to_have_count(0)
    revoked = await page.request.post(
        "/api/auth/invitations/accept", data={"token": other_token, "password": PASSWORD}
    )
    assert revoked.status >= 400
    await assert_clean(page, log)


async def test_admin_revokes_a_key_of_the_tenant(
    desktop: tuple[Page, PageLog], browser: Browser, live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    member = need(live_server.member)
    name = unique("ci-runner")
    async with session_of(browser, live_server, member) as member_session:
        created = await member_session.request.post(
            "/api/keys", data={"name": name}, headers=await csrf_headers(member_session)
        )
        assert created.status == 201, await created.text()
        bearer = {"Authorization": f"Bearer {(await created.json())['key']}"}
    assert (await page.request.get("/v1/models", headers=bearer)).status == 200

    await sign_in(page, need(live_server.admin))
    await open_admin(page, "#/keys")
    row = page.locator(f'.key-row[data-name="{name}"]')
    await expect(row).to_contain_text(member.email)
    await expect(row).to_contain_text("Active")
    await shot(page, artifacts, "admin-09-keys-desktop")
    await row.locator(".revoke-key").click()
    await confirm(page, "Revoke key")
    await expect(row).to_contain_text("Revoked")
    await expect(row.locator(".revoke-key")).to_have_count(0)
    assert (await page.request.get("/v1/models", headers=bearer)).status == 401
    await assert_clean(page, log)


async def test_members_see_an_admins_only_message(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    live_server: LiveServer,
    artifacts: Path,
) -> None:
    page, log = desktop
    member = need(live_server.member)

    # Signed out: the admin pages send you to the login.
    await page.goto("/admin")
    await page.wait_for_url(f"{live_server.base_url}/")
    await expect(page.locator("#login-form")).to_be_visible()

    await sign_in(page, member)
    await page.goto("/")
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#admin-link")).to_be_hidden()
    await expect(page.locator("#account-link")).to_be_visible()

    await open_admin(page)
    notice = page.locator("#admins-only")
    await expect(notice).to_be_visible()
    await expect(notice.locator("h1")).to_have_text("Admins only")
    await expect(page.locator("#nav-org")).to_be_hidden()
    await expect(page.locator("#nav-platform")).to_be_hidden()
    await shot(page, artifacts, "admin-10-admins-only-desktop")
    await open_admin(page, "#/users")  # a direct link does not get around it
    await expect(notice).to_be_visible()
    assert (await page.request.get("/api/admin/users")).status == 403

    await notice.get_by_role("link", name="My account").click()
    await expect(page.locator("#page-title")).to_have_text("My account")
    await expect(page.locator("#create-key")).to_be_visible()
    await assert_clean(page, log)

    phone, phone_log = mobile
    await sign_in(phone, member)
    await open_admin(phone)
    await expect(phone.locator("#admins-only")).to_be_visible()
    await shot(phone, artifacts, "admin-11-admins-only-mobile")
    await assert_clean(phone, phone_log)


async def test_my_account_keys_password_and_sessions(
    desktop: tuple[Page, PageLog], browser: Browser, live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    async with session_of(browser, live_server, need(live_server.admin)) as admin:
        user = await create_user(admin, f"{unique('gina')}@example.com")
    await sign_in(page, user)
    await page.goto("/")
    await page.click("#account-link")
    await expect(page.locator("#page-title")).to_have_text("My account")
    await expect(page.locator(".adm-session")).to_have_count(1)
    await expect(page.locator(".adm-session")).to_contain_text("This device")

    # A new key is shown once, works, and stops working when revoked.
    name = unique("notebook")
    await page.click("#create-key")
    form = dialog(page)
    await form.get_by_label("Name").fill(name)
    await expect(form.get_by_label("Admin")).to_have_count(0)  # members get chat keys only
    await form.get_by_role("button", name="Create key").click()
    key = await form.locator(".adm-secret-value").input_value()
    assert key
    await form.get_by_role("button", name="Copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == key
    await shot(page, artifacts, "admin-12-new-key-desktop")
    await form.get_by_role("button", name="Done").click()
    bearer = {"Authorization": f"Bearer {key}"}
    assert (await page.request.get("/v1/models", headers=bearer)).status == 200
    row = page.locator(f'.key-row[data-name="{name}"]')
    await expect(row).to_contain_text("Active")
    await row.locator(".revoke-key").click()
    await confirm(page, "Revoke key")
    await expect(row).to_contain_text("Revoked")
    assert (await page.request.get("/v1/models", headers=bearer)).status == 401

    # Changing the password: a wrong current one is refused (and does not sign out).
    new_password = "an-even-longer-password-2"
    password_form = page.locator("#password-form")
    await password_form.get_by_label("Current password").fill("not-my-password")
    await password_form.locator('input[name="new_password"]').fill(new_password)
    await password_form.get_by_label("Repeat the new password").fill(new_password)
    await page.click("#change-password")
    error_toast = page.locator("#toasts .toast").last
    await expect(error_toast).to_contain_text("current password is wrong")
    await expect(page.locator("#page-title")).to_have_text("My account")
    await password_form.get_by_label("Current password").fill(user.password)
    await page.click("#change-password")
    await expect(await info_toast(page)).to_contain_text("Password changed")
    await expect(password_form.get_by_label("Current password")).to_have_value("")
    await shot(page, artifacts, "admin-13-account-desktop", full_page=True)
    async with session_of(browser, live_server, Account(user.email, new_password)) as fresh:
        assert await me_status(fresh) == 200
    old = await page.request.post(
        "/api/auth/login", data={"email": user.email, "password": user.password}
    )
    assert old.status == 401

    # Log out everywhere ends this session too and goes back to the login.
    await page.click("#logout-everywhere")
    await confirm(page, "Log out everywhere")
    await expect(page.locator("#login-form")).to_be_visible()
    assert await me_status(page.context) == 401
    await assert_clean(page, log, allowed=[RESOURCE_401])


async def test_superadmin_adds_a_tenant_and_a_model(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await sign_in(page, need(live_server.superadmin))
    await open_admin(page)
    await expect(page.locator("#nav-platform")).to_be_visible()
    await expect(page.locator("#user-role")).to_have_text("Superadmin")

    await page.click('.adm-nav-link[data-page="tenants"]')
    await expect(page.locator("#page-title")).to_have_text("Tenants")
    suffix = uuid.uuid4().hex[:6]
    slug = f"acme-{suffix}"
    await page.click("#create-tenant")
    form = dialog(page)
    await form.get_by_label("Name").fill(f"Acme {suffix}")
    await expect(form.get_by_label("Slug")).to_have_value(slug)  # made from the name
    await form.get_by_label("SSO domains").fill(f"{slug}.example, corp-{suffix}.example")
    await shot(page, artifacts, "admin-14-add-tenant-desktop")
    await form.get_by_role("button", name="Add tenant").click()
    await expect(form).to_have_count(0)
    row = page.locator(f'.tenant-row[data-slug="{slug}"]')
    await expect(row).to_contain_text(f"Acme {suffix}")
    await expect(row).to_contain_text(f"{slug}.example")
    await expect(row).to_contain_text("Active")

    await row.locator(".edit-tenant").click()
    form = dialog(page)
    await form.get_by_label("Name").fill(f"Acme {suffix} Inc")
    await form.get_by_role("button", name="Save").click()
    await expect(row).to_contain_text(f"Acme {suffix} Inc")
    await row.locator(".disable-tenant").click()
    await confirm(page, "Disable")
    await expect(row).to_contain_text("Disabled")
    tenants = await (await page.request.get("/api/admin/tenants")).json()
    stored = next(t for t in tenants if t["slug"] == slug)
    assert stored["name"] == f"Acme {suffix} Inc"
    assert stored["disabled"] is True
    assert stored["sso_domains"] == [f"{slug}.example", f"corp-{suffix}.example"]

    # Models: the key goes in and only its last four characters come back.
    await page.click('.adm-nav-link[data-page="models"]')
    await expect(page.locator("#page-title")).to_have_text("Models")
    model = f"test-gpt-{suffix}"
    await page.click("#create-model")
    form = dialog(page)
    await form.get_by_label("Name").fill(model)
    await form.get_by_label("Upstream model").fill("gpt-4o-mini")
    await form.get_by_label("Base URL").fill("http://127.0.0.1:9/v1")
    await form.get_by_label("API key").fill("sk-test-secret-9876")
    await form.get_by_label("Input, USD per 1M tokens").fill("0.15")
    await form.get_by_label("Output, USD per 1M tokens").fill("0.6")
    await shot(page, artifacts, "admin-15-add-model-desktop")
    await form.get_by_role("button", name="Add model").click()
    model_row = page.locator(f'.model-row[data-name="{model}"]')
    await expect(model_row.locator(".key-hint")).to_have_text("…9876")
    await expect(model_row).to_contain_text("$0.15 in · $0.6 out")
    await shot(page, artifacts, "admin-16-models-desktop")
    await model_row.locator(".delete-model").click()
    await confirm(page, "Delete model")
    await expect(model_row).to_have_count(0)
    await assert_clean(page, log)


async def test_audit_log_loads_older_events(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await sign_in(page, need(live_server.admin))
    headers = await csrf_headers(page.context)
    for n in range(30):  # 60 events: more than one page of 50
        created = await page.request.post(
            "/api/admin/invitations", data={"email": f"audit-{n}@example.com"}, headers=headers
        )
        assert created.status == 201, await created.text()
        invitation_id = (await created.json())["id"]
        revoked = await page.request.delete(
            f"/api/admin/invitations/{invitation_id}", headers=headers
        )
        assert revoked.status == 204

    await open_admin(page, "#/audit")
    rows = page.locator(".audit-row")
    await expect(rows).to_have_count(50)
    await expect(rows.first).to_have_attribute("data-action", "invitation.revoked")
    await expect(rows.first).to_contain_text("audit-29@example.com")
    await expect(rows.first).to_contain_text(need(live_server.admin).email)  # the actor
    await shot(page, artifacts, "admin-17-audit-desktop")
    await page.click(".audit-more")
    # A locator assertion, not wait_for_function: a string predicate is eval'd in the
    # page, which the page's CSP (no 'unsafe-eval') rightly refuses.
    await expect(rows.nth(50)).to_be_attached()
    ids = await rows.evaluate_all("(rows) => rows.map((r) => r.dataset.id)")
    assert len(ids) == len(set(ids))  # older events appended, none twice
    await assert_clean(page, log)


PAGES = [
    "users",
    "invitations",
    "keys",
    "usage",
    "limits",
    "audit",
    "tenants",
    "models",
    "prices",
    "account",
]


async def test_every_page_at_desktop_and_phone_width(
    desktop: tuple[Page, PageLog],
    mobile: tuple[Page, PageLog],
    live_server: LiveServer,
    artifacts: Path,
) -> None:
    operator = need(live_server.superadmin)
    for (page, log), size in ((desktop, "desktop"), (mobile, "mobile")):
        await sign_in(page, operator)
        for n, name in enumerate(PAGES, start=1):
            await open_admin(page, f"#/{name}")
            await expect(page.locator(f'.adm-nav-link[data-page="{name}"]')).to_have_class(
                re.compile(r"\bactive\b")
            )
            await expect(page.locator(".adm-head h1")).to_be_visible()
            await expect(page.locator(".adm-loading")).to_have_count(0)
            await shot(page, artifacts, f"admin-page-{n:02d}-{name}-{size}")
        if size == "desktop":
            await page.emulate_media(color_scheme="dark")
            for name in ("users", "account"):
                await open_admin(page, f"#/{name}")
                await page.reload()  # restyled from scratch, as a dark-mode browser shows it
                await expect(page.locator(".adm-loading")).to_have_count(0)
                await shot(page, artifacts, f"admin-page-dark-{name}-desktop")
        if size == "mobile":
            await open_admin(page, "#/users")
            await page.click("#create-user")
            await expect(dialog(page)).to_be_visible()
            await shot(page, artifacts, "admin-page-09-create-user-mobile")
            await dialog(page).get_by_role("button", name="Cancel").click()
            await expect(dialog(page)).to_have_count(0)
            await page.click("#sidebar-open")
            await expect(page.locator("#sidebar")).to_be_in_viewport()
            await shot(page, artifacts, "admin-page-08-menu-mobile")
        await assert_clean(page, log)
