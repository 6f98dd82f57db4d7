"""Browser test fixtures: a live `chatplane serve` process, and pages of the run's one
headless Chromium (`browser`, from `tests.chromium`).

The server runs as a real subprocess on a free port with its own data dir, so the tests see
exactly what a user sees: the static app, cookies, CSRF, CSP and the SSE streams.

Set CHATPLANE_BROWSER_BASE_URL (with CHATPLANE_BROWSER_EMAIL and CHATPLANE_BROWSER_PASSWORD)
to drive an already running instance instead (the tests that need the extra accounts below
are skipped then).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
STARTUP_TIMEOUT_S = 30.0
# Runs before the app in every page: keeps Content-Security-Policy violations for the asserts.
CSP_RECORDER = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));
"""
DESKTOP = {"width": 1280, "height": 820}
MOBILE = {"width": 375, "height": 812}


@dataclass(frozen=True)
class Account:
    email: str
    password: str


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    email: str  # the first user of the default tenant, so its owner
    password: str
    # More users of the default tenant, made before the server starts (not for an external
    # instance): an admin, a member, and an admin who is also a superadmin (an operator).
    admin: Account | None = None
    member: Account | None = None
    superadmin: Account | None = None


@dataclass
class PageLog:
    """What the page reported while a test ran: console errors and uncaught exceptions."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_healthy(process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"chatplane serve exited with {process.returncode} before it was healthy:\n"
                f"{log_path.read_text(errors='replace')[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
            last_error = "healthz answered non-200"
        except httpx.HTTPError as error:
            last_error = repr(error)
        time.sleep(0.1)
    pytest.fail(
        f"chatplane serve not healthy within {STARTUP_TIMEOUT_S}s ({last_error}):\n"
        f"{log_path.read_text(errors='replace')[-4000:]}"
    )


def _create_user(env: dict[str, str], data_dir: Path, account: Account, *, admin: bool) -> None:
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatplane",
            "users",
            "create",
            account.email,
            *(["--admin"] if admin else []),
            "--password-stdin",
        ],
        input=f"{account.password}\n".encode(),
        env=env,
        cwd=data_dir,
        capture_output=True,
        timeout=60,
        check=False,
    )
    if created.returncode != 0:
        pytest.fail(
            f"`chatplane users create` failed ({created.returncode}):\n"
            f"{created.stdout.decode(errors='replace')}\n{created.stderr.decode(errors='replace')}"
        )


def _make_superadmin(data_dir: Path, email: str) -> None:
    """No command makes an operator: set the flag in the embedded database directly."""
    with sqlite3.connect(data_dir / "chatplane.db") as db:
        changed = db.execute("UPDATE users SET is_superadmin = 1 WHERE email = ?", (email,))
        assert changed.rowcount == 1, f"no user {email} to make a superadmin"
    db.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    external = os.environ.get("CHATPLANE_BROWSER_BASE_URL")
    if external:
        yield LiveServer(
            base_url=external.rstrip("/"),
            email=os.environ["CHATPLANE_BROWSER_EMAIL"],
            password=os.environ["CHATPLANE_BROWSER_PASSWORD"],
        )
        return

    data_dir = tmp_path_factory.mktemp("chatplane-data")
    # A clean, embedded install: no CHATPLANE_* setting from the caller's shell, and the data
    # dir as working directory so no developer's .env file is read either.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env |= {
        "CHATPLANE_DATA_DIR": str(data_dir),
        "CHATPLANE_MOCK_CHUNK_DELAY_MS": "30",
        # The cheapest argon2id, as every other test server: a sign-in costs a millisecond
        # instead of a quarter of a second (the suite signs in some fifty times).
        "CHATPLANE_PASSWORD_TIME_COST": "1",
        "CHATPLANE_PASSWORD_MEMORY_KIB": "1024",
        "CHATPLANE_PASSWORD_PARALLELISM": "1",
    }
    owner = Account("alice@example.com", "correct-horse-battery-staple-42")
    admin = Account("admin@example.com", "admin-password-for-tests-1")
    member = Account("member@example.com", "member-password-for-tests-1")
    operator = Account("operator@example.com", "operator-password-for-tests-1")
    server = LiveServer(
        base_url=f"http://127.0.0.1:{_free_port()}",
        email=owner.email,
        password=owner.password,
        admin=admin,
        member=member,
        superadmin=operator,
    )
    _create_user(env, data_dir, owner, admin=False)  # the first user: the tenant's owner
    _create_user(env, data_dir, admin, admin=True)
    _create_user(env, data_dir, member, admin=False)
    _create_user(env, data_dir, operator, admin=True)
    _make_superadmin(data_dir, operator.email)

    port = server.base_url.rsplit(":", 1)[1]
    log_path = data_dir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chatplane", "serve", "--port", port],
            env=env,
            cwd=data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_healthy(process, server.base_url, log_path)
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


async def _new_page(
    browser: Browser, live_server: LiveServer, *, phone: bool
) -> tuple[BrowserContext, Page, PageLog]:
    context = await browser.new_context(
        base_url=live_server.base_url,
        viewport=MOBILE if phone else DESKTOP,  # type: ignore[arg-type]
        device_scale_factor=2 if phone else 1,
        is_mobile=phone,
        has_touch=phone,
        color_scheme="light",
        reduced_motion="reduce",  # no transitions: screenshots show the settled state
    )
    context.set_default_timeout(10_000)
    await context.add_init_script(CSP_RECORDER)
    page = await context.new_page()
    log = PageLog()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            log.console_errors.append(f"{message.text} @ {message.location.get('url', '')}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: log.page_errors.append(str(error)))
    return context, page, log


@pytest_asyncio.fixture
async def desktop(browser: Browser, live_server: LiveServer) -> AsyncIterator[tuple[Page, PageLog]]:
    context, page, log = await _new_page(browser, live_server, phone=False)
    try:
        yield page, log
    finally:
        await context.close()


@pytest_asyncio.fixture
async def mobile(browser: Browser, live_server: LiveServer) -> AsyncIterator[tuple[Page, PageLog]]:
    context, page, log = await _new_page(browser, live_server, phone=True)
    try:
        yield page, log
    finally:
        await context.close()
