"""`sse-idle`: how much one embedded API process pays to hold N idle SSE streams.

A fresh `chatplane serve` whose mock waits 10 minutes before its first token: one
conversation, one turn (it starts, then sends nothing), then N `GET /api/turns/{id}/events`
connections (aiohttp, no connection limit), opened in batches; each reads its first line,
so the stream is really established. After a settle, the server's RSS with the streams
open minus its RSS before them, per stream; then its CPU over an idle window with all of
them open (keep-alives every `CHATPLANE_SSE_KEEPALIVE_S`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from bench.clients import PROMPT
from bench.loadgen import ProtocolError
from bench.procs import system_cpu
from bench.server import ChatplaneServer, ServerConfig

if TYPE_CHECKING:
    from bench.scenarios import BenchOptions

IDLE_TTFT_MS = 600_000.0  # the turn starts, then sends nothing for 10 minutes
KEEPALIVE_S = 15.0
SETTLE_S = 5.0
OPEN_TIMEOUT_S = 60.0
KIB_PER_MB = 1024
MODEL = "mock"


async def measure_idle_streams(workdir: Path, options: BenchOptions) -> dict[str, Any]:
    config = ServerConfig(
        chunks=options.chunks,
        ttft_ms=IDLE_TTFT_MS,
        chunk_delay_ms=options.chunk_delay_ms,
        extra_env=(("CHATPLANE_SSE_KEEPALIVE_S", str(KEEPALIVE_S)),),
    )
    server = ChatplaneServer(workdir, config)
    startup = await server.start(idle_settle_s=options.idle_settle_s)
    process = server.process
    pid = server.pid
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0)
    )
    responses: list[aiohttp.ClientResponse] = []
    errors: dict[str, int] = {}
    try:
        turn_id, events_url = await _start_turn(session, server.base_url, headers)
        await asyncio.sleep(max(options.idle_settle_s, 1.0))
        rss_before = process.memory_kib()
        url = server.base_url + events_url

        async def open_one() -> None:
            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    response = await session.get(url, headers=headers)
                    if response.status != 200:
                        response.close()
                        raise ProtocolError(f"http_{response.status}")
                    responses.append(response)  # before the read: closed at the end either way
                    if not (await response.content.readline()).startswith(b"retry:"):
                        raise ProtocolError("no_retry_line")
            except (ProtocolError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                kind = exc.kind if isinstance(exc, ProtocolError) else type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1

        opening = time.perf_counter()
        for start in range(0, options.streams, options.stream_batch):
            count = min(options.stream_batch, options.streams - start)
            await asyncio.gather(*(open_one() for _ in range(count)))
        open_s = time.perf_counter() - opening
        await asyncio.sleep(SETTLE_S)
        open_streams = len(responses) - sum(1 for r in responses if r.closed)
        rss_after = process.memory_kib()
        cpu_before, system_before, client_before = (
            process.cpu_seconds(),
            system_cpu(),
            time.process_time(),
        )
        idle_started = time.perf_counter()
        await asyncio.sleep(options.idle_window_s)
        idle_s = time.perf_counter() - idle_started
        cpu_s = process.cpu_seconds() - cpu_before
        system_after = system_cpu()
        client_s = time.process_time() - client_before
        still_open = sum(1 for r in responses if not r.closed)
        rss_end = process.memory_kib()
        peak = process.memory_kib("VmHWM")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with session.post(
                f"{server.base_url}/api/turns/{turn_id}/cancel", headers=headers
            ):
                pass
    finally:
        for response in responses:
            response.close()
        await session.close()
        await server.stop()
    busy = system_after.busy_s - system_before.busy_s
    streams = open_streams
    per_stream_kib = (rss_after - rss_before) / streams if streams else None
    return {
        "server": {
            "pid": pid,
            "shape": "embedded: one uvicorn process, SQLite, in-process broker",
            "ready_s": round(startup.ready_s, 3),
            "idle_rss_mb": round(startup.idle_rss_kib / KIB_PER_MB, 1),
        },
        "runs": {},
        "errors": sum(errors.values()),
        "sse_idle": {
            "streams_requested": options.streams,
            "streams_open": streams,
            "streams_open_after_idle": still_open,
            "error_kinds": errors,
            "open_s": round(open_s, 3),
            "open_per_s": round(streams / open_s, 1) if open_s > 0 else None,
            "keepalive_s": KEEPALIVE_S,
            "rss_before_mb": round(rss_before / KIB_PER_MB, 1),
            "rss_after_mb": round(rss_after / KIB_PER_MB, 1),
            "rss_after_idle_mb": round(rss_end / KIB_PER_MB, 1),
            "peak_rss_mb": round(peak / KIB_PER_MB, 1),
            "kib_per_stream": round(per_stream_kib, 2) if per_stream_kib is not None else None,
            "idle_window_s": round(idle_s, 3),
            "idle_cpu_cores": round(cpu_s / idle_s, 4),
            "idle_cpu_ms_per_s": round(cpu_s * 1000 / idle_s, 2),
            "idle_cpu_us_per_stream_per_s": (
                round(cpu_s * 1e6 / idle_s / streams, 3) if streams else None
            ),
            "machine_cpu": {
                "busy_cores": round(busy / idle_s, 3),
                "other_cores": round(max(0.0, busy - cpu_s - client_s) / idle_s, 3),
                "steal_cores": round((system_after.steal_s - system_before.steal_s) / idle_s, 3),
            },
        },
    }


async def _start_turn(
    session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]
) -> tuple[str, str]:
    """One conversation and one message: the turn whose event stream everyone follows."""
    async with session.post(
        f"{base_url}/api/conversations", data=orjson.dumps({"model": MODEL}), headers=headers
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"conversation: {response.status} {await response.text()}")
        conversation_id = (await response.json(loads=orjson.loads))["id"]
    async with session.post(
        f"{base_url}/api/conversations/{conversation_id}/messages",
        data=orjson.dumps({"content": PROMPT}),
        headers=headers,
    ) as response:
        if response.status != 202:
            raise RuntimeError(f"message: {response.status} {await response.text()}")
        body = await response.json(loads=orjson.loads)
    return str(body["turn_id"]), str(body["events_url"])
