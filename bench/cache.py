"""`cache`: what the principal and policy cache saves on the gateway's hot path.

Every `/v1` request turns its API key into a principal (`AuthService.authenticate_api_key`)
and reads its tenant's limits (`LimitService.policy`). Both go through `chatplane.cache`.

- **Direct**: those two calls, in this process, on a real SQLite database in the run's work
  dir (migrated; the key made by `AuthService`), `--requests` times one after another, per
  variant: `off` (a cache that keeps nothing: every call reads the database, as with
  `CHATPLANE_CACHE_MAX_ITEMS=0`), `local` (the in-process tier, as served), and, when the
  local Redis answers, `redis` (an in-process tier that keeps nothing in front of Redis: each
  call is one Redis round trip, what a process pays after an invalidation or a local
  expiry). CPU per lookup is `time.process_time()` (this process's CPU, the event loop and
  the drivers' threads included); wall time per lookup as a distribution.
- **End to end**: `/v1/chat/completions` (mock model, streamed, as in `v1-mock`) through a
  real `chatplane serve` with `CHATPLANE_CACHE_MAX_ITEMS=0` and then with the defaults;
  `saved` is off minus on.

    .venv/bin/python -m bench.run --scenario cache --requests 2000
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import ManagedProcess
from bench.scaled import REDIS_URL, delete_redis_prefix, redis_reachable
from bench.server import BENCH_EMAIL, BENCH_PASSWORD, serving_v1
from bench.stats import distribution_ms

if TYPE_CHECKING:
    from bench.loadgen import RequestFn
    from bench.scenarios import BenchEnvironment, BenchOptions

    MeasureFn = Callable[
        [str, str, RequestFn, BenchOptions, Mapping[str, ManagedProcess]],
        Awaitable[dict[str, Any]],
    ]

CACHE = "cache"
MODEL = "mock"
VARIANTS = ("off", "local", "redis")
MAX_DIRECT = 5000


async def _direct_variant(workdir: Path, variant: str, requests: int) -> dict[str, Any]:
    from chatplane.auth.audit import AuditLog
    from chatplane.auth.secrets import Passwords
    from chatplane.auth.service import AuthService
    from chatplane.cache import Cache, LocalCache
    from chatplane.db import migrate
    from chatplane.db.engine import Database, create_engine
    from chatplane.limits import create_limit_stores
    from chatplane.limits.service import LimitService
    from chatplane.settings import Settings

    data = workdir / variant
    await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
    prefix = f"chatplane-bench-cache-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data,
        redis_prefix=prefix,
        password_time_cost=1,
        password_memory_kib=1024,
    )
    await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    cache: Cache
    if variant == "redis":
        from chatplane.cache.redis import RedisTier, connect
        from chatplane.cache.tiered import TwoTierCache

        remote = RedisTier(connect(REDIS_URL), key_prefix=prefix, ttl_s=settings.cache_ttl_s)
        cache = TwoTierCache(LocalCache(ttl_s=1.0, max_items=0), remote, redis_url=REDIS_URL)
        await cache.start()
    else:
        cache = LocalCache(
            ttl_s=settings.cache_local_ttl_s,
            max_items=settings.cache_max_items if variant == "local" else 0,
        )
    stores = create_limit_stores(settings)
    try:
        auth = AuthService(db, settings, Passwords(settings), AuditLog(db), cache)
        limits = LimitService(settings, db, stores, cache=cache)
        await auth.create_user(BENCH_EMAIL, BENCH_PASSWORD)
        _, api_key = await auth.create_api_key(BENCH_EMAIL, "bench")

        async def lookup() -> None:
            principal = await auth.authenticate_api_key(api_key)
            await limits.policy(principal.tenant_id)

        for _ in range(min(50, requests)):  # warm-up: caches, connections, code paths
            await lookup()
        walls: list[float] = []
        cpu_start = time.process_time()
        for _ in range(requests):
            started = time.perf_counter()
            await lookup()
            walls.append(time.perf_counter() - started)
        cpu_s = time.process_time() - cpu_start
        await limits.close()
    finally:
        await cache.close()
        await stores.close()
        await db.close()
        if variant == "redis":
            await delete_redis_prefix(prefix)
    return {
        "lookups": requests,
        "cpu_ms_per_lookup": round(cpu_s * 1000 / requests, 4),
        "wall_ms": distribution_ms(walls),
    }


async def _end_to_end(
    workdir: Path, name: str, cache_on: bool, options: BenchOptions, measure: MeasureFn
) -> tuple[dict[str, Any], dict[str, Any]]:
    env = {} if cache_on else {"CHATPLANE_CACHE_MAX_ITEMS": "0"}
    async with serving_v1(workdir / name, options, model=MODEL, extra_env=env) as target:
        run = await measure(CACHE, name, target.client, options, target.processes)
    described = {
        **target.described(),
        "cache": "defaults" if cache_on else "CHATPLANE_CACHE_MAX_ITEMS=0",
    }
    return run, described


async def measure_cache(workdir: Path, options: BenchOptions, measure: MeasureFn) -> dict[str, Any]:
    requests = min(options.requests, MAX_DIRECT)
    skipped = await redis_reachable()
    variants = [v for v in VARIANTS if v != "redis" or skipped is None]
    direct = {v: await _direct_variant(workdir / "direct", v, requests) for v in variants}
    runs: dict[str, dict[str, Any]] = {}
    servers: dict[str, dict[str, Any]] = {}
    for name, cache_on in (("cache-off", False), ("cache-on", True)):
        runs[name], servers[name] = await _end_to_end(workdir, name, cache_on, options, measure)
    off, on = runs["cache-off"], runs["cache-on"]
    return {
        "server": {
            "shape": "embedded: one uvicorn process, SQLite; CHATPLANE_CACHE_MAX_ITEMS=0, "
            "then the defaults",
            # The report's one-line summary describes the server with the cache on.
            **{k: servers["cache-on"][k] for k in ("pid", "ready_s", "idle_rss_mb")},
            "servers": servers,
        },
        "runs": runs,
        "errors": 0,
        "cache": {
            "direct": direct,
            "skipped": {"redis": skipped} if skipped else {},
            "saved_per_request": {
                "cpu_ms": _minus(
                    off["cpu_ms_per_request"]["chatplane"], on["cpu_ms_per_request"]["chatplane"]
                ),
                "total_ms_p50": _minus(off["total_ms"]["p50"], on["total_ms"]["p50"]),
                "total_ms_p99": _minus(off["total_ms"]["p99"], on["total_ms"]["p99"]),
            },
        },
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


async def run_cache(env: BenchEnvironment, options: BenchOptions) -> dict[str, Any]:
    from bench.scenarios import measure

    return await measure_cache(env.workdir / CACHE, options, measure)
