"""Where gateway usage goes when the database cannot take it before the process stops.

A journal holds batches of records (each a list of the rows the recorder would insert, ids
included). `spill` appends batches; `claim` hands one batch to one process, which inserts it
and then calls `done`, or `release` if the database refused it. A claim that is neither done
nor released in `CLAIM_TIMEOUT_S` (its process died mid-replay) can be claimed again: the
rows keep their ids and the insert skips ids already stored, so a batch replayed twice is
stored once.

Two kinds, one protocol: a file per batch in the data dir (the embedded shape: one process,
one disk), or Redis (`{prefix}:{usage}:journal`, a list of batches, and `{prefix}:{usage}:
claimed`, a sorted set of claimed batches scored by when their claim runs out), so another
replica picks up what a stopped one spilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from chatplane.observability import metrics
from chatplane.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

Row = dict[str, object]

CLAIM_TIMEOUT_S = 120.0
REDIS_TIMEOUT_S = 5.0
JOURNAL_DIR = "usage-journal"


class JournalUnavailable(Exception):
    """The journal could not be read or written (disk, Redis)."""


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    rows: list[Row]
    handle: Any  # the journal's own reference to the claimed batch


class UsageJournal(Protocol):
    async def spill(self, batches: list[list[Row]]) -> None: ...

    async def claim(self) -> ClaimedBatch | None: ...

    async def done(self, batch: ClaimedBatch) -> None: ...

    async def release(self, batch: ClaimedBatch) -> None: ...

    async def close(self) -> None: ...


def dump_batch(rows: list[Row]) -> bytes:
    return orjson.dumps(rows)


def load_batch(data: bytes | str) -> list[Row]:
    rows: list[Row] = orjson.loads(data)
    for row in rows:
        created_at = row.get("created_at")
        if isinstance(created_at, str):
            row["created_at"] = datetime.fromisoformat(created_at)
    return rows


class FileUsageJournal:
    """`<data dir>/usage-journal/`: `pending-*.json`, one batch each, written to a temporary
    file, fsynced and renamed (mode 0600); a claim renames one to `claimed-<deadline>-*.json`
    (a rename succeeds for one process only), `done` deletes it."""

    def __init__(self, directory: Path, *, claim_timeout_s: float = CLAIM_TIMEOUT_S) -> None:
        self.directory = directory
        self.claim_timeout_s = claim_timeout_s

    async def spill(self, batches: list[list[Row]]) -> None:
        with _disk_errors():
            await asyncio.to_thread(self._spill, [dump_batch(rows) for rows in batches])

    def _spill(self, payloads: list[bytes]) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for payload in payloads:
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
            temporary = self.directory / f"tmp-{name}"
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(payload)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.directory / f"pending-{name}")
            except BaseException:
                with contextlib.suppress(OSError):
                    temporary.unlink()
                raise
        self._sync_directory()

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    async def claim(self) -> ClaimedBatch | None:
        with _disk_errors():
            return await asyncio.to_thread(self._claim)

    def _claim(self) -> ClaimedBatch | None:
        if not self.directory.is_dir():
            return None
        now = time.time()
        names = sorted(os.listdir(self.directory))
        candidates = [name for name in names if name.startswith("pending-")]
        for name in names:  # claims whose process never finished them
            if name.startswith("claimed-") and float(name.split("-")[1]) <= now:
                candidates.insert(0, name)
        for name in candidates:
            stem = name.split("-", 1 if name.startswith("pending-") else 2)[-1]
            claimed = self.directory / f"claimed-{now + self.claim_timeout_s:.3f}-{stem}"
            try:
                os.rename(self.directory / name, claimed)
            except FileNotFoundError:  # another process took it first
                continue
            try:
                return ClaimedBatch(load_batch(claimed.read_bytes()), claimed)
            except (ValueError, TypeError, AttributeError):  # not a batch: kept for a person
                os.rename(claimed, self.directory / f"corrupt-{stem}")
        return None

    async def done(self, batch: ClaimedBatch) -> None:
        path: Path = batch.handle
        with _disk_errors():
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def release(self, batch: ClaimedBatch) -> None:
        path: Path = batch.handle
        stem = path.name.split("-", 2)[-1]
        with _disk_errors(), contextlib.suppress(FileNotFoundError):  # reclaimed meanwhile
            await asyncio.to_thread(os.rename, path, self.directory / f"pending-{stem}")

    async def close(self) -> None:
        return None


@contextlib.contextmanager
def _disk_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise JournalUnavailable(f"usage journal: {type(exc).__name__}: {exc}") from exc


# Reclaims the oldest expired claim, else moves the first spilled batch to the claims; both
# scored by when the new claim runs out, on Redis's clock.
_CLAIM = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local deadline = now_ms + tonumber(ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, 1)
if #stale > 0 then
  redis.call('ZADD', KEYS[2], deadline, stale[1])
  return stale[1]
end
local batch = redis.call('LPOP', KEYS[1])
if batch then
  redis.call('ZADD', KEYS[2], deadline, batch)
end
return batch
"""

_RELEASE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
return 0
"""


class RedisUsageJournal:
    """A Redis list of spilled batches and a sorted set of claimed ones; both keys share the
    `{usage}` hash tag, so each script touches one slot."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
        timeout_s: float = REDIS_TIMEOUT_S,
    ) -> None:
        from redis import exceptions as redis_errors

        self.failures = (redis_errors.RedisError, OSError, TimeoutError)
        self._client = client
        self.journal_key = f"{key_prefix}:{{usage}}:journal"
        self.claimed_key = f"{key_prefix}:{{usage}}:claimed"
        self.corrupt_key = f"{key_prefix}:{{usage}}:corrupt"
        self.claim_timeout_ms = int(claim_timeout_s * 1000)
        self._timeout_s = timeout_s
        self._claim: AsyncScript = client.register_script(_CLAIM)
        self._release: AsyncScript = client.register_script(_RELEASE)

    @classmethod
    def from_url(
        cls, url: str, *, key_prefix: str, claim_timeout_s: float = CLAIM_TIMEOUT_S
    ) -> RedisUsageJournal:
        from redis.asyncio import Redis

        client = Redis.from_url(
            url,
            max_connections=2,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
            client_name=f"{key_prefix}-usage-journal",
        )
        return cls(client, key_prefix=key_prefix, claim_timeout_s=claim_timeout_s)

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except self.failures as exc:
            metrics.redis_error("usage_journal")
            raise JournalUnavailable(f"usage journal: {type(exc).__name__}") from exc

    async def spill(self, batches: list[list[Row]]) -> None:
        if batches:
            async with self._call():
                await self._client.rpush(self.journal_key, *(dump_batch(b) for b in batches))

    async def claim(self) -> ClaimedBatch | None:
        while True:
            async with self._call():
                payload = await self._claim(
                    keys=[self.journal_key, self.claimed_key], args=[self.claim_timeout_ms]
                )
            if payload is None:
                return None
            try:
                return ClaimedBatch(load_batch(payload), payload)
            except (ValueError, TypeError, AttributeError):  # not a batch: kept for a person
                async with self._call():
                    await self._client.rpush(self.corrupt_key, payload)
                    await self._client.zrem(self.claimed_key, payload)

    async def done(self, batch: ClaimedBatch) -> None:
        async with self._call():
            await self._client.zrem(self.claimed_key, batch.handle)

    async def release(self, batch: ClaimedBatch) -> None:
        async with self._call():
            await self._release(keys=[self.journal_key, self.claimed_key], args=[batch.handle])

    async def close(self) -> None:
        await self._client.aclose()


def create_usage_journal(settings: Settings) -> UsageJournal:
    """Redis when the deployment has one (any replica replays what another spilled), else a
    directory in the data dir."""
    if settings.redis_url:
        return RedisUsageJournal.from_url(settings.redis_url, key_prefix=settings.redis_prefix)
    return FileUsageJournal(settings.data_dir / JOURNAL_DIR)
