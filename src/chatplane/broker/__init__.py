"""Jobs for the workers and one event stream per turn: `create_broker` picks the
implementation from the settings (Redis when `CHATPLANE_REDIS_URL` is set)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chatplane.broker.memory import MemoryBroker
from chatplane.broker.protocol import Broker, DeadLetter, Event, Job, JobLost
from chatplane.settings import Settings

if TYPE_CHECKING:
    from chatplane.broker.redis import RedisBroker

__all__ = [
    "Broker",
    "DeadLetter",
    "Event",
    "Job",
    "JobLost",
    "MemoryBroker",
    "RedisBroker",
    "create_broker",
]


def __getattr__(name: str) -> object:
    # redis-py costs ~6 MB of memory: the embedded shape never loads it.
    if name == "RedisBroker":
        from chatplane.broker.redis import RedisBroker

        return RedisBroker
    raise AttributeError(name)


DEFAULT_KEY_PREFIX = "chatplane"


def create_broker(settings: Settings, *, key_prefix: str | None = None) -> Broker:
    if settings.redis_url:
        from chatplane.broker.redis import RedisBroker

        return RedisBroker(
            settings.redis_url,
            key_prefix=key_prefix or DEFAULT_KEY_PREFIX,
            visibility_timeout_s=settings.job_visibility_timeout_s,
            max_attempts=settings.turn_max_attempts,
        )
    return MemoryBroker(
        visibility_timeout_s=settings.job_visibility_timeout_s,
        max_attempts=settings.turn_max_attempts,
    )
