"""Real chatplane processes for the scaled-shape tests: started, watched and stopped by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

FAST_HASHING = {
    "CHATPLANE_PASSWORD_TIME_COST": "1",
    "CHATPLANE_PASSWORD_MEMORY_KIB": "1024",
    "CHATPLANE_PASSWORD_PARALLELISM": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    return {**env, **FAST_HASHING, **settings}


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "chatplane", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    _log: object = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatplane", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(self, text: str, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {text!r} in its log:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def wait_ready(self, *, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} did not start:\n{self.log()}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """kill -9: no clean-up runs, as when a machine or container dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    async def terminate(self, *, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None


@dataclass
class Cluster:
    """Processes sharing one Postgres database and one Redis key prefix."""

    env: dict[str, str]
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def api(self, name: str, *extra: str, **env: str) -> Proc:
        port = free_port()
        proc = Proc(
            name,
            ["serve", "--port", str(port), *extra],
            {**self.env, **env},
            self.tmp / f"{name}.log",
            port=port,
        )
        self.procs.append(proc)
        return proc.start()

    def worker(self, name: str, **env: str) -> Proc:
        proc = Proc(name, ["worker"], {**self.env, **env}, self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
