"""Knowledge bases in the web app, driven in headless Chromium against a live `chatplane
serve`: the knowledge pages (create, upload with progress, indexing status, retrieval test,
delete), attaching knowledge bases to a chat, and the numbered sources under an answer."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, expect

from .conftest import LiveServer, PageLog
from .test_web_chat import STREAM_TIMEOUT_MS, assert_clean, csrf_headers, log_in, shot

pytestmark = pytest.mark.browser

INDEX_TIMEOUT_MS = 30_000
HANDBOOK_MD = """# Returns

Customers may return any product within 30 days of delivery. The refund goes back to the
card that paid for the order.

## Damaged goods

A damaged parcel is replaced free of charge when the customer sends a photo of the damage.
"""
SHIPPING_TXT = (
    "Orders ship from the Rotterdam warehouse every weekday before noon. "
    "Parcels to Germany arrive within two working days.\n"
)
# The first bytes of a PNG file: a type the knowledge base does not take.
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)
SENTENCES = [
    "Customers may return any product within 30 days of delivery.",
    "A damaged parcel is replaced free of charge when the customer sends a photo of the damage.",
    "Orders ship from the Rotterdam warehouse every weekday before noon.",
]


def unique(name: str) -> str:
    return f"{name} {uuid.uuid4().hex[:6]}"


def text_file(name: str, mime: str, text: str) -> dict[str, object]:
    return {"name": name, "mimeType": mime, "buffer": text.encode()}


def doc_row(page: Page, filename: str) -> Locator:
    return page.locator(f'#kb-documents .kb-doc[data-name="{filename}"]')


def upload_row(page: Page, filename: str) -> Locator:
    return page.locator(f'#kb-uploads .kb-upload[data-name="{filename}"]')


async def drop_files(page: Page, selector: str, files: list[tuple[str, str, str]]) -> None:
    """Drag files onto an element and drop them, as a file manager would."""
    transfer = await page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, type, text] of files) {
                transfer.items.add(new File([text], name, { type }));
            }
            return transfer;
        }""",
        [list(f) for f in files],
    )
    for event in ("dragenter", "dragover", "drop"):
        await page.dispatch_event(selector, event, {"dataTransfer": transfer})


async def create_kb_in_ui(page: Page, name: str, description: str = "") -> str:
    """Create a knowledge base with the dialog of the list page; answers its id."""
    await page.click("#kb-link")
    await expect(page).to_have_url(re.compile(r"#/kb$"))
    await expect(page.locator("#kb-view #page-title")).to_have_text("Knowledge")
    await page.click("#kb-new")
    dialog = page.get_by_role("dialog", name="New knowledge base")
    await expect(dialog).to_be_visible()
    await dialog.get_by_label("Name").fill(name)
    if description:
        await dialog.get_by_label("Description").fill(description)
    await dialog.get_by_role("button", name="Create").click()
    await expect(dialog).to_have_count(0)
    await expect(page).to_have_url(re.compile(r"#/kb/[^/]+$"))
    await expect(page.locator("#kb-view #page-title")).to_have_text(name)
    match = re.search(r"#/kb/([^/?#]+)$", page.url)
    assert match, page.url
    return match.group(1)


async def upload_problem(page: Page, kb_id: str, name: str, data: bytes) -> dict[str, object]:
    """What the API answers to an upload, asked directly (to compare with what the UI shows)."""
    answer = await page.request.post(
        f"/api/kb/{kb_id}/documents",
        multipart={"file": {"name": name, "mimeType": "application/octet-stream", "buffer": data}},
        headers=await csrf_headers(page),
    )
    assert answer.status == 415, await answer.text()
    problem: dict[str, object] = await answer.json()
    return problem


async def conversation(page: Page, conversation_id: str) -> dict[str, object]:
    answer = await page.request.get(f"/api/conversations/{conversation_id}")
    assert answer.ok, await answer.text()
    body: dict[str, object] = await answer.json()
    return body


async def ask(page: Page, text: str) -> Locator:
    """Send a message from the composer and answer the locator of the reply it starts."""
    answers = page.locator("#thread .msg-assistant")
    count = await answers.count()
    await page.fill("#composer-input", text)
    await page.press("#composer-input", "Enter")
    await expect(answers).to_have_count(count + 1)
    answer = answers.nth(count)
    await expect(answer).to_have_attribute("data-status", "completed", timeout=STREAM_TIMEOUT_MS)
    return answer


async def choose_kb(page: Page, kb_id: str, conversation_id: str | None = None) -> None:
    """Tick a knowledge base in the chat's picker, with the keyboard, and close it. With a
    chat open, wait until the choice is saved on it."""
    await page.click("#kb-picker-button")
    panel = page.locator("#kb-picker-panel")
    await expect(panel).to_be_visible()
    option = panel.locator(f'.kb-option[data-id="{kb_id}"] input')
    await expect(option).to_be_visible()
    await option.focus()
    if conversation_id:
        async with page.expect_response(
            lambda r: (
                r.request.method == "PATCH"
                and r.url.endswith(f"/api/conversations/{conversation_id}")
            )
        ) as saved:
            await page.keyboard.press("Space")
        assert (await saved.value).ok
    else:
        await page.keyboard.press("Space")
    await expect(option).to_be_checked()
    await page.keyboard.press("Escape")
    await expect(panel).to_be_hidden()
    await expect(page.locator("#kb-picker-button")).to_be_focused()
    await expect(page.locator("#kb-picker-count")).to_have_text("1")


# ------------------------------------------------------------------ tests


async def test_knowledge_base_upload_search_and_cited_answer(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    name = unique("Support handbook")
    kb_id = await create_kb_in_ui(page, name, "Returns, damage and shipping")
    await expect(page.locator("#kb-docs-empty")).to_be_visible()

    # Two files dropped at once: each gets its own progress row, then its indexing status.
    await drop_files(
        page,
        "#kb-drop",
        [
            ("handbook.md", "text/markdown", HANDBOOK_MD),
            ("shipping.txt", "text/plain", SHIPPING_TXT),
        ],
    )
    for filename in ("handbook.md", "shipping.txt"):
        await expect(upload_row(page, filename)).to_have_attribute(
            "data-status", "ready", timeout=INDEX_TIMEOUT_MS
        )
        row = doc_row(page, filename)
        await expect(row).to_have_attribute("data-status", "ready", timeout=INDEX_TIMEOUT_MS)
        await expect(row.locator(".kb-status")).to_have_text("Ready")
        await expect(row.locator(".kb-chunks")).to_have_text(re.compile(r"^[1-9]\d*$"))
    await expect(upload_row(page, "handbook.md")).to_contain_text("indexed")
    await expect(doc_row(page, "handbook.md").locator(".kb-file-type")).to_have_text("Markdown")
    await expect(doc_row(page, "shipping.txt").locator(".kb-size")).to_have_text(
        f"{len(SHIPPING_TXT.encode())} B"
    )
    download = doc_row(page, "handbook.md").locator(".kb-download")
    href = await download.get_attribute("href")
    assert href is not None
    content = await page.request.get(href)
    assert content.ok
    assert (await content.body()).decode() == HANDBOOK_MD

    # A type the knowledge base does not take: the API's reason shows in the upload row.
    problem = await upload_problem(page, kb_id, "pixel.png", PNG_BYTES)
    await page.set_input_files(
        "#kb-file", files=[{"name": "pixel.png", "mimeType": "image/png", "buffer": PNG_BYTES}]
    )
    refused = upload_row(page, "pixel.png")
    await expect(refused).to_have_attribute("data-status", "error")
    await expect(refused.locator(".kb-upload-error")).to_have_text(str(problem["detail"]))
    await expect(doc_row(page, "pixel.png")).to_have_count(0)
    await shot(page, artifacts, "kb-01-documents-desktop")

    # The retrieval test ranks the passage that answers the question first.
    await page.fill("#kb-search-input", "within how many days can customers return a product")
    await page.press("#kb-search-input", "Enter")
    first_hit = page.locator("#kb-results .kb-hit").first
    await expect(first_hit).to_be_visible()
    await expect(first_hit.locator(".kb-hit-file")).to_have_text("handbook.md")
    await expect(first_hit.locator(".kb-hit-text")).to_contain_text(SENTENCES[0])
    await expect(first_hit.locator(".kb-hit-score")).to_have_text(re.compile(r"^score -?\d"))
    await first_hit.scroll_into_view_if_needed()
    await shot(page, artifacts, "kb-02-search-desktop")

    # A new chat that searches the knowledge base, answered by the citing mock model.
    await page.click("#new-chat")
    await expect(page.locator("#chat-main")).to_be_visible()
    await expect(page.locator("#kb-view")).to_be_hidden()
    await expect(page).to_have_url(re.compile(r"#/c/[^/]+$"))
    conversation_id = page.url.rsplit("/", 1)[1]
    await expect(page.locator("#thread")).to_have_attribute("data-conversation-id", conversation_id)
    await choose_kb(page, kb_id, conversation_id)
    assert await conversation_knowledge(page, conversation_id) == [kb_id]
    await page.select_option("#model-select", "mock-cite")
    answer = await ask(page, "How long do customers have to return a product?")

    chips = answer.locator(".cites .cite-chip")
    await expect(chips.first).to_be_visible()
    count = await chips.count()
    assert 1 <= count <= 2
    await expect(answer.locator(".cites .cite-file").first).to_have_text(
        re.compile(r"^(handbook\.md|shipping\.txt)$")
    )
    # The [n] markers of the text open the same sources.
    await expect(answer.locator(".md .cite-ref")).to_have_count(count)
    quote = answer.locator(".cite-quote")
    await expect(quote).to_be_hidden()
    await chips.first.click()
    await expect(quote).to_be_visible()
    await expect(chips.first).to_have_attribute("aria-expanded", "true")
    quoted = (await quote.locator(".cite-text").text_content() or "").strip()
    assert quoted in SENTENCES, quoted
    await shot(page, artifacts, "kb-03-citations-desktop")
    # Escape closes the passage and gives the focus back to its source.
    await quote.focus()
    await page.keyboard.press("Escape")
    await expect(quote).to_be_hidden()
    await expect(chips.first).to_be_focused()
    await answer.locator(".md .cite-ref").last.click()
    await expect(quote).to_be_visible()
    await expect(quote).to_be_focused()
    await expect(quote).to_have_attribute("data-n", str(count))

    # The stored answer keeps its sources, with their file names.
    stored = await conversation(page, conversation_id)
    messages = stored["messages"]
    assert isinstance(messages, list)
    citations = messages[-1]["citations"]
    assert isinstance(citations, list)
    assert len(citations) == count
    await page.reload()
    answer = page.locator("#thread .msg-assistant").last
    await expect(answer.locator(".cites .cite-chip")).to_have_count(count)
    await expect(answer.locator(".cites .cite-file").first).to_have_text(
        str(citations[0]["filename"])
    )
    await expect(page.locator("#kb-picker-count")).to_have_text("1")

    # Deleting a document takes it out of the list (after a confirmation).
    await page.goto(f"/#/kb/{kb_id}")
    row = doc_row(page, "shipping.txt")
    await expect(row).to_be_visible()
    await row.locator(".kb-doc-delete").click()
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Delete").click()
    await expect(row).to_have_count(0)
    await expect(doc_row(page, "handbook.md")).to_be_visible()
    await page.reload()
    await expect(doc_row(page, "handbook.md")).to_be_visible()
    await expect(doc_row(page, "shipping.txt")).to_have_count(0)
    await assert_clean(page, log)


async def conversation_knowledge(page: Page, conversation_id: str) -> object:
    return (await conversation(page, conversation_id))["knowledge_base_ids"]


async def test_rename_and_delete_a_knowledge_base(
    desktop: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = desktop
    await log_in(page, live_server)
    name = unique("Drafts")
    kb_id = await create_kb_in_ui(page, name)
    await page.click(".kb-back")
    row = page.locator(f'.kb-row[data-id="{kb_id}"]')
    await expect(row.locator(".kb-link")).to_have_text(name)
    await expect(row.locator(".kb-visibility")).to_have_text("Private")
    await expect(row.locator(".kb-doc-count")).to_have_text("0")

    renamed = unique("Shared drafts")
    await row.locator(".kb-edit").click()
    dialog = page.get_by_role("dialog", name="Edit knowledge base")
    await dialog.get_by_label("Name").fill(renamed)
    await dialog.get_by_label("Who can use it").select_option("tenant")
    await shot(page, artifacts, "kb-04-edit-dialog")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_have_count(0)
    await expect(row.locator(".kb-link")).to_have_text(renamed)
    await expect(row.locator(".kb-visibility")).to_have_text("Organisation")
    await shot(page, artifacts, "kb-05-list-desktop")

    # Delete asks first; Cancel keeps it.
    await row.locator(".kb-delete").click()
    confirm = page.locator("#confirm-dialog")
    await expect(confirm).to_be_visible()
    await confirm.get_by_role("button", name="Cancel").click()
    await expect(row).to_be_visible()
    await row.locator(".kb-delete").click()
    await confirm.get_by_role("button", name="Delete").click()
    await expect(row).to_have_count(0)
    gone = await page.request.get(f"/api/kb/{kb_id}")
    assert gone.status == 404
    await assert_clean(page, log)


async def test_phone_knowledge_pages_and_a_new_chat_with_sources(
    mobile: tuple[Page, PageLog], live_server: LiveServer, artifacts: Path
) -> None:
    page, log = mobile
    await log_in(page, live_server)
    headers = await csrf_headers(page)
    created = await page.request.post(
        "/api/kb", data={"name": unique("Phone handbook")}, headers=headers
    )
    assert created.status == 201, await created.text()
    kb_id = str((await created.json())["id"])
    uploaded = await page.request.post(
        f"/api/kb/{kb_id}/documents",
        multipart={"file": text_file("handbook.md", "text/markdown", HANDBOOK_MD)},  # type: ignore[dict-item]
        headers=headers,
    )
    assert uploaded.status == 202, await uploaded.text()

    # The Knowledge entry is in the drawer.
    await page.click("#sidebar-open")
    await page.click("#kb-link")
    await expect(page.locator("#sidebar")).not_to_be_in_viewport()
    await expect(page.locator(f'.kb-row[data-id="{kb_id}"]')).to_be_visible()
    await shot(page, artifacts, "kb-06-list-mobile")
    await page.locator(f'.kb-row[data-id="{kb_id}"] .kb-link').click()
    row = doc_row(page, "handbook.md")
    await expect(row).to_have_attribute("data-status", "ready", timeout=INDEX_TIMEOUT_MS)
    await page.fill("#kb-search-input", "damaged parcel photo")
    await page.click("#kb-search-submit")
    await expect(page.locator("#kb-results .kb-hit").first).to_contain_text(SENTENCES[1])
    await shot(page, artifacts, "kb-07-detail-mobile")
    overflow = await page.evaluate(
        "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
    )
    assert overflow <= 0, "the knowledge page scrolls sideways at 375px"

    # On the empty chat screen the choice waits for the first message, which creates the
    # conversation with it.
    await page.goto("/")
    await expect(page.locator("#welcome")).to_be_visible()
    await choose_kb(page, kb_id)
    await page.select_option("#model-select", "mock-cite")
    answer = await ask(page, "What happens to a damaged parcel?")
    await expect(page).to_have_url(re.compile(r"#/c/[^/]+$"))
    conversation_id = page.url.rsplit("/", 1)[1]
    assert await conversation_knowledge(page, conversation_id) == [kb_id]
    chip = answer.locator(".cites .cite-chip").first
    await expect(chip).to_be_visible()
    await chip.click()
    await expect(answer.locator(".cite-quote .cite-text")).to_be_visible()
    await shot(page, artifacts, "kb-08-citations-mobile")
    overflow = await page.evaluate(
        "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
    )
    assert overflow <= 0, "the chat scrolls sideways at 375px"
    await page.click("#kb-picker-button")
    await expect(page.locator("#kb-picker-panel")).to_be_in_viewport()
    await shot(page, artifacts, "kb-09-picker-mobile")
    await assert_clean(page, log)
