"""A test that hangs ends the run with the evidence instead of holding CI until its own
time-out: when one test item (its setup, call and teardown, and so the session's last
teardown too) runs longer than CHATPLANE_TEST_ITEM_LIMIT_S, every thread's stack and every
unfinished asyncio task's stack go to stderr and the run is interrupted (pytest reports it
and exits non-zero). If the interrupt does not get through either, the process exits."""

from __future__ import annotations

import _thread
import asyncio
import faulthandler
import gc
import os
import sys
import threading
from collections.abc import Iterator
from types import AsyncGeneratorType

import pytest
from _pytest.capture import CaptureManager

ITEM_LIMIT_S = float(os.environ.get("CHATPLANE_TEST_ITEM_LIMIT_S", "600"))
EXIT_AFTER_INTERRUPT_S = 60.0


def _dump(nodeid: str) -> None:
    if _capture is not None:  # to the run's own stderr, not into the item's captured output
        _capture.suspend_global_capture(in_=True)
    err = sys.stderr
    print(f"\n=== {nodeid} still runs after {ITEM_LIMIT_S:.0f} s: stacks ===", file=err)
    faulthandler.dump_traceback(file=err, all_threads=True)
    gc.unfreeze()  # servers built in-process froze what they found (gc.freeze)
    objects = gc.get_objects()  # no loop to ask from this thread
    tasks = [obj for obj in objects if isinstance(obj, asyncio.Task) and not obj.done()]
    # A task's chain stops at an async generator it awaits (a fixture's teardown, say):
    # the generators that wait on something are listed with their own chains.
    waiting_generators = [
        obj for obj in objects if isinstance(obj, AsyncGeneratorType) and obj.ag_await is not None
    ]
    print(f"=== {len(tasks)} unfinished asyncio task(s) ===", file=err)
    for task in tasks:
        print(f"--- {task.get_name()}", file=err)
        for line in _awaiting(task.get_coro()):
            print(line, file=err)
    print(f"=== {len(waiting_generators)} waiting async generator(s) ===", file=err)
    for generator in waiting_generators:
        print(f"--- {generator.__qualname__}", file=err)
        for line in _awaiting(generator):
            print(line, file=err)
    err.flush()


def _awaiting(awaitable: object) -> Iterator[str]:
    """Where a coroutine waits, frame by frame down its await chain (a task's own stack
    stops at the first async generator)."""
    while awaitable is not None:
        frame = next(
            (
                getattr(awaitable, a)
                for a in ("cr_frame", "ag_frame", "gi_frame")
                if hasattr(awaitable, a)
            ),
            None,
        )
        if frame is None:
            yield f"  waits on {awaitable!r}"
            return
        yield f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        awaitable = next(
            (
                getattr(awaitable, a)
                for a in ("cr_await", "ag_await", "gi_yieldfrom")
                if hasattr(awaitable, a)
            ),
            None,
        )


def _stuck(nodeid: str) -> None:
    _dump(nodeid)
    _thread.interrupt_main()
    last_resort = threading.Timer(EXIT_AFTER_INTERRUPT_S, os._exit, args=(3,))
    last_resort.daemon = True
    last_resort.start()


_capture: CaptureManager | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _capture
    _capture = config.pluginmanager.getplugin("capturemanager")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    timer = threading.Timer(ITEM_LIMIT_S, _stuck, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
