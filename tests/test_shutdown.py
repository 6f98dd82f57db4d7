"""A process always gets to exit on SIGTERM: a part that does not stop in time is logged
and left behind, and the parts after it still stop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from chatplane import container
from chatplane.container import build_services
from tests.conftest import make_settings


async def test_a_part_that_never_stops_does_not_hold_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = await build_services(make_settings(tmp_path))
    monkeypatch.setattr(container, "CLOSE_STEP_S", 0.3)
    stopped: list[str] = []

    async def never_stops() -> None:
        await asyncio.Event().wait()

    broker_close = services.broker.close

    async def broker_stops() -> None:
        await broker_close()
        stopped.append("broker")

    monkeypatch.setattr(services.cache, "close", never_stops)
    monkeypatch.setattr(services.broker, "close", broker_stops)
    began = time.monotonic()
    with capture_logs() as logs:
        await services.close(drain_s=0.5)
    assert time.monotonic() - began < 5
    assert stopped == ["broker"]  # a part after the stuck one
    assert [(e["event"], e["part"]) for e in logs if e["log_level"] == "error"] == [
        ("close_step_timed_out", "cache")
    ]
