"""A whole process stops while its database is cut off: the gateway usage it served is
journaled on close and stored exactly once by the next process that starts, in the embedded
shape (a file in the data dir) and with Redis (any replica replays it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from chatplane.container import build_services
from chatplane.db import migrate
from chatplane.db.base import new_id
from tests.admin.support import eventually
from tests.conftest import make_settings
from tests.own_redis import OwnRedis
from tests.scale.test_database_outage import TcpProxy, through
from tests.usage.test_usage_journal import record, stored


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    tcp = TcpProxy(make_url(postgres_url).port or 5432)
    await tcp.start()
    yield tcp
    await tcp.close()


@pytest.fixture(params=["file", "redis"])
def redis_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "file":
        return None
    own_redis: OwnRedis = request.getfixturevalue("own_redis")
    return own_redis.url


async def test_usage_served_during_an_outage_survives_a_stop_and_is_stored_once(
    postgres_url: str, proxy: TcpProxy, redis_url: str | None, tmp_path: Path
) -> None:
    await migrate.upgrade(postgres_url)
    tenant_id = new_id()
    extra = {"redis_url": redis_url, "redis_prefix": f"t{new_id()}"} if redis_url else {}
    stopping = await build_services(
        make_settings(tmp_path, database_url=through(postgres_url, proxy), **extra),
        run_turns=False,
    )
    await proxy.cut()  # the database refuses every connection from now on
    record(stopping.usage, tenant_id, 4)
    await stopping.close(drain_s=1)  # SIGTERM during the outage
    assert stopping.usage.dropped == 0

    started = await build_services(
        make_settings(tmp_path, database_url=postgres_url, **extra), run_turns=False
    )
    try:

        async def all_stored() -> bool:
            return (await stored(started.db, tenant_id))[0] >= 4

        await eventually(all_stored)
        assert await started.usage.replay() == 0
        assert await stored(started.db, tenant_id) == (4, 4, 2)
    finally:
        await started.close(drain_s=1)
