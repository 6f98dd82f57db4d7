from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import RUN_ID
from tests.scale.procs import Cluster, Group, clean_env, migrate_once, new_key

PASSWORD = "scaled-password"


def cluster_env(postgres_url: str, data_dir: Path) -> dict[str, str]:
    """Settings shared by every process of one cluster: its own Redis prefix, the run's
    Postgres database, one secret key, a slow mock (so a turn is caught mid-answer) and
    a short visibility timeout (so a dead worker's turn is reclaimed quickly)."""
    return clean_env(
        CHATPLANE_DATA_DIR=str(data_dir),
        CHATPLANE_DATABASE_URL=postgres_url,
        CHATPLANE_REDIS_URL=REDIS_URL,
        CHATPLANE_REDIS_PREFIX=unique_prefix(),
        CHATPLANE_SECRET_KEY="scaled-test-secret-key-" + RUN_ID * 3,
        CHATPLANE_MOCK_CHUNK_DELAY_MS="40",
        CHATPLANE_JOB_VISIBILITY_TIMEOUT_S="2",
        CHATPLANE_SSE_KEEPALIVE_S="1",
        # Clusters share the run's database, each with a Redis prefix of its own: the turn
        # sweeper would take other tests' turns for lost. Its test turns it on.
        CHATPLANE_TURN_SWEEP_INTERVAL_S="0",
    )


@pytest.fixture
async def cluster(postgres_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A cluster of the test's own, for tests that kill, stop or configure processes."""
    await require_redis()
    env = cluster_env(postgres_url, tmp_path / "data")
    migrate_once(env)
    built = Cluster(env, tmp_path)
    yield built
    built.stop_all()
    await delete_keys(env["CHATPLANE_REDIS_PREFIX"])


@pytest.fixture(scope="package")
async def shared(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Group]:
    """Two API processes and two workers, started once for the tests that do not stop, kill
    or configure them (starting processes is what takes time). Each test brings its own
    user, key and conversations; what it stops, it starts itself (`joining`)."""
    await require_redis()
    tmp = tmp_path_factory.mktemp("shared-cluster")
    env = cluster_env(postgres_url, tmp / "data")
    migrate_once(env)
    built = Cluster(env, tmp)
    try:
        first, second = built.api("api-1"), built.api("api-2")
        workers = [built.worker(f"worker-{n}") for n in (1, 2)]
        await asyncio.gather(
            first.wait_ready(),
            second.wait_ready(),
            *[w.wait_for_log("worker_started") for w in workers],
        )
        yield Group(env, first, second, workers)
    finally:
        built.stop_all()
        await delete_keys(env["CHATPLANE_REDIS_PREFIX"])


@pytest.fixture
def joining(shared: Group, tmp_path: Path) -> Iterator[Cluster]:
    """Processes of the test's own that join the shared ones (same database, same Redis
    prefix): for a test that stops an API process, but can use the shared workers."""
    shared.assert_alive()
    built = Cluster(shared.env, tmp_path)
    yield built
    built.stop_all()


def email_of(request: pytest.FixtureRequest) -> str:
    name = request.node.name[:40].lower().replace("[", "-").replace("]", "")
    return f"{name}-{RUN_ID}@example.com"


@pytest.fixture
async def user_key(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    return await new_key(cluster.env, email_of(request), password=PASSWORD)


@pytest.fixture
async def shared_key(shared: Group, request: pytest.FixtureRequest) -> str:
    """A user and key of this test's own on the shared processes."""
    shared.assert_alive()
    return await new_key(shared.env, email_of(request), password=PASSWORD)
