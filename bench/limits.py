"""`limits`: what the rate, concurrency and budget checks add per request, on the
in-process stores and on Redis (the local one at 127.0.0.1:6379; its half is skipped when
Redis does not answer).

- **Direct**: a `LimitService` in this process on the real stores (`create_limit_stores`;
  on Redis with a prefix of its own, deleted at the end) and a real SQLite database in the
  run's work dir (migrated; the user and its API key with a lifetime budget made by
  `AuthService`, as `chatplane keys create --budget-usd` makes them), so the policy comes
  from the database through the service's own cache, as in `serve`. Per request, what the
  `/v1` path runs: `admit` with the per-address check `LimitMiddleware` leaves to it (one
  store call: the request's path before the model is called), then, apart,
  `Admission.finish` (after the response's last byte), as `gateway/router.py` calls them.
  `--requests` of them one after another, then `--requests` with `--concurrency` in
  flight. Each store call is timed, and every Redis command the client sends is counted
  (scripts by name).
- **End to end**: `/v1/chat/completions` (mock model, streamed) through a real `chatplane
  serve` with the limits off (every rate and concurrency setting 0, no budget) and then on
  (the same policy as the direct part, generous so nothing is refused), once per store; the
  `added` block is on minus off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from bench.clients import PROMPT
from bench.loadgen import RequestFn
from bench.procs import ManagedProcess, system_cpu
from bench.scaled import REDIS_URL, delete_redis_prefix, redis_reachable
from bench.server import BENCH_EMAIL, BENCH_PASSWORD, serving_v1
from bench.stats import distribution_ms, run_difference

if TYPE_CHECKING:
    from bench.scenarios import BenchOptions
    from chatplane.limits.protocol import (
        Admissions,
        AdmitResult,
        BudgetLedger,
        BudgetRule,
        BudgetState,
        RateDecision,
        RateLimiter,
        RateRule,
        ReserveResult,
        SlotRule,
    )
    from chatplane.limits.redis import LimitScript, ScriptRunner

LIMITS = "limits"
# On Redis, what the limits add also shows in these numbers of its runs.
REDIS_ADDED = ("redis_server_cpu_ms_per_request", "redis_scripts_per_request")
STORES = ("memory", "redis")
MODEL = "mock"
# The mock's price (USD per million prompt and completion tokens), on and off alike, so a
# request has a cost to reserve and settle.
MOCK_PRICE = (1.0, 2.0)
KEY_BUDGET_USD = 1_000_000.0
# The policy "on": every limit the brief names, far above what a run sends.
GENEROUS_LIMITS: dict[str, int] = {
    "rate_limit_key_rpm": 1_000_000,
    "rate_limit_user_rpm": 1_000_000,
    "rate_limit_key_tpm": 1_000_000_000,
    "rate_limit_user_tpm": 1_000_000_000,
    "max_concurrent_key": 10_000,
    "max_concurrent_user": 10_000,
    "rate_limit_ip_rpm": 1_000_000,
}
OFF_LIMITS: dict[str, int] = {
    **{f"rate_limit_{s}_{u}": 0 for s in ("key", "user", "tenant") for u in ("rpm", "tpm")},
    **{f"max_concurrent_{s}": 0 for s in ("key", "user", "tenant")},
    "rate_limit_ip_rpm": 0,
}
POLICY = {
    **{name: GENEROUS_LIMITS.get(name, value) for name, value in OFF_LIMITS.items()},
    "key_budget_usd": KEY_BUDGET_USD,
    "key_budget_period": "lifetime",
}
CLIENT_IP = "127.0.0.1"
ZONE = "gateway"
# Time is spent in the store calls (and the Redis round trips) in this order per request.
STORE_CALLS = ("admissions.admit", "admissions.finish")
# The scripts that run after the response's last byte; every other one is on the path.
AFTER_THE_RESPONSE = frozenset({"EVALSHA FINISH"})
KIB_PER_MB = 1024

MeasureFn = Callable[
    [str, str, RequestFn, "BenchOptions", Mapping[str, ManagedProcess]],
    Awaitable[dict[str, Any]],
]


async def measure_limits(
    workdir: Path, options: BenchOptions, measure: MeasureFn
) -> dict[str, Any]:
    """Direct, then end to end, on each store; `measure` is the scenarios' load phase."""
    missing = await redis_reachable()
    stores = ("memory",) if missing else STORES
    direct = {store: await _direct(workdir / f"direct-{store}", store, options) for store in stores}
    runs: dict[str, dict[str, Any]] = {}
    servers: dict[str, dict[str, Any]] = {}
    added: dict[str, dict[str, Any]] = {}
    for store in stores:
        for limits in ("off", "on"):
            name = f"{store}-{limits}"
            runs[name], servers[name] = await _end_to_end(
                workdir / name, name, store=store, limits=limits, options=options, measure=measure
            )
        added[store] = run_difference(runs[f"{store}-on"], runs[f"{store}-off"], extra=REDIS_ADDED)
    return {
        "server": {
            "shape": "embedded: one uvicorn process, SQLite; its limit stores in-process or "
            "on Redis (127.0.0.1)",
            "servers": servers,
        },
        "runs": runs,
        "limits": {
            "policy": POLICY,
            "redis_skipped": missing,
            "direct": direct,
            "end_to_end": added,
        },
    }


# Direct --------------------------------------------------------------------------------------


class StoreTimer:
    """Seconds per store call, kept only while `recording`."""

    def __init__(self) -> None:
        self.recording = False
        self.samples: dict[str, list[float]] = defaultdict(list)

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.recording:
                self.samples[name].append(time.perf_counter() - started)


class TimedRates:
    def __init__(self, inner: RateLimiter, timer: StoreTimer) -> None:
        self.inner = inner
        self.timer = timer

    async def check(self, partition: str, rules: Sequence[RateRule]) -> list[RateDecision]:
        # The per-address check is the same call on the "ip" partition.
        with self.timer.time("rates.check_ip" if partition == "ip" else "rates.check"):
            return await self.inner.check(partition, rules)

    async def reset(self, partition: str, key: str) -> None:
        await self.inner.reset(partition, key)

    async def close(self) -> None:
        await self.inner.close()


class TimedAdmissions:
    def __init__(self, inner: Admissions, timer: StoreTimer) -> None:
        self.inner = inner
        self.timer = timer

    async def admit(
        self,
        partition: str,
        lease_id: str,
        rates: Sequence[RateRule],
        slots: Sequence[SlotRule],
        budgets: Sequence[BudgetRule],
        amount_nano: int,
        *,
        budget_ttl_s: float,
    ) -> AdmitResult:
        with self.timer.time("admissions.admit"):
            return await self.inner.admit(
                partition, lease_id, rates, slots, budgets, amount_nano, budget_ttl_s=budget_ttl_s
            )

    async def finish(
        self,
        partition: str,
        lease_id: str,
        *,
        slots: bool,
        reservation_id: str | None,
        actual_nano: int,
        budget_keys: Sequence[str],
    ) -> None:
        with self.timer.time("admissions.finish"):
            await self.inner.finish(
                partition,
                lease_id,
                slots=slots,
                reservation_id=reservation_id,
                actual_nano=actual_nano,
                budget_keys=budget_keys,
            )

    async def close(self) -> None:
        await self.inner.close()


class TimedBudgets:
    def __init__(self, inner: BudgetLedger, timer: StoreTimer) -> None:
        self.inner = inner
        self.timer = timer

    async def reserve(
        self,
        partition: str,
        reservation_id: str,
        amount_nano: int,
        rules: Sequence[BudgetRule],
        *,
        ttl_s: float,
    ) -> ReserveResult:
        with self.timer.time("budgets.reserve"):
            return await self.inner.reserve(
                partition, reservation_id, amount_nano, rules, ttl_s=ttl_s
            )

    async def settle(
        self, partition: str, reservation_id: str, actual_nano: int, keys: Sequence[str]
    ) -> bool:
        with self.timer.time("budgets.settle"):
            return await self.inner.settle(partition, reservation_id, actual_nano, keys)

    async def seed(self, partition: str, key: str, spent_nano: int, *, ttl_s: int | None) -> None:
        with self.timer.time("budgets.seed"):
            await self.inner.seed(partition, key, spent_nano, ttl_s=ttl_s)

    async def state(self, partition: str, key: str) -> BudgetState | None:
        return await self.inner.state(partition, key)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class CommandCounter:
    """Every command the Redis client sends and every script the stores' `ScriptRunner`
    runs (one per round trip: the stores pipeline nothing on the request path), while
    `recording`. Scripts are named (`EVALSHA ADMIT`) by `names`, from their source."""

    recording: bool = False
    commands: Counter[str] = field(default_factory=Counter)
    names: dict[str, str] = field(default_factory=dict)

    def wrap(self, client: aioredis.Redis) -> None:
        send = client.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            if self.recording:
                self.commands[str(args[0]).upper()] += 1
            return await send(*args, **options)

        client.execute_command = counted  # type: ignore[method-assign]

    def wrap_scripts(self, scripts: ScriptRunner) -> None:
        run = scripts.run

        async def counted(script: LimitScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
            if self.recording:
                self.commands[f"EVALSHA {self.names.get(script.source, 'other')}"] += 1
            return await run(script, keys, args)

        scripts.run = counted  # type: ignore[method-assign]


@dataclass
class _Request:
    """One request's limit work, in seconds, or the error that ended it: `admit_s` on its
    path before the model is called (the address check included), `finish_s` after its
    response."""

    admit_s: float = 0.0
    finish_s: float = 0.0
    error: str | None = None


async def _direct(workdir: Path, store: str, options: BenchOptions) -> dict[str, Any]:
    # Imported here: every other scenario keeps chatplane (and its ~100 MB) out of the load
    # generator's process.
    from chatplane.auth.audit import AuditLog
    from chatplane.auth.secrets import Passwords
    from chatplane.auth.service import AuthService
    from chatplane.db import migrate
    from chatplane.db.base import new_id
    from chatplane.db.engine import Database, create_engine
    from chatplane.errors import ChatplaneError
    from chatplane.gateway.request import parse_request
    from chatplane.limits import create_limit_stores, redis_scripts
    from chatplane.limits.service import AddressCheck, LimitService
    from chatplane.providers.tokens import estimate_prompt_tokens, prompt_tokens_bound
    from chatplane.settings import Settings

    prefix = f"chatplane-bench-limits-{uuid.uuid4().hex[:12]}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=workdir / "data",
        database_url=f"sqlite+aiosqlite:///{(workdir / 'data' / 'chatplane.db').resolve()}",
        redis_url=REDIS_URL if store == "redis" else None,
        redis_prefix=prefix,
        password_time_cost=1,
        password_memory_kib=1024,
        **{**OFF_LIMITS, **GENEROUS_LIMITS},
    )
    await migrate.upgrade(settings.resolved_database_url)
    db = Database(create_engine(settings))
    stores = create_limit_stores(settings)
    timer = StoreTimer()
    counter = CommandCounter() if stores.redis is not None else None
    if counter is not None:
        counter.names = {
            getattr(redis_scripts, name): name
            for name in ("ADMIT", "FINISH", "RATE_CHECK", "RESERVE", "SETTLE", "BUDGET_STATE")
        }
    if counter is not None and stores.redis is not None:
        counter.wrap(stores.redis)
        if stores.scripts is not None:
            counter.wrap_scripts(stores.scripts)
    try:
        auth = AuthService(db, settings, Passwords(settings), AuditLog(db))
        await auth.create_user(BENCH_EMAIL, BENCH_PASSWORD)
        _, api_key = await auth.create_api_key(BENCH_EMAIL, "bench", budget_usd=KEY_BUDGET_USD)
        principal = await auth.authenticate_api_key(api_key)
        timed = dataclasses.replace(
            stores,
            rates=TimedRates(stores.rates, timer),
            budgets=TimedBudgets(stores.budgets, timer),
            admissions=TimedAdmissions(stores.admissions, timer),
        )
        service = LimitService(settings, db, timed)
        # What `gateway/router.py` `_admit` computes for the bench's request.
        request = parse_request(
            orjson.dumps(
                {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
            )
        )
        max_out = request.max_tokens or settings.max_output_tokens
        input_price, output_price = MOCK_PRICE
        worst_usd = (
            prompt_tokens_bound(request.messages) * input_price + max_out * output_price
        ) / 1e6
        tokens = estimate_prompt_tokens(request.messages) + max_out
        # About one completion token per mock chunk, as the gateway counts them.
        actual_usd = (
            estimate_prompt_tokens(request.messages) * input_price + options.chunks * output_price
        ) / 1e6

        async def measure() -> tuple[int, float]:
            return tokens, worst_usd

        async def one() -> _Request:
            done = _Request()
            started = time.perf_counter()
            try:
                admission = await service.admit(
                    principal,
                    lease_id=new_id(),
                    zone=ZONE,
                    measure=measure,
                    count_request=True,
                    address=AddressCheck(ZONE, CLIENT_IP),  # as LimitMiddleware leaves it
                )
                admitted = time.perf_counter()
                await admission.finish(actual_usd)
                finished = time.perf_counter()
            except ChatplaneError as exc:
                done.error = exc.code
                return done
            done.admit_s = admitted - started
            done.finish_s = finished - admitted
            return done

        for _ in range(options.warmup):  # policy loaded, budget seeded, scripts cached
            await one()
        phases = {
            "sequential": await _direct_phase(one, 1, options.requests, timer, counter),
            "concurrent": await _direct_phase(
                one, options.concurrency, options.requests, timer, counter
            ),
        }
        if stores.redis is not None:
            phases["ping"] = await _ping_floor(stores.redis, options.requests)
        return {"store": store, "redis_prefix": prefix if stores.redis else None, **phases}
    finally:
        await stores.close()
        await db.close()
        if store == "redis":
            await delete_redis_prefix(prefix)


async def _direct_phase(
    one: Callable[[], Awaitable[_Request]],
    concurrency: int,
    requests: int,
    timer: StoreTimer,
    counter: CommandCounter | None,
) -> dict[str, Any]:
    results: list[_Request] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            results.append(await one())

    timer.samples.clear()
    commands: Counter[str] = Counter()
    if counter is not None:
        counter.commands = commands
    redis_before = await _redis_server() if counter is not None else None
    system_before = system_cpu()
    cpu_before = time.process_time()
    started = time.perf_counter()
    timer.recording = True
    if counter is not None:
        counter.recording = True
    try:
        await asyncio.gather(*(worker() for _ in range(min(concurrency, requests))))
    finally:
        timer.recording = False
        if counter is not None:
            counter.recording = False
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    system_after = system_cpu()
    redis_after = await _redis_server() if redis_before is not None else None
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    sent = sum(commands.values())
    on_path = sum(n for name, n in commands.items() if name not in AFTER_THE_RESPONSE)
    busy = system_after.busy_s - system_before.busy_s
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "requests_ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(len(ok) / elapsed, 1) if elapsed > 0 else None,
        # What a /v1 request waits for before its model is called: the admission, with the
        # per-address check (one store call).
        "request_path_ms": distribution_ms([r.admit_s for r in ok]),
        # After the response's last byte: the slot given back and the budget settled.
        "finish_ms": distribution_ms([r.finish_s for r in ok]),
        # Both: everything the limits do for one /v1 request.
        "request_ms": distribution_ms([r.admit_s + r.finish_s for r in ok]),
        "store_ms": {
            name: distribution_ms(timer.samples[name])
            for name in (*STORE_CALLS, *sorted(set(timer.samples) - set(STORE_CALLS)))
            if timer.samples.get(name)
        },
        "cpu_ms_per_request": round(cpu_s * 1000 / len(ok), 4) if ok else None,
        "redis_round_trips_per_request": (
            round(sent / len(results), 3) if counter is not None and results else None
        ),
        "redis_round_trips_on_path_per_request": (
            round(on_path / len(results), 3) if counter is not None and results else None
        ),
        "redis_commands": dict(commands.most_common()),
        **(
            redis_before.per_request(redis_after, len(results))
            if redis_before is not None and redis_after is not None
            else {}
        ),
        "machine_cpu": {
            "busy_cores": round(busy / elapsed, 3) if elapsed > 0 else None,
            "other_cores": round(max(0.0, busy - cpu_s) / elapsed, 3) if elapsed > 0 else None,
            "steal_cores": (
                round((system_after.steal_s - system_before.steal_s) / elapsed, 3)
                if elapsed > 0
                else None
            ),
        },
    }


async def _ping_floor(client: aioredis.Redis, requests: int) -> dict[str, Any]:
    """One PING at a time on the stores' own client: what any round trip costs here."""
    took: list[float] = []
    cpu_before = time.process_time()
    for _ in range(requests):
        started = time.perf_counter()
        await client.ping()
        took.append(time.perf_counter() - started)
    cpu_s = time.process_time() - cpu_before
    return {
        "requests": requests,
        "round_trip_ms": distribution_ms(took),
        "cpu_ms_per_round_trip": round(cpu_s * 1000 / requests, 4) if requests else None,
    }


@dataclass(frozen=True, slots=True)
class RedisServerStats:
    """The Redis server's counters so far: every client's work, not only this bench's."""

    cpu_s: float
    script_calls: int  # EVALSHA commands
    script_us: int  # time spent running them, in Redis (the Lua and the calls it makes)

    def per_request(self, later: RedisServerStats, requests: int) -> dict[str, float | None]:
        calls = later.script_calls - self.script_calls
        return {
            "redis_server_cpu_ms_per_request": (
                round((later.cpu_s - self.cpu_s) * 1000 / requests, 4) if requests else None
            ),
            "redis_scripts_per_request": round(calls / requests, 3) if requests else None,
            "redis_script_us_per_call": (
                round((later.script_us - self.script_us) / calls, 2) if calls else None
            ),
        }


async def _redis_server() -> RedisServerStats | None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        cpu = await client.info("cpu")
        commands = await client.info("commandstats")
    except (OSError, aioredis.RedisError):
        return None
    finally:
        await client.aclose()
    evalsha = commands.get("cmdstat_evalsha", {})
    return RedisServerStats(
        cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        script_calls=int(evalsha.get("calls", 0)),
        script_us=int(evalsha.get("usec", 0)),
    )


# End to end ------------------------------------------------------------------------------


async def _end_to_end(
    workdir: Path,
    name: str,
    *,
    store: str,
    limits: str,
    options: BenchOptions,
    measure: MeasureFn,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One `serve` with this store and the limits on or off, loaded like `v1-mock`."""
    prefix = f"chatplane-bench-limits-{uuid.uuid4().hex[:12]}"
    env = {"CHATPLANE_MODEL_PRICES": orjson.dumps({MODEL: MOCK_PRICE}).decode()}
    if store == "redis":
        env |= {"CHATPLANE_REDIS_URL": REDIS_URL, "CHATPLANE_REDIS_PREFIX": prefix}
    if limits == "on":
        env |= {f"CHATPLANE_{key.upper()}": str(value) for key, value in GENEROUS_LIMITS.items()}
    budget = KEY_BUDGET_USD if limits == "on" else None
    try:
        async with serving_v1(
            workdir, options, model=MODEL, extra_env=env, key_budget_usd=budget
        ) as target:
            redis_before = await _redis_server() if store == "redis" else None
            run = await measure(LIMITS, name, target.client, options, target.processes)
            redis_after = await _redis_server() if redis_before is not None else None
        if redis_before is not None and redis_after is not None:
            # Over the warm-up too: the counters cannot be read when the measured part starts.
            run.update(redis_before.per_request(redis_after, options.warmup + run["requests"]))
        described = {
            **target.described(),
            "store": store,
            "limits": limits,
            "redis_prefix": prefix if store == "redis" else None,
        }
        return run, described
    finally:
        if store == "redis":
            await delete_redis_prefix(prefix)
