"""The chatplane server under test: `python -m chatplane serve` in a fresh data dir on a
free loopback port, with one user and one API key made by the CLI beforehand.

Every server starts with the rate, concurrency and per-address limits off (`LIMITS_OFF`):
the defaults (600 requests per minute per key and per user, 1,200 per address) would refuse
most of a run's load, and the `limits` scenario measures what the limits cost on their own."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.clients import ChatCompletionStream
from bench.loadgen import LOOPBACK_HOST
from bench.procs import ManagedProcess, child_env, free_port, run_command

if TYPE_CHECKING:
    from bench.scenarios import BenchOptions

BENCH_EMAIL = "bench@example.com"
BENCH_PASSWORD = "bench-password-1"
READY_DEADLINE_S = 60.0
# Let start-up work (the first usage flush, lazy imports) settle before reading idle RSS.
IDLE_SETTLE_S = 1.0
# Every rate, concurrency and per-address limit setting at 0 (unlimited); no zone overrides.
LIMITS_OFF: tuple[tuple[str, str], ...] = (
    *(
        (f"CHATPLANE_RATE_LIMIT_{scope}_{unit}", "0")
        for scope in ("KEY", "USER", "TENANT")
        for unit in ("RPM", "TPM")
    ),
    *((f"CHATPLANE_MAX_CONCURRENT_{scope}", "0") for scope in ("KEY", "USER", "TENANT")),
    ("CHATPLANE_RATE_LIMIT_IP_RPM", "0"),
    ("CHATPLANE_RATE_LIMIT_IP_ZONES", "{}"),
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    chunks: int
    ttft_ms: float
    chunk_delay_ms: float
    openai_base_url: str | None = None
    extra_env: tuple[tuple[str, str], ...] = ()  # more `CHATPLANE_*` settings (win over LIMITS_OFF)
    key_budget_usd: float | None = None  # a lifetime budget on the bench's API key


@dataclass(frozen=True, slots=True)
class StartupStats:
    ready_s: float
    idle_rss_kib: int


class ChatplaneServer:
    def __init__(self, workdir: Path, config: ServerConfig) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.port = free_port()
        self.base_url = f"http://{LOOPBACK_HOST}:{self.port}"
        self.api_key = ""
        settings = {
            "CHATPLANE_DATA_DIR": str(self.data_dir),
            "CHATPLANE_PASSWORD_TIME_COST": "1",
            "CHATPLANE_PASSWORD_MEMORY_KIB": "1024",
            "CHATPLANE_MOCK_CHUNKS": str(config.chunks),
            "CHATPLANE_MOCK_TTFT_MS": str(config.ttft_ms),
            "CHATPLANE_MOCK_CHUNK_DELAY_MS": str(config.chunk_delay_ms),
            **dict(LIMITS_OFF),
        }
        self.key_budget_usd = config.key_budget_usd
        if config.openai_base_url:
            settings["CHATPLANE_OPENAI_BASE_URL"] = config.openai_base_url
        settings.update(config.extra_env)
        self.env = child_env(settings)
        argv = [sys.executable, "-m", "chatplane", "serve"]
        argv += ["--host", LOOPBACK_HOST, "--port", str(self.port)]
        self.process = ManagedProcess("chatplane", argv, env=self.env, cwd=workdir)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def prepare(self) -> None:
        """Create the bench user and its API key with the CLI (before `serve` starts)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cli = [sys.executable, "-m", "chatplane"]
        await run_command(
            [*cli, "users", "create", BENCH_EMAIL, "--password-stdin"],
            env=self.env,
            cwd=self.workdir,
            stdin=BENCH_PASSWORD.encode() + b"\n",
        )
        budget = [] if self.key_budget_usd is None else ["--budget-usd", str(self.key_budget_usd)]
        out = await run_command(
            [*cli, "keys", "create", BENCH_EMAIL, "--name", "bench", *budget],
            env=self.env,
            cwd=self.workdir,
        )
        self.api_key = out.strip().splitlines()[-1]

    async def start(self, *, idle_settle_s: float = IDLE_SETTLE_S) -> StartupStats:
        """Start `serve`, wait for `/healthz`, let it settle, read its idle RSS."""
        if not self.api_key:
            await self.prepare()
        await self.process.start()
        try:
            ready_s = await self.process.wait_ready(
                f"{self.base_url}/healthz", deadline_s=READY_DEADLINE_S
            )
            await asyncio.sleep(idle_settle_s)
            return StartupStats(ready_s=ready_s, idle_rss_kib=self.process.memory_kib())
        except BaseException:
            await self.process.stop()
            raise

    async def stop(self) -> int | None:
        return await self.process.stop()


@dataclass(frozen=True, slots=True)
class V1Target:
    """A started server and the `/v1` streaming client a run loads it with."""

    server: ChatplaneServer
    pid: int  # kept: the process forgets it once stopped
    startup: StartupStats
    client: ChatCompletionStream

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        return {"chatplane": self.server.process}

    def described(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "ready_s": round(self.startup.ready_s, 3),
            "idle_rss_mb": round(self.startup.idle_rss_kib / 1024, 1),
        }


@asynccontextmanager
async def serving_v1(
    workdir: Path,
    options: BenchOptions,
    *,
    model: str,
    extra_env: dict[str, str] | None = None,
    key_budget_usd: float | None = None,
) -> AsyncIterator[V1Target]:
    """A fresh `serve` in `workdir` with the run's mock pacing, for `/v1/chat/completions`
    streams like `v1-mock`'s; stopped by its PID on the way out."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    config = ServerConfig(
        chunks=options.chunks,
        ttft_ms=options.ttft_ms,
        chunk_delay_ms=options.chunk_delay_ms,
        extra_env=tuple((extra_env or {}).items()),
        key_budget_usd=key_budget_usd,
    )
    server = ChatplaneServer(workdir, config)
    startup = await server.start(idle_settle_s=options.idle_settle_s)
    try:
        client = ChatCompletionStream(
            server.base_url + "/v1",
            model=model,
            api_key=server.api_key,
            expected_chunks=options.chunks,
        )
        yield V1Target(server, server.pid, startup, client)
    finally:
        await server.stop()
