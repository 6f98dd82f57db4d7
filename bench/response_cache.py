"""`response-cache`: what an answer from the gateway's response cache takes, against the
same request answered by the paced mock model (a miss).

A real `chatplane serve` per store: the in-process cache (no Redis), then the Redis cache
(`CHATPLANE_REDIS_URL` on the local Redis with a prefix of its own, deleted at the end;
skipped when Redis does not answer). The mock is paced by `--ttft-ms`, `--chunk-delay-ms`
and `--chunks`, as in the other scenarios. Requests go one after another (latency, not
throughput), each `temperature: 0` with `"chatplane": {"cache": true}`:
- miss: a question never asked (the model answers, the answer is kept);
- hit, hit-stream: one question asked before, then asked again and again, as a completion
  and as a stream with the usage chunk (read to `[DONE]`).
Each answer is checked (status, the `X-Chatplane-Cache` header, `[DONE]` for streams), so a
fast wrong answer counts as an error. `--requests` (at most 500) per kind.

    .venv/bin/python -m bench.run --scenario response-cache --requests 200
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from bench.scaled import REDIS_URL, delete_redis_prefix, redis_reachable
from bench.server import ChatplaneServer, ServerConfig
from bench.stats import distribution_ms

if TYPE_CHECKING:
    from bench.scenarios import BenchEnvironment, BenchOptions

RESPONSE_CACHE = "response-cache"
MAX_REQUESTS = 500
MODEL = "mock"
KINDS = ("miss", "hit", "hit-stream")


class WrongAnswer(Exception):
    pass


def _body(question: str, *, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "chatplane": {"cache": True},
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return orjson.dumps(body)


async def _ask(
    session: aiohttp.ClientSession, url: str, key: str, body: bytes, expect: str
) -> float:
    """Seconds until the whole answer was read."""
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        data = await response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise WrongAnswer(f"status {response.status}: {data[:200]!r}")
    if response.headers.get("x-chatplane-cache") != expect:
        raise WrongAnswer(f"expected a {expect}, got {response.headers.get('x-chatplane-cache')}")
    if b'"stream":true' in body and not data.endswith(b"data: [DONE]\n\n"):
        raise WrongAnswer("the stream did not end with [DONE]")
    return elapsed


async def _measure_store(workdir: Path, options: BenchOptions, store: str) -> dict[str, Any]:
    prefix = f"bench-respcache-{uuid.uuid4().hex[:8]}"
    extra = (("CHATPLANE_REDIS_URL", REDIS_URL), ("CHATPLANE_REDIS_PREFIX", prefix))
    config = ServerConfig(
        chunks=options.chunks,
        ttft_ms=options.ttft_ms,
        chunk_delay_ms=options.chunk_delay_ms,
        extra_env=extra if store == "redis" else (),
    )
    server = ChatplaneServer(workdir / store, config)
    count = max(1, min(options.requests, MAX_REQUESTS))
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    errors: dict[str, int] = {}
    try:
        startup = await server.start(idle_settle_s=0.2)
        about = {
            "pid": server.pid,
            "shape": f"embedded: one uvicorn process, SQLite, the {store} response cache",
            "ready_s": round(startup.ready_s, 3),
            "idle_rss_mb": round(startup.idle_rss_kib / 1024, 1),
        }
        url = f"{server.base_url}/v1/chat/completions"
        timeout = aiohttp.ClientTimeout(total=options.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            known = f"the benchmark's cached question {uuid.uuid4().hex}"
            await _ask(session, url, server.api_key, _body(known, stream=False), "miss")
            for _ in range(count):
                for kind in KINDS:
                    if kind == "miss":
                        body = _body(f"a new question {uuid.uuid4().hex}", stream=False)
                    else:
                        body = _body(known, stream=kind == "hit-stream")
                    try:
                        samples[kind].append(
                            await _ask(session, url, server.api_key, body, kind.split("-")[0])
                        )
                    except (WrongAnswer, aiohttp.ClientError, TimeoutError) as exc:
                        name = type(exc).__name__
                        errors[name] = errors.get(name, 0) + 1
    finally:
        await server.stop()
        if store == "redis":
            await delete_redis_prefix(prefix)
    latency = {kind: distribution_ms(values) for kind, values in samples.items()}
    hit_p50 = latency["hit"]["p50"]
    return {
        "server": about,
        "requests_per_kind": count,
        "latency_ms": latency,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "miss_over_hit_p50": round(latency["miss"]["p50"] / hit_p50, 1) if hit_p50 else None,
    }


async def measure_response_cache(workdir: Path, options: BenchOptions) -> dict[str, Any]:
    stores: dict[str, Any] = {"memory": await _measure_store(workdir, options, "memory")}
    skipped = await redis_reachable()
    if skipped is None:
        stores["redis"] = await _measure_store(workdir, options, "redis")
    return {
        "runs": {},
        "server": stores["memory"]["server"],
        "model": {
            "name": MODEL,
            "ttft_ms": options.ttft_ms,
            "chunk_delay_ms": options.chunk_delay_ms,
            "chunks": options.chunks,
        },
        "stores": stores,
        "skipped": {"redis": skipped} if skipped else {},
        "errors": sum(store["errors"] for store in stores.values()),
    }


async def run_response_cache(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    return await measure_response_cache(env.workdir / RESPONSE_CACHE, options)
