"""The Redis tier and the invalidation channel of the scaled shape.

Values are JSON (orjson) under `{prefix}:cache:{namespace}:{key}`, each with a TTL. An
invalidation deletes the key and publishes `{"ns", "key", "from"}` on
`{prefix}:cache:invalidate`; every process holds one subscriber connection and drops its
in-process entry on receipt. When that connection is (re)established the in-process tier is
cleared, since what was published meanwhile is lost.

Every call has a short timeout. A failure is logged and counted, and the tier is skipped for
a moment (so a Redis that is down costs one timeout, not one per request)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import structlog
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from chatplane.observability import metrics

log = structlog.get_logger("chatplane.cache")

CALL_TIMEOUT_S = 0.5
SKIP_AFTER_ERROR_S = 1.0
PING_EVERY_S = 2.0
SILENT_LIMIT_S = 3 * PING_EVERY_S  # no answer to pings for this long: reconnect
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0
SCAN_BATCH = 500
_FAILURES = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ResponseError,
    OSError,
    TimeoutError,
)

# Called for each invalidation received: (namespace, key or None for all), whether another
# process sent it.
Receiver = Callable[[str, str | None, bool], None]
# Called each time the subscription is (re)established.
Reconnected = Callable[[], None]


def connect(url: str) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=32,
        timeout=CALL_TIMEOUT_S,
        socket_connect_timeout=CALL_TIMEOUT_S,
        socket_timeout=CALL_TIMEOUT_S,
    )
    return Redis.from_pool(pool)


class RedisTier:
    """Encoded values in Redis, and the invalidations of every process."""

    def __init__(self, client: Redis, *, key_prefix: str, ttl_s: float) -> None:
        self._client = client
        self._prefix = f"{key_prefix}:cache:"
        self.channel = f"{key_prefix}:cache:invalidate"
        self.ttl_s = ttl_s
        self.origin = uuid.uuid4().hex  # this process, in the messages it sends
        self._skip_until = 0.0
        self._lookups: dict[str, tuple[Any, Any]] = {}

    def key(self, namespace: str, key: str) -> str:
        return f"{self._prefix}{namespace}:{key}"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._skip_until

    @contextlib.asynccontextmanager
    async def _call(self, op: str, **context: object) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                yield
        except _FAILURES as exc:
            self._skip_until = time.monotonic() + SKIP_AFTER_ERROR_S
            metrics.cache_error(op)
            log.warning("cache_redis_failed", op=op, error=repr(exc), **context)
            raise CacheStoreDown(op) from exc

    def _count(self, namespace: str) -> tuple[Any, Any]:
        counters = self._lookups.get(namespace)
        if counters is None:
            counters = self._lookups[namespace] = metrics.cache_lookup_counters(namespace, "redis")
        return counters

    async def get(self, namespace: str, key: str) -> tuple[Any, float] | None:
        """The decoded JSON and its time left in seconds, or None."""
        async with (
            self._call("get", cache=namespace),
            self._client.pipeline(transaction=False) as pipe,
        ):
            pipe.get(self.key(namespace, key))
            pipe.pttl(self.key(namespace, key))
            raw, pttl = await pipe.execute()
        hit, miss = self._count(namespace)
        if raw is None:
            miss.inc()
            return None
        hit.inc()
        return orjson.loads(raw), max(0.001, int(pttl) / 1000)

    async def put(self, namespace: str, key: str, data: Any, ttl_s: float | None) -> None:
        ttl = self.ttl_s if ttl_s is None else min(ttl_s, self.ttl_s)
        if ttl <= 0:
            return
        async with self._call("put", cache=namespace):
            await self._client.set(
                self.key(namespace, key), orjson.dumps(data), px=max(1, int(ttl * 1000))
            )

    async def invalidate(self, namespace: str, key: str | None) -> None:
        """Delete the key (None: every key of the namespace), then tell every process."""
        if key is None:
            await self._delete_namespace(namespace)
        message = orjson.dumps({"ns": namespace, "key": key, "from": self.origin})
        async with (
            self._call("invalidate", cache=namespace),
            self._client.pipeline(transaction=False) as pipe,
        ):
            if key is not None:
                pipe.delete(self.key(namespace, key))
            pipe.publish(self.channel, message)
            await pipe.execute()

    async def _delete_namespace(self, namespace: str) -> None:
        """In batches, each under its own timeout (a rare step: a tenant disabled)."""
        cursor: int = 0
        while True:
            async with self._call("invalidate", cache=namespace):
                cursor, keys = await self._client.scan(
                    cursor, match=self.key(namespace, "*"), count=SCAN_BATCH
                )
                if keys:
                    await self._client.unlink(*keys)
            if cursor == 0:
                return

    async def close(self) -> None:
        await self._client.aclose()


class CacheStoreDown(Exception):
    """A Redis call of the cache failed (already logged and counted)."""


class InvalidationListener:
    """One subscriber connection per process on the invalidation channel, reconnecting
    for as long as the process runs."""

    def __init__(
        self, url: str, channel: str, *, origin: str, received: Receiver, reconnected: Reconnected
    ) -> None:
        self.client_name = f"{channel}:{origin[:12]}"  # tells processes apart in CLIENT LIST
        self._client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=CALL_TIMEOUT_S,
            socket_timeout=SILENT_LIMIT_S,
            client_name=self.client_name,
        )
        self._channel = channel
        self._origin = origin.encode()
        self._received = received
        self._reconnected = reconnected
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self._outage_logged = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cache-invalidations")

    async def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the first subscription is up within `timeout_s` (start-up goes on
        without it: the in-process tier is cleared when it comes)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.subscribed.wait()
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            try:
                await self._listen()
            except _FAILURES as exc:
                metrics.cache_error("subscribe")
                if not self._outage_logged:  # once per outage; later attempts only count
                    log.warning("cache_invalidations_lost", error=repr(exc))
                    self._outage_logged = True
            if self.subscribed.is_set():  # it was up until now: retry at once
                self.subscribed.clear()
                delay = RECONNECT_MIN_S
            await asyncio.sleep(delay)  # back-off between attempts, not a wait for a state
            delay = min(RECONNECT_MAX_S, delay * 2)

    async def _listen(self) -> None:
        async with self._client.pubsub() as pubsub:
            async with asyncio.timeout(CALL_TIMEOUT_S * 4):
                await pubsub.subscribe(self._channel)
            heard = time.monotonic()
            pinged = heard
            while True:
                message = await pubsub.get_message(timeout=PING_EVERY_S / 2)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    self._handle(message)
                if now - pinged >= PING_EVERY_S:
                    await pubsub.ping()
                    pinged = now
                if now - heard > SILENT_LIMIT_S:
                    raise redis_errors.TimeoutError("the invalidation channel went silent")

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Whatever was published while not subscribed is lost: start from nothing.
            self._reconnected()
            self.subscribed.set()
            self._outage_logged = False
            log.info("cache_invalidations_subscribed", channel=self._channel)
        elif kind == "message":
            try:
                data = orjson.loads(message["data"])
                namespace, key, origin = str(data["ns"]), data.get("key"), data.get("from")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("cache_invalidation_unreadable", channel=self._channel)
                return
            from_other = str(origin).encode() != self._origin
            self._received(namespace, None if key is None else str(key), from_other)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()
