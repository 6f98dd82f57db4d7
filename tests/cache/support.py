"""What the cache tests store, and reading the cache's counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import REGISTRY

from chatplane.cache import Namespace


@dataclass(frozen=True)
class Item:
    name: str
    version: int = 1


def _load(data: dict[str, Any]) -> Item:
    return Item(**data)


ITEMS = Namespace[Item]("test-items", asdict, _load)


def lookups(cache: str, tier: str, result: str) -> float:
    labels = {"cache": cache, "tier": tier, "result": result}
    return REGISTRY.get_sample_value("chatplane_cache_lookups_total", labels) or 0.0


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
