"""What the embedded shape loads: `chatplane serve` with no settings (SQLite, the in-process
broker, the mock models) never imports what only the scaled shape or a real upstream uses.

Each check runs in a fresh interpreter, since this test process has imported everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.broker.support import REDIS_URL, require_redis, unique_prefix

# Imported only in the scaled shape (Redis), with a real upstream (aiohttp's client), on
# Postgres (its dialect), or by `chatplane worker` (aiohttp's server).
SCALED_OR_UPSTREAM_ONLY = ("redis", "aiohttp", "aiohttp.web", "sqlalchemy.dialects.postgresql")

# The serve path: the CLI module, the server with its loop and parser, the app built for the
# settings, its start-up (every service), then the first requests of each kind: the web
# page, a login, a /v1 completion streamed from a mock model, a native turn with its events.
SERVE_PATH = """
import asyncio, json, sys

import chatplane.cli
import httptools
import uvicorn
import uvloop
import httpx

from chatplane.app import create_app
from chatplane.settings import Settings

EMAIL, PASSWORD = "first@example.com", "a long enough password"


async def main(run_turns: bool) -> dict[str, object]:
    app = create_app(Settings(), migrate_embedded=False)
    async with app.router.lifespan_context(app):
        services = app.state.services
        await services.auth.create_user(EMAIL, PASSWORD, role="admin")
        _, key = await services.auth.create_api_key(EMAIL, "imports")
        transport = httpx.ASGITransport(app=app)
        bearer = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            statuses = {
                "healthz": (await client.get("/healthz")).status_code,
                "web": (await client.get("/")).status_code,
                "login": (
                    await client.post(
                        "/api/auth/login", json={"email": EMAIL, "password": PASSWORD}
                    )
                ).status_code,
            }
            completion = await client.post(
                "/v1/chat/completions",
                headers=bearer,
                json={
                    "model": "mock-echo",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hello there"}],
                },
            )
            statuses["v1"] = completion.status_code
            statuses["v1_text"] = "hello" in completion.text
            conversation = await client.post("/api/conversations", headers=bearer, json={})
            turn = await client.post(
                f"/api/conversations/{conversation.json()['id']}/messages",
                headers=bearer,
                json={"content": "hi"},
            )
            statuses["turn"] = turn.status_code
            if run_turns:  # else a worker process would run it
                events = await client.get(turn.json()["events_url"], headers=bearer)
                statuses["turn_completed"] = "turn.completed" in events.text
    return statuses


statuses = uvloop.run(main(run_turns=sys.argv[1] == "embedded"))
print(json.dumps({"statuses": statuses, "modules": sorted(sys.modules)}))
"""


def run_serve_path(data_dir: Path, **environ: str) -> tuple[dict[str, object], set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(
        CHATPLANE_DATA_DIR=str(data_dir),
        CHATPLANE_PASSWORD_TIME_COST="1",
        CHATPLANE_PASSWORD_MEMORY_KIB="1024",
        CHATPLANE_PASSWORD_PARALLELISM="1",
        **environ,
    )
    # As `serve` does: the schema is migrated in a process of its own (Alembic loads every
    # dialect's DDL module).
    subprocess.run(
        [sys.executable, "-m", "chatplane", "db", "upgrade"], env=env, check=True, timeout=120
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_PATH,
            "scaled" if "CHATPLANE_REDIS_URL" in env else "embedded",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["statuses"], set(result["modules"])


def test_embedded_serve_path_leaves_scaled_and_upstream_modules_out(tmp_path: Path) -> None:
    statuses, modules = run_serve_path(tmp_path)

    assert statuses == {
        "healthz": 200,
        "web": 200,
        "login": 200,
        "v1": 200,
        "v1_text": True,
        "turn": 202,
        "turn_completed": True,
    }
    assert "chatplane.container" in modules  # the services were built and used
    loaded = [name for name in SCALED_OR_UPSTREAM_ONLY if name in modules]
    assert loaded == []


async def test_redis_url_loads_the_redis_implementations(tmp_path: Path) -> None:
    await require_redis()
    statuses, modules = run_serve_path(
        tmp_path, CHATPLANE_REDIS_URL=REDIS_URL, CHATPLANE_REDIS_PREFIX=unique_prefix()
    )

    assert statuses["v1"] == 200
    assert statuses["turn"] == 202
    assert {"redis", "chatplane.broker.redis", "chatplane.cache.redis"} <= modules
    assert "aiohttp" not in modules  # still no upstream: the mock models


def test_an_upstream_loads_the_http_client(tmp_path: Path) -> None:
    # Nothing listens there: discovery fails, is logged, and the server runs on.
    statuses, modules = run_serve_path(tmp_path, CHATPLANE_OPENAI_BASE_URL="http://127.0.0.1:9/v1")

    assert statuses["v1"] == 200
    assert "aiohttp" in modules
