"""The web chat app, driven in headless Chromium against a live `chatplane serve`."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from playwright.async_api import APIResponse, Locator, Page, Route, expect

from .conftest import LiveServer, PageLog

pytestmark = pytest.mark.browser

STREAM_TIMEOUT_MS = 20_000
HELLO = "hello streaming world, this answer arrives one word at a time"
CODE_MESSAGE = "Here is some code:\n\n```python\nprint('hi <there>')\n```\n\nAnd **bold** text."
# Long enough (200 words at 30 ms each) to stop or reload while the answer is being written.
LONG = " ".join(f"w{n:03d}" for n in range(1, 201))


# ------------------------------------------------------------------ helpers


async def log_in(page: Page, server: LiveServer) -> None:
    await page.goto("/")
    await page.fill("#login-email", server.email)
    await page.fill("#login-password", server.password)
    await page.click("#login-submit")
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#user-email")).to_have_text(server.email)


async def new_chat(page: Page) -> str:
    before = page.url
    await page.click("#new-chat")
    await page.wait_for_function("(before) => location.href !== before", arg=before)
    match = re.search(r"#/c/([^/?#]+)", page.url)
    assert match, page.url
    await expect(page.locator(f'.conv-item.active[data-id="{match.group(1)}"]')).to_be_visible()
    await expect(page.locator("#thread")).to_have_attribute("data-conversation-id", match.group(1))
    return match.group(1)


async def send(page: Page, text: str) -> Locator:
    """Type a message, press Enter, and return the locator of the answer it starts."""
    answers = page.locator("#thread .msg-assistant")
    count = await answers.count()
    await page.fill("#composer-input", text)
    await page.press("#composer-input", "Enter")
    await expect(answers).to_have_count(count + 1)
    return answers.nth(count)


def last_answer(page: Page) -> Locator:
    return page.locator("#thread .msg-assistant").last


async def record_answer_snapshots(page: Page) -> None:
    """Record every raw text the last assistant message shows, to prove it streamed."""
    await page.evaluate(
        """() => {
            window.__snapshots = [];
            const record = () => {
                const md = document.querySelector('#thread .msg-assistant:last-child .md');
                if (md) window.__snapshots.push(md.dataset.source || '');
            };
            new MutationObserver(record).observe(document.getElementById('thread'), {
                subtree: true, childList: true, attributes: true, attributeFilter: ['data-source'],
            });
        }"""
    )


async def wait_for_partial_answer(page: Page, min_chars: int) -> str:
    await page.wait_for_function(
        """(min) => {
            const msg = document.querySelector('#thread .msg-assistant:last-child');
            return msg && msg.dataset.status === 'streaming'
                && (msg.querySelector('.md').dataset.source || '').length >= min;
        }""",
        arg=min_chars,
        timeout=STREAM_TIMEOUT_MS,
    )
    return await last_answer(page).locator(".md").get_attribute("data-source") or ""


async def answer_source(page: Page) -> str:
    return await last_answer(page).locator(".md").get_attribute("data-source") or ""


async def shot(page: Page, artifacts: Path, name: str) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"))


async def assert_clean(page: Page, log: PageLog) -> None:
    """No uncaught exception and no CSP violation happened on the page."""
    assert log.page_errors == [], log.page_errors
    assert await page.evaluate("window.__csp") == []


async def csrf_headers(page: Page) -> dict[str, str]:
    """Headers for a state-changing API call made with the page's session cookies."""
    cookies = await page.context.cookies()
    token = next(c["value"] for c in cookies if c["name"] == "chatplane_csrf")
    return {"X-CSRF-Token": token}


async def all_conversation_ids(page: Page) -> list[str]:
    ids: list[str] = []
    cursor: str | None = None
    while True:
        query = "?limit=50" + (f"&cursor={cursor}" if cursor else "")
        answer = await page.request.get(f"/api/conversations{query}")
        assert answer.ok, await answer.text()
        body = await answer.json()
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            return ids


# ------------------------------------------------------------------ tests


async def test_login_shows_error_for_wrong_password_then_signs_in(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await page.goto("/")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#chat-view")).to_be_hidden()
    await shot(page, artifacts, "01-login-desktop")

    await page.fill("#login-email", live_server.email)
    await page.fill("#login-password", "not-the-password")
    await page.click("#login-submit")
    error = page.locator("#login-error")
    await expect(error).to_be_visible()
    await expect(error).to_have_text("Incorrect email or password.")
    await expect(page.locator("#chat-view")).to_be_hidden()
    await shot(page, artifacts, "02-login-wrong-password")

    await page.fill("#login-password", live_server.password)
    await page.click("#login-submit")
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#login-view")).to_be_hidden()
    await expect(page.locator("#model-select")).to_have_value("mock-echo")

    # The session is a cookie: a reload stays signed in; logging out ends it.
    await page.reload()
    await expect(page.locator("#chat-view")).to_be_visible()
    await page.click("#logout")
    await expect(page.locator("#login-form")).to_be_visible()
    await page.reload()
    await expect(page.locator("#login-form")).to_be_visible()
    await assert_clean(page, log)


async def test_page_loads_without_console_errors_or_csp_violations(
    desktop: tuple[Page, PageLog], live_server: LiveServer
) -> None:
    page, log = desktop
    response = await page.goto("/")
    assert response is not None
    assert response.status == 200
    await expect(page.locator("#login-form")).to_be_visible()
    await page.wait_for_load_state("networkidle")
    assert log.console_errors == []
    assert await page.evaluate("window.__csp") == []

    # Sign in through the API (cookies land in the browser context), then load the app.
    answer = await page.request.post(
        "/api/auth/login", data={"email": live_server.email, "password": live_server.password}
    )
    assert answer.status == 200, await answer.text()
    response = await page.goto("/")
    assert response is not None
    assert response.status == 200
    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#model-select option").first).to_be_attached()
    await expect(page.locator("#welcome")).to_be_visible()
    await page.wait_for_load_state("networkidle")

    assert log.console_errors == []
    assert log.page_errors == []
    assert await page.evaluate("window.__csp") == []

    # The policy is really in force: an injected inline script is refused and reported.
    ran = await page.evaluate(
        """() => new Promise((resolve) => {
            const s = document.createElement('script');
            s.textContent = 'window.__inlineRan = true';
            document.head.append(s);
            setTimeout(() => resolve(window.__inlineRan === true), 100);
        })"""
    )
    assert ran is False
    assert any("script-src" in v for v in await page.evaluate("window.__csp"))


async def test_answer_streams_token_by_token_and_renders_markdown(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    conversation_id = await new_chat(page)
    item = page.locator(f'.conv-item[data-id="{conversation_id}"]')
    await expect(item.locator(".conv-name")).to_have_text("New chat")
    await expect(page.locator("#conv-title")).to_have_text("New chat")

    await record_answer_snapshots(page)
    answer = await send(page, HELLO)
    await expect(page.locator("#thread .msg-user .bubble").last).to_have_text(HELLO)
    await expect(page.locator("#stop")).to_be_visible()
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == HELLO
    await expect(answer.locator(".md")).to_have_text(HELLO)
    await expect(page.locator("#send")).to_be_visible()
    await expect(page.locator("#stop")).to_be_hidden()

    snapshots: list[str] = await page.evaluate("window.__snapshots")
    partial = {s for s in snapshots if 0 < len(s) < len(HELLO)}
    assert len(partial) >= 2, f"the answer did not stream token by token: {snapshots}"
    assert all(HELLO.startswith(s) for s in snapshots), snapshots
    await shot(page, artifacts, "03-chat-streamed-desktop")

    # Shift+Enter makes a new line; Enter sends. The echo comes back as rendered Markdown.
    await page.click("#composer-input")
    await page.keyboard.type("Here is some code:")
    await page.keyboard.press("Shift+Enter")
    await expect(page.locator("#composer-input")).to_have_value("Here is some code:\n")
    answer = await send(page, CODE_MESSAGE)
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == CODE_MESSAGE
    code = answer.locator("pre > code")
    await expect(code).to_have_text("print('hi <there>')")
    await expect(code).to_have_class(re.compile(r"language-python"))
    await expect(answer.locator("strong")).to_have_text("bold")
    copy = answer.locator(".copy-btn")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await copy.click()
    await expect(copy).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == "print('hi <there>')"
    # The user's own message stays plain text.
    await expect(page.locator("#thread .msg-user pre")).to_have_count(0)
    await shot(page, artifacts, "04-markdown-code-desktop")

    # After a reload the stored conversation shows the same answers.
    await page.reload()
    await expect(page.locator("#thread .msg-assistant")).to_have_count(2)
    await expect(page.locator("#thread .msg-assistant pre > code")).to_have_text(
        "print('hi <there>')"
    )
    await assert_clean(page, log)


async def test_rename_and_delete_conversations(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    keep_id = await new_chat(page)
    doomed_id = await new_chat(page)
    # Newest first.
    ids = await page.locator("#conv-list .conv-item").evaluate_all(
        "(items) => items.map((i) => i.dataset.id)"
    )
    assert ids.index(doomed_id) < ids.index(keep_id)
    # Each opened chat is a history entry: Back returns to the previous one.
    await page.go_back()
    await expect(page.locator("#thread")).to_have_attribute("data-conversation-id", keep_id)
    await expect(page.locator(f'.conv-item.active[data-id="{keep_id}"]')).to_be_visible()

    keep = page.locator(f'.conv-item[data-id="{keep_id}"]')
    await keep.hover()
    await keep.locator(".conv-rename").click()
    field = keep.locator(".rename-input")
    await expect(field).to_be_focused()
    await field.fill("Quarterly plans")
    await shot(page, artifacts, "05-rename-inline")
    await field.press("Enter")
    await expect(keep.locator(".conv-name")).to_have_text("Quarterly plans")

    # Escape abandons an edit.
    await keep.hover()
    await keep.locator(".conv-rename").click()
    await keep.locator(".rename-input").fill("Something else")
    await keep.locator(".rename-input").press("Escape")
    await expect(keep.locator(".conv-name")).to_have_text("Quarterly plans")

    doomed = page.locator(f'.conv-item[data-id="{doomed_id}"]')
    await doomed.hover()
    await doomed.locator(".conv-delete").click()
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await shot(page, artifacts, "06-delete-confirm")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(doomed).to_be_visible()

    await doomed.hover()
    await doomed.locator(".conv-delete").click()
    await dialog.get_by_role("button", name="Delete").click()
    await expect(doomed).to_have_count(0)
    await expect(page.locator("#welcome")).to_be_visible()

    # Both changes are on the server.
    await page.reload()
    await expect(page.locator(f'.conv-item[data-id="{keep_id}"] .conv-name')).to_have_text(
        "Quarterly plans"
    )
    await expect(page.locator(f'.conv-item[data-id="{doomed_id}"]')).to_have_count(0)
    await assert_clean(page, log)


async def test_stop_cancels_the_answer_and_the_chat_stays_usable(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    await new_chat(page)
    await send(page, LONG)
    await wait_for_partial_answer(page, min_chars=20)
    await page.click("#stop")

    answer = last_answer(page)
    await expect(answer).to_have_attribute("data-status", "cancelled", timeout=STREAM_TIMEOUT_MS)
    stopped_text = await answer_source(page)
    assert LONG.startswith(stopped_text)
    assert len(stopped_text) < len(LONG)
    await expect(answer.locator(".msg-note")).to_have_text("Stopped")
    await expect(page.locator("#stop")).to_be_hidden()
    await expect(page.locator("#composer-input")).to_be_enabled()
    await shot(page, artifacts, "07-stopped")

    answer = await send(page, "still here")
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == "still here"
    await assert_clean(page, log)


async def test_reload_mid_answer_resumes_the_stream(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    await new_chat(page)
    await send(page, LONG)
    before_reload = await wait_for_partial_answer(page, min_chars=30)
    assert LONG.startswith(before_reload)

    await page.reload()
    # The conversation's active turn is replayed from its first event, then followed live.
    answer = last_answer(page)
    await expect(answer).to_have_attribute("data-status", "streaming")
    await shot(page, artifacts, "08-resumed-mid-answer")
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    resumed = await answer_source(page)
    assert resumed == LONG, "characters lost or repeated after the reload"
    await expect(page.locator("#thread .msg-assistant")).to_have_count(1)

    # The stored answer is the same, exactly once.
    await page.reload()
    await expect(page.locator("#thread .msg-assistant")).to_have_count(1)
    assert await answer_source(page) == LONG
    await assert_clean(page, log)


async def test_phone_layout(
    mobile: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = mobile
    await page.goto("/")
    await expect(page.locator("#login-form")).to_be_visible()
    await shot(page, artifacts, "09-login-mobile")
    await log_in(page, live_server)

    # The conversation list is a drawer behind the menu button.
    await expect(page.locator("#sidebar")).not_to_be_in_viewport()
    await page.click("#sidebar-open")
    await expect(page.locator("#sidebar")).to_be_in_viewport()
    await shot(page, artifacts, "10-drawer-mobile")
    await page.click("#sidebar-close")
    await expect(page.locator("#sidebar")).not_to_be_in_viewport()

    # Writing on the empty screen starts a new conversation.
    await expect(page.locator("#welcome")).to_be_visible()
    answer = await send(page, CODE_MESSAGE)
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    await expect(answer.locator("pre > code")).to_be_visible()
    answer = await send(page, HELLO)
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert re.search(r"#/c/[^/?#]+$", page.url), page.url
    await shot(page, artifacts, "11-chat-mobile")

    overflow = await page.evaluate(
        "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
    )
    assert overflow <= 0, "the page scrolls sideways at 375px"
    box = await page.locator("#composer-input").bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 375
    await assert_clean(page, log)


async def test_conversation_list_loads_more_pages(
    desktop: tuple[Page, PageLog], live_server: LiveServer
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    headers = await csrf_headers(page)
    for n in range(22):
        created = await page.request.post(
            "/api/conversations", data={"title": f"Batch {n:02d}"}, headers=headers
        )
        assert created.status == 201, await created.text()
    expected = await all_conversation_ids(page)
    assert len(expected) > 20

    await page.reload()
    items = page.locator("#conv-list .conv-item")
    await expect(items).to_have_count(20)
    await expect(items.first.locator(".conv-name")).to_have_text("Batch 21")
    load_more = page.locator("#load-more")
    while await load_more.is_visible():
        shown = await items.count()
        await load_more.click()
        await expect(items).not_to_have_count(shown)
    ids = await items.evaluate_all("(items) => items.map((i) => i.dataset.id)")
    assert ids == expected  # newest first, every conversation once
    await assert_clean(page, log)


async def test_api_errors_show_in_a_toast_and_keep_the_draft(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    conversation_id = await new_chat(page)
    # The conversation disappears behind the app's back (another tab, another device).
    gone = await page.request.delete(
        f"/api/conversations/{conversation_id}", headers=await csrf_headers(page)
    )
    assert gone.status == 204
    problem = await (await page.request.get(f"/api/conversations/{conversation_id}")).json()

    await page.fill("#composer-input", "are you there?")
    await page.press("#composer-input", "Enter")
    toast = page.locator("#toasts .toast").last
    await expect(toast).to_be_visible()
    await expect(toast.locator(".toast-text")).to_have_text(problem["detail"])
    await expect(page.locator("#composer-input")).to_have_value("are you there?")
    await expect(page.locator("#thread .msg-user")).to_have_count(0)
    await expect(page.locator(f'.conv-item[data-id="{conversation_id}"]')).to_have_count(0)
    await shot(page, artifacts, "12-error-toast")

    # The kept draft starts a new conversation.
    await page.press("#composer-input", "Enter")
    answer = page.locator("#thread .msg-assistant").last
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == "are you there?"
    await assert_clean(page, log)


async def test_sending_again_after_a_lost_answer_stores_the_message_once(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    """The message reached the server but its answer never reached the page (the connection
    dropped): the draft is kept, and sending it again reuses its Idempotency-Key, so the
    server answers with the stored turn instead of storing the message twice."""
    page, log = desktop
    await log_in(page, live_server)
    conversation_id = await new_chat(page)
    messages_url = f"**/api/conversations/{conversation_id}/messages"
    keys: list[str | None] = []
    page.on(
        "request",
        lambda request: (
            keys.append(request.headers.get("idempotency-key"))
            if request.method == "POST" and request.url.endswith("/messages")
            else None
        ),
    )

    async def lose_the_answer(route: Route) -> None:
        stored = await route.fetch()  # the server stores the message and answers 202 ...
        assert stored.status == 202
        await route.abort("connectionreset")  # ... and the page never hears it

    await page.route(messages_url, lose_the_answer, times=1)
    await page.fill("#composer-input", "only once, please")
    await page.press("#composer-input", "Enter")
    await expect(page.locator("#toasts .toast").last).to_be_visible()
    await expect(page.locator("#composer-input")).to_have_value("only once, please")
    await shot(page, artifacts, "13-send-lost")

    await page.press("#composer-input", "Enter")
    answer = last_answer(page)
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert await answer_source(page) == "only once, please"
    assert len(keys) == 2
    assert keys[0]
    assert keys[0] == keys[1]
    detail = await (await page.request.get(f"/api/conversations/{conversation_id}")).json()
    assert [(m["role"], m["content"]) for m in detail["messages"]] == [
        ("user", "only once, please"),
        ("assistant", "only once, please"),
    ]
    # Another message gets a key of its own.
    answer = await send(page, "and a new one")
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    assert len(keys) == 3
    assert keys[2] not in (None, keys[0])
    await assert_clean(page, log)


async def test_expired_session_returns_to_login(
    desktop: tuple[Page, PageLog], live_server: LiveServer
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    await page.context.clear_cookies()
    await page.click("#new-chat")
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("#login-error")).to_have_text(
        "Your session has ended. Please sign in again."
    )
    await log_in(page, live_server)
    await assert_clean(page, log)


async def test_model_picker_chooses_the_model(
    desktop: tuple[Page, PageLog], live_server: LiveServer
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    # The picker fills from /api/models after sign-in: wait for it, then read every option.
    await expect(page.locator('#model-select option[value="mock"]')).to_be_attached()
    options = await page.locator("#model-select option").evaluate_all(
        "(options) => options.map((o) => o.value)"
    )
    assert {"mock-echo", "mock"} <= set(options)
    await new_chat(page)
    await page.select_option("#model-select", "mock")
    answer = await send(page, "say anything")
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    text = await answer_source(page)
    assert text
    assert text != "say anything"  # the filler model answered, not the echo
    await assert_clean(page, log)


async def test_a_chat_created_before_the_list_arrives_stays_in_the_list(
    desktop: tuple[Page, PageLog], live_server: LiveServer
) -> None:
    """The list asked for at sign-in answers after a new chat was created (a slow network,
    a busy server): the answer, older than the chat, must not drop it from the sidebar."""
    page, log = desktop
    held: list[tuple[Route, APIResponse]] = []
    asked = asyncio.Event()

    async def hold_the_first_list(route: Route) -> None:
        held.append((route, await route.fetch()))  # the list as it is now, before the chat
        asked.set()

    await page.route("**/api/conversations?limit=*", hold_the_first_list, times=1)
    await log_in(page, live_server)
    async with asyncio.timeout(10):
        await asked.wait()  # the sign-in asked for the list; it waits here
    await page.click("#new-chat")
    await page.wait_for_url(re.compile(r"#/c/"))
    created = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#thread")).to_have_attribute("data-conversation-id", created)
    route, stale = held[0]
    await route.fulfill(response=stale)  # the list from before the chat arrives only now
    await expect(page.locator(".conv-item").first).to_have_attribute("data-id", created)
    await expect(page.locator(f'.conv-item.active[data-id="{created}"]')).to_be_visible()
    await page.wait_for_timeout(200)  # nothing else replaces the list afterwards
    await expect(page.locator(f'.conv-item.active[data-id="{created}"]')).to_be_visible()
    await assert_clean(page, log)
