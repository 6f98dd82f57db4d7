"""Debian's headless Chromium driven by Playwright: one browser (and one Playwright driver)
for the whole run, shared by every suite that opens pages (`browser`).

Closing it is bounded: when the browser or the driver does not come back from its close in
`CLOSE_TIMEOUT_S`, the driver this process started and the browser under it are killed by
PID, instead of holding the end of the run forever."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Playwright, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLOSE_TIMEOUT_S = 30.0


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} not found (install Debian's chromium: make browser)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest_asyncio.fixture(scope="session")
async def browser(chromium_path: Path) -> AsyncIterator[Browser]:
    playwright = await async_playwright().start()
    try:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium_path), args=CHROMIUM_ARGS
        )
    except BaseException:
        await _stop(playwright, None)
        raise
    try:
        yield launched
    finally:
        await _stop(playwright, launched)


async def _stop(playwright: Playwright, browser: Browser | None) -> None:
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            if browser is not None:
                await browser.close()
            await playwright.stop()
        return
    except TimeoutError:
        pass
    killed = _kill_descendants()
    print(
        f"\nChromium or the Playwright driver did not close in {CLOSE_TIMEOUT_S:.0f} s: "
        f"killed {killed}",
        file=sys.stderr,
    )
    # The driver is gone: its pipe ends, and the stop that waited for it returns.
    async with asyncio.timeout(CLOSE_TIMEOUT_S):
        await playwright.stop()


def _kill_descendants() -> list[int]:
    """SIGKILL the Playwright driver this process started and everything under it (the
    browser's processes); the run's other children (servers) are left to their fixtures."""
    children: dict[int, list[int]] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    drivers = [pid for pid in children.get(os.getpid(), []) if b"playwright" in commands[pid]]
    tree: list[int] = []
    while drivers:
        pid = drivers.pop()
        tree.append(pid)
        drivers.extend(children.get(pid, []))
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return tree
