"""Optional sampling profile of the server during a measured phase, with py-spy.

`--profile DIR` records each measured phase's chatplane process with `py-spy record`
(raw collapsed stacks, idle threads excluded) and summarises where the samples land:
by leaf function (self), by function anywhere on the stack (inclusive) and by package.
py-spy is not a project dependency (`pip install py-spy` into the venv to use it), and
profiling slows the server, so a profiled run's latency and CPU are not the benchmark's.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.procs import ManagedProcess

SAMPLE_RATE_HZ = 200
TOP = 15
STOP_TIMEOUT_S = 30.0
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy_path() -> str | None:
    sibling = Path(sys.executable).with_name("py-spy")
    return str(sibling) if sibling.exists() else shutil.which("py-spy")


class Profiler:
    """An async context around a measured phase; a no-op without a directory."""

    def __init__(self, directory: Path | None, label: str, target: ManagedProcess | None) -> None:
        self.directory = directory
        self.label = label
        self.target = target
        self.output: Path | None = None
        self.summary: dict[str, Any] | None = None
        self._recorder: ManagedProcess | None = None

    async def __aenter__(self) -> Profiler:
        if self.directory is None or self.target is None:
            return self
        executable = py_spy_path()
        if executable is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.output = (self.directory / f"{self.label}-{stamp}.txt").resolve()
        argv = [executable, "record", "--pid", str(self.target.pid), "--format", "raw"]
        argv += ["--rate", str(SAMPLE_RATE_HZ), "--nonblocking", "-o", str(self.output)]
        self._recorder = ManagedProcess(
            f"py-spy-{self.label}",
            argv,
            env=dict(os.environ),
            cwd=self.directory,
            under_test=False,
        )
        await self._recorder.start()
        await asyncio.sleep(0.5)  # attached before the phase starts
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._recorder is None or self.output is None:
            return
        # py-spy writes its output on SIGINT, as on Ctrl-C.
        await self._recorder.stop(timeout_s=STOP_TIMEOUT_S, sig=signal.SIGINT)
        if self.output.exists():
            self.summary = summarize_collapsed(self.output)


def _function(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, "?"
    return f"{match['func']} ({match['file']})", match["file"]


def package_of(filename: str) -> str:
    """`sqlalchemy/orm/session.py` -> `sqlalchemy`; the stdlib keeps its module name."""
    if "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    elif "/src/" in filename:
        filename = filename.split("/src/", 1)[1]
    elif re.search(r"python3\.\d+/", filename):
        filename = "stdlib:" + re.split(r"python3\.\d+/", filename, maxsplit=1)[1]
    head = filename.lstrip("/").split("/", 1)[0]
    return head.removesuffix(".py")


def summarize_collapsed(path: Path, top: int = TOP) -> dict[str, Any]:
    """Share of samples by leaf function, by function on the stack and by package."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_function(frame) for frame in stack.split(";")]
        leaf, leaf_file = frames[-1]
        own[leaf] += count
        packages[package_of(leaf_file)] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"name": name, "pct": round(100 * n / total, 1)} for name, n in counter.most_common(top)
        ]

    return {
        "file": str(path),
        "samples": total,
        "self": shares(own) if total else [],
        "inclusive": shares(inclusive) if total else [],
        "packages": shares(packages) if total else [],
    }
