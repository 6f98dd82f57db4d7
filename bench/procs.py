"""Child processes of the bench (the chatplane server, the fake upstream): start, wait
until ready with a deadline, read CPU time and memory from /proc, stop by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp

from bench import cpus
from bench.loadgen import LOOPBACK_HOST

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_POLL_S = 0.05
LOG_TAIL_CHARS = 2000
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
# /proc/<pid>/stat fields after the ")" that ends the command name: utime, stime.
_UTIME_AT, _STIME_AT = 11, 12


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any `CHATPLANE_*` setting (each run sets its
    own), with the repository on `PYTHONPATH` so children can run `-m bench...`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port free right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[_UTIME_AT]) + int(fields[_STIME_AT])) / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class SystemCpu:
    """Machine-wide CPU seconds so far (from /proc/stat): busy, and stolen by the host."""

    busy_s: float
    steal_s: float


def system_cpu() -> SystemCpu:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    busy = sum(fields[:8]) - idle - steal
    return SystemCpu(busy_s=busy / CLOCK_TICKS, steal_s=steal / CLOCK_TICKS)


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A `/proc/<pid>/status` memory field (VmRSS: resident now; VmHWM: peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


class ManagedProcess:
    """One child process, its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        under_test: bool = True,
    ) -> None:
        self.name = name
        self.under_test = under_test  # runs on the servers' CPUs while pinned (`bench.cpus`)
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = cwd / f"{name}.log"
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._process.pid

    async def start(self) -> None:
        """Start it (a process under test on the servers' CPUs while a `cpus.pinned` plan
        is applied)."""
        self._log = self.log_path.open("wb")
        argv = cpus.child_argv(self.argv) if self.under_test else self.argv
        self._process = await asyncio.create_subprocess_exec(
            *argv,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )

    async def wait_ready(self, url: str, *, deadline_s: float, status: int = 200) -> float:
        """Poll `url` until it answers `status`; returns the seconds it took."""
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if self._process is not None and self._process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited while starting:\n{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == status:
                            return time.perf_counter() - started
                if time.perf_counter() - started > deadline_s:
                    raise RuntimeError(
                        f"{self.name} not ready at {url} after {deadline_s} s:\n{self.log_tail()}"
                    )
                await asyncio.sleep(READY_POLL_S)

    def exited(self) -> bool:
        """Started once and no longer running."""
        return self._process is not None and self._process.returncode is not None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def memory_kib(self, field: str = "VmRSS") -> int:
        return memory_kib(self.pid, field)

    def log_size(self) -> int:
        """Bytes of output so far (where the next line will start)."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_lines(self, start: int = 0) -> list[bytes]:
        """The output's whole lines from byte `start` on."""
        with self.log_path.open("rb") as log:
            log.seek(start)
            return log.read().splitlines()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return ""

    async def wait(self, *, timeout_s: float) -> int | None:
        """Wait for it to exit by itself (stopped by its PID after `timeout_s`); its exit
        status."""
        if self._process is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._process.wait()
        return await self.stop()

    async def stop(
        self, *, timeout_s: float = 15.0, sig: signal.Signals = signal.SIGTERM
    ) -> int | None:
        """Signal this child by its PID (SIGTERM unless told), SIGKILL it if it outlives
        the timeout."""
        process, self._process = self._process, None
        try:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
                try:
                    async with asyncio.timeout(timeout_s):
                        await process.wait()
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGKILL)
                    await process.wait()
            return process.returncode if process is not None else None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


async def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdin: bytes = b"",
    timeout_s: float = 120.0,
) -> str:
    """Run a command to its end; its stdout, or RuntimeError with its output."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited with {process.returncode}:\n{err.decode(errors='replace')}"
        )
    return out.decode()
