from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.broker.support import REDIS_URL, delete_keys, require_redis, unique_prefix
from tests.conftest import RUN_ID
from tests.scale.procs import Cluster, clean_env, run_cli

PASSWORD = "scaled-password"


@pytest.fixture
async def cluster(postgres_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Settings shared by every process of one test: its own Redis prefix, the run's
    Postgres database, one secret key, a slow mock (so a turn is caught mid-answer) and
    a short visibility timeout (so a dead worker's turn is reclaimed quickly)."""
    await require_redis()
    prefix = unique_prefix()
    env = clean_env(
        CHATPLANE_DATA_DIR=str(tmp_path / "data"),
        CHATPLANE_DATABASE_URL=postgres_url,
        CHATPLANE_REDIS_URL=REDIS_URL,
        CHATPLANE_REDIS_PREFIX=prefix,
        CHATPLANE_SECRET_KEY="scaled-test-secret-key-" + RUN_ID * 3,
        CHATPLANE_MOCK_CHUNK_DELAY_MS="40",
        CHATPLANE_JOB_VISIBILITY_TIMEOUT_S="2",
        CHATPLANE_SSE_KEEPALIVE_S="1",
        # Clusters share the run's database, each with a Redis prefix of its own: the turn
        # sweeper would take other tests' turns for lost. Its test turns it on.
        CHATPLANE_TURN_SWEEP_INTERVAL_S="0",
    )
    run_cli(env, "db", "upgrade")
    built = Cluster(env, tmp_path)
    yield built
    built.stop_all()
    await delete_keys(prefix)


@pytest.fixture
def user_key(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    email = (
        f"{request.node.name[:40].lower().replace('[', '-').replace(']', '')}-{RUN_ID}@example.com"
    )
    run_cli(cluster.env, "users", "create", email, "--password-stdin", stdin=PASSWORD + "\n")
    return run_cli(cluster.env, "keys", "create", email, "--name", "scale").strip()
