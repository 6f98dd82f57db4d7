"""The cache of what hot paths read on every request: one protocol, named namespaces.

A namespace names one kind of value (principals, tenant policies, ...) and says how it is
written to a shared tier (`dump` to JSON-able data, `load` back). The in-process cache
(`LocalCache`, the embedded shape) and the two-tier cache (`TwoTierCache`: the in-process
tier in front of Redis, the scaled shape) both follow `Cache`.

Invalidation crosses processes: `invalidate` drops an entry here and in every other process
of the deployment (within a second), and tells whoever listens to the namespace
(`on_invalidate`), e.g. the model registry, which reloads."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

V = TypeVar("V")

# Called with the key dropped, or None when the whole namespace was dropped (also after the
# invalidation channel reconnects: what was missed meanwhile is unknown).
Listener = Callable[[str | None], None]


@dataclass(frozen=True, eq=False)
class Namespace(Generic[V]):
    name: str  # a metric label and a part of Redis keys: short, fixed
    dump: Callable[[V], Any]
    load: Callable[[Any], V]


def not_shared(value: object) -> Any:
    """`dump` of a namespace that only carries invalidations (nothing is stored)."""
    raise TypeError("this namespace stores nothing")


class Cache(Protocol):
    async def get(self, namespace: Namespace[V], key: str) -> V | None: ...

    async def put(
        self, namespace: Namespace[V], key: str, value: V, *, ttl_s: float | None = None
    ) -> None:
        """Keep `value` for at most `ttl_s` (default: the tier's TTL; never longer)."""

    async def load(
        self,
        namespace: Namespace[V],
        key: str,
        loader: Callable[[], Awaitable[tuple[V, float | None]]],
    ) -> V:
        """The cached value, else `loader()`'s (value, ttl_s), kept unless the key was
        invalidated while the loader ran (then it is returned, not kept)."""

    async def invalidate(self, namespace: Namespace[Any], key: str) -> None:
        """Drop the key here and in every process; never raises for a store failure."""

    async def invalidate_all(self, namespace: Namespace[Any]) -> None: ...

    def on_invalidate(self, namespace: Namespace[Any], listener: Listener) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
