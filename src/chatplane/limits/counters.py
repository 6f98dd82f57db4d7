"""Fixed-window counters: how many times something happened in the current window.

Used for failed logins (per account and per client IP). The window starts at the first hit
and the count resets when it ends, so `retry_after_s` is exact for a caller that is over."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WindowCount:
    count: int
    retry_after_s: float  # until the window ends; 0 when no window is open


class WindowCounter(Protocol):
    async def hit(self, key: str, *, window_s: float) -> WindowCount:
        """Count one more in `key`'s window (opening one when none is open)."""
        ...

    async def peek(self, key: str) -> WindowCount: ...

    async def reset(self, key: str) -> None: ...

    async def close(self) -> None: ...


class MemoryWindowCounter:
    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._windows: dict[str, tuple[int, float]] = {}
        self._max_keys = max_keys

    def _now(self) -> float:
        return time.monotonic()

    def _current(self, key: str) -> tuple[int, float] | None:
        window = self._windows.get(key)
        if window is not None and window[1] <= self._now():
            del self._windows[key]
            return None
        return window

    async def hit(self, key: str, *, window_s: float) -> WindowCount:
        window = self._current(key)
        count, ends = (1, self._now() + window_s) if window is None else (window[0] + 1, window[1])
        if window is None and len(self._windows) >= self._max_keys:
            self._evict_expired()
        self._windows[key] = (count, ends)
        return WindowCount(count, max(0.0, ends - self._now()))

    async def peek(self, key: str) -> WindowCount:
        window = self._current(key)
        if window is None:
            return WindowCount(0, 0.0)
        return WindowCount(window[0], max(0.0, window[1] - self._now()))

    async def reset(self, key: str) -> None:
        self._windows.pop(key, None)

    async def close(self) -> None:
        self._windows.clear()

    def _evict_expired(self) -> None:
        now = self._now()
        for key in [k for k, (_, ends) in self._windows.items() if ends <= now]:
            del self._windows[key]
        while len(self._windows) >= self._max_keys:  # still full: drop the oldest windows
            del self._windows[next(iter(self._windows))]
