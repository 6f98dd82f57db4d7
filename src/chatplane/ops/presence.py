"""Which processes make up the deployment. Every process (API processes and workers)
announces itself every `presence_interval_s`: who it is, and what it is doing (turns running
on a worker, drain and model calls in flight on an API process). A process that stops
withdraws its entry; one that dies (kill -9) stops announcing, shows as stale after
`STALE_AFTER_BEATS` intervals and is dropped after `PRUNE_AFTER_BEATS`.

Two stores share one small protocol: in-process (the embedded shape is one process) and
Redis (one hash, one `HSET` per heartbeat; stale entries are pruned when listed). Times are
wall-clock seconds, since processes on several hosts compare them.

Each announcement also carries the process's metrics snapshot (`chatplane.ops.snapshot`),
and each heartbeat hands over the users it saw authenticate since the last one, for the
live operations dashboard (`chatplane.ops.dashboard`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
import structlog

from chatplane import __version__
from chatplane.chat.worker import consumer_name
from chatplane.errors import ServiceUnavailable
from chatplane.ops.snapshot import take_snapshot
from chatplane.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from chatplane.chat.worker import TurnWorker
    from chatplane.ops.drain import Drain

log = structlog.get_logger("chatplane.presence")

ProcessKind = Literal["api", "worker"]
STALE_AFTER_BEATS = 3
PRUNE_AFTER_BEATS = 10
ACTIVE_USERS_WINDOW_S = 300.0  # "active users": seen authenticating in the last 5 minutes
_REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    id: str  # host-pid, the same name the process's turn worker claims jobs with
    kind: ProcessKind
    host: str
    pid: int
    version: str
    started_at: float  # Unix time
    seen_at: float  # Unix time of the last announcement
    running_turns: int | None = None  # processes that run turns
    concurrency: int | None = None
    draining: bool | None = None  # API processes
    inflight: int | None = None  # model calls in flight (API processes)
    metrics: dict[str, Any] | None = None  # `MetricsSnapshot.dump()` for the dashboard

    def dump(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def load(cls, raw: str | bytes) -> ProcessInfo:
        fields: dict[str, Any] = orjson.loads(raw)
        known = cls.__dataclass_fields__  # a newer process may say more: ignore the rest
        return cls(**{name: value for name, value in fields.items() if name in known})


@dataclass(frozen=True, slots=True)
class SeenProcess:
    info: ProcessInfo
    seen_s_ago: float
    stale: bool


class PresenceStore(Protocol):
    async def announce(self, info: ProcessInfo) -> None:
        """Record (or refresh) the entry of one process."""

    async def withdraw(self, process_id: str) -> None:
        """Remove the entry of a process that stops."""

    async def processes(self, *, seen_since: float) -> list[ProcessInfo]:
        """Every entry seen at or after `seen_since`; older ones are dropped."""

    async def mark_active(self, user_ids: Iterable[str], *, at: float) -> None:
        """These users were seen at `at`; anyone not seen for `ACTIVE_USERS_WINDOW_S` goes."""

    async def count_active(self, *, since: float) -> int:
        """How many users were seen at or after `since`."""

    async def close(self) -> None: ...


class MemoryPresenceStore:
    """The embedded shape: the one process is the whole deployment."""

    def __init__(self) -> None:
        self._entries: dict[str, ProcessInfo] = {}
        self._active: dict[str, float] = {}

    async def announce(self, info: ProcessInfo) -> None:
        self._entries[info.id] = info

    async def withdraw(self, process_id: str) -> None:
        self._entries.pop(process_id, None)

    async def processes(self, *, seen_since: float) -> list[ProcessInfo]:
        for process_id in [k for k, v in self._entries.items() if v.seen_at < seen_since]:
            del self._entries[process_id]
        return list(self._entries.values())

    async def mark_active(self, user_ids: Iterable[str], *, at: float) -> None:
        for user_id in user_ids:
            self._active[user_id] = at
        cutoff = at - ACTIVE_USERS_WINDOW_S
        for user_id in [k for k, seen in self._active.items() if seen < cutoff]:
            del self._active[user_id]

    async def count_active(self, *, since: float) -> int:
        return sum(1 for seen in self._active.values() if seen >= since)

    async def close(self) -> None:
        self._entries.clear()
        self._active.clear()


class RedisPresenceStore:
    """One hash `{prefix}:ops:processes`: a field per process, its JSON as the value; and
    one sorted set `{prefix}:ops:active_users`: user ids scored by when last seen."""

    def __init__(self, url: str, *, key_prefix: str) -> None:
        from redis.asyncio import Redis

        self.key = f"{key_prefix}:ops:processes"
        self.active_key = f"{key_prefix}:ops:active_users"
        self._client: Redis = Redis.from_url(
            url,
            decode_responses=True,
            max_connections=4,
            socket_connect_timeout=_REDIS_TIMEOUT_S,
            socket_timeout=_REDIS_TIMEOUT_S,
            client_name=f"{key_prefix}-presence",
        )

    async def announce(self, info: ProcessInfo) -> None:
        async with self._call():
            await self._client.hset(self.key, info.id, info.dump())

    async def withdraw(self, process_id: str) -> None:
        async with self._call():
            await self._client.hdel(self.key, process_id)

    async def processes(self, *, seen_since: float) -> list[ProcessInfo]:
        async with self._call():
            raw: dict[Any, Any] = await self._client.hgetall(self.key)
        found: list[ProcessInfo] = []
        gone: list[str] = []
        for field, value in raw.items():
            try:
                info = ProcessInfo.load(value)
            except (ValueError, TypeError):  # not a process entry at all: drop it
                gone.append(field)
                continue
            if info.seen_at >= seen_since:
                found.append(info)
            else:
                gone.append(field)
        if gone:
            async with self._call():
                await self._client.hdel(self.key, *gone)
        return found

    async def mark_active(self, user_ids: Iterable[str], *, at: float) -> None:
        scores = dict.fromkeys(user_ids, at)
        async with self._call():
            pipe = self._client.pipeline(transaction=False)
            if scores:
                pipe.zadd(self.active_key, scores)
            pipe.zremrangebyscore(self.active_key, "-inf", f"({at - ACTIVE_USERS_WINDOW_S}")
            await pipe.execute()

    async def count_active(self, *, since: float) -> int:
        async with self._call():
            return int(await self._client.zcount(self.active_key, since, "+inf"))

    async def close(self) -> None:
        await self._client.aclose()

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        from redis import exceptions as redis_errors

        from chatplane.observability.metrics import redis_error

        try:
            yield
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            redis_error("presence")
            raise ServiceUnavailable(f"Redis is unavailable: {exc}") from exc


class Presence:
    """This process's announcements, and the list of every process."""

    def __init__(
        self,
        store: PresenceStore,
        *,
        kind: ProcessKind,
        interval_s: float,
        concurrency: int | None = None,
        process_id: str | None = None,
    ) -> None:
        self.store = store
        self.kind = kind
        self.interval_s = interval_s
        self.concurrency = concurrency
        self.id = process_id or consumer_name()
        self.host, _, pid = self.id.rpartition("-")
        self.pid = int(pid) if pid.isdigit() else 0
        self.started_at = time.time()
        # Set once known: the turn worker by `build_services`, the drain by the API routes.
        self.worker: TurnWorker | None = None
        self.drain: Drain | None = None
        self._task: asyncio.Task[None] | None = None
        self._users_seen: set[str] = set()  # since the last heartbeat

    def snapshot(self) -> ProcessInfo:
        runs_turns = self.worker is not None
        return ProcessInfo(
            id=self.id,
            kind=self.kind,
            host=self.host,
            pid=self.pid,
            version=__version__,
            started_at=self.started_at,
            seen_at=time.time(),
            running_turns=self.worker.running_turns if self.worker is not None else None,
            concurrency=self.concurrency if runs_turns else None,
            draining=self.drain.draining if self.drain is not None else None,
            inflight=self.drain.inflight if self.drain is not None else None,
            metrics=take_snapshot().dump(),
        )

    def watch_drain(self, drain: Drain) -> None:
        self.drain = drain

    def saw_user(self, user_id: str) -> None:
        """A user authenticated (a set insert: the store hears of it at the next beat)."""
        self._users_seen.add(user_id)

    async def beat(self) -> None:
        await self.store.announce(self.snapshot())
        await self.flush_users()

    async def flush_users(self) -> None:
        users, self._users_seen = self._users_seen, set()
        try:
            await self.store.mark_active(users, at=time.time())
        except ServiceUnavailable:
            self._users_seen |= users  # told at the next beat instead
            raise

    async def active_users(self) -> int:
        """Users seen in the last `ACTIVE_USERS_WINDOW_S`, across every process."""
        await self.flush_users()
        return await self.store.count_active(since=time.time() - ACTIVE_USERS_WINDOW_S)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._beat_loop(), name="presence")

    async def _beat_loop(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
            except ServiceUnavailable as exc:
                if not failing:  # once per outage, not once per beat
                    log.warning("presence_unavailable", error=exc.detail)
                failing = True
            else:
                failing = False
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        """Stop announcing and withdraw this process's entry."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(ServiceUnavailable):
            await self.store.withdraw(self.id)
        await self.store.close()

    async def processes(self) -> list[SeenProcess]:
        """Every process seen lately, this one first, then by kind and id."""
        now = time.time()
        entries = await self.store.processes(seen_since=now - PRUNE_AFTER_BEATS * self.interval_s)
        listed = {info.id: info for info in entries}
        listed[self.id] = self.snapshot()  # what this process says now, not a beat ago
        seen = [
            SeenProcess(
                info,
                seen_s_ago=round(max(0.0, now - info.seen_at), 3),
                stale=now - info.seen_at > STALE_AFTER_BEATS * self.interval_s,
            )
            for info in listed.values()
        ]
        seen.sort(key=lambda p: (p.info.id != self.id, p.info.kind, p.info.id))
        return seen


def create_presence(
    settings: Settings, kind: ProcessKind, worker: TurnWorker | None = None
) -> Presence:
    """The presence of this process (on Redis when `CHATPLANE_REDIS_URL` is set), started."""
    store: PresenceStore
    if settings.redis_url:
        store = RedisPresenceStore(settings.redis_url, key_prefix=settings.redis_prefix)
    else:
        store = MemoryPresenceStore()
    presence = Presence(
        store,
        kind=kind,
        interval_s=settings.presence_interval_s,
        concurrency=settings.turn_concurrency,
    )
    presence.worker = worker
    presence.start()
    return presence
