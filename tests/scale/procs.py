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
from typing import Any

import httpx

from chatplane.auth.audit import AuditLog
from chatplane.auth.secrets import Passwords
from chatplane.auth.service import AuthService
from chatplane.db.engine import Database, create_engine
from chatplane.settings import Settings

# What `chatplane serve` and `chatplane worker` become (`os.execv`, same PID) once the command
# line has checked the settings and, for `serve`, the database in a child interpreter: started
# directly, an API process costs one interpreter start instead of three (about half of its
# start-up on a small machine). The command line itself is tested in tests/cli, and here by
# the `serve --workers 2` tests.
PROCESS_MODULE = "chatplane.process"

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


_migrated: set[str] = set()


def migrate_once(env: dict[str, str]) -> None:
    """`chatplane db upgrade`, once per database in a run: the clusters share it."""
    url = env["CHATPLANE_DATABASE_URL"]
    if url not in _migrated:
        run_cli(env, "db", "upgrade")
        _migrated.add(url)


def settings_of(env: dict[str, str]) -> Settings:
    """The settings a process started with `env` reads."""
    values: dict[str, Any] = {
        name.removeprefix("CHATPLANE_").lower(): value
        for name, value in env.items()
        if name.startswith("CHATPLANE_")
    }
    return Settings(_env_file=None, **values)


async def new_key(
    env: dict[str, str],
    email: str,
    *,
    password: str,
    tenant: str = "default",
    name: str = "scale",
    rpm: int | None = None,
    scopes: tuple[str, ...] = ("chat",),
) -> str:
    """A new user and an API key of theirs, as `chatplane users create` and `keys create`
    make them, in this process: each start of the CLI costs seconds on a busy machine."""
    settings = settings_of(env)
    db = Database(create_engine(settings))
    try:
        auth = AuthService(db, settings, Passwords(settings), AuditLog(db))
        await auth.create_user(email, password, tenant_slug=tenant)
        _, plaintext = await auth.create_api_key(email, name, rpm=rpm, scopes=frozenset(scopes))
    finally:
        await db.close()
    return plaintext


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    module: str = "chatplane"
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
            [sys.executable, "-m", self.module, *self.args],
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

    def stop(self, *, signalled: bool = False) -> None:
        """SIGTERM (unless `signalled` already) and wait; kill -9 after 15 s."""
        if self.process is not None and self.process.poll() is None:
            if not signalled:
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

    def api(self, name: str, *options: str, **env: str) -> Proc:
        """An API process on a port of its own; with `serve` options (`--workers 2`), started
        by the command line, which runs them."""
        port = free_port()
        if options:
            args, module = ["serve", "--port", str(port), *options], "chatplane"
        else:
            args, module = ["serve", "127.0.0.1", str(port)], PROCESS_MODULE
        proc = Proc(name, args, {**self.env, **env}, self.tmp / f"{name}.log", module, port=port)
        self.procs.append(proc)
        return proc.start()

    def worker(self, name: str, **env: str) -> Proc:
        proc = Proc(name, ["worker"], {**self.env, **env}, self.tmp / f"{name}.log", PROCESS_MODULE)
        self.procs.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        """SIGTERM to every process first, so that they drain at the same time."""
        running = [p for p in self.procs if p.process is not None and p.process.poll() is None]
        for proc in running:
            assert proc.process is not None
            proc.process.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            proc.stop(signalled=proc in running)


@dataclass
class Group:
    """A started cluster: two API processes and two workers."""

    env: dict[str, str]
    first: Proc
    second: Proc
    workers: list[Proc]

    def assert_alive(self) -> None:
        """Shared by several tests: a process that died would fail the next one obscurely."""
        for proc in (self.first, self.second, *self.workers):
            assert proc.process is not None
            assert proc.process.poll() is None, f"{proc.name} exited:\n{proc.log()}"
