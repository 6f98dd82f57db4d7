"""What the embedded shape loads: `chatplane serve` with no settings (SQLite, the in-process
broker, the mock models) never imports what only the scaled shape or a real upstream uses.

Each check runs in a fresh interpreter, since this test process has imported everything."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.broker.support import REDIS_URL, require_redis, unique_prefix

# Imported only in the scaled shape (Redis), with a real upstream (aiohttp's client), on
# Postgres (its dialect), or by `chatplane worker` (aiohttp's server).
SCALED_OR_UPSTREAM_ONLY = ("redis", "aiohttp", "aiohttp.web", "sqlalchemy.dialects.postgresql")
# Never in the server process: the command line (`serve` hands the process over to
# `chatplane.process`), uvicorn's file watcher for `--reload` (installed by `uvicorn[standard]`,
# loaded by `import uvicorn` whenever it is there), AES-GCM (loaded when an upstream key
# stored in the database is first sealed or opened), Rich and the attrs it looks for
# (structlog imports Rich whenever it is installed; the process keeps it out). Pygments, which
# Rich would bring too, is not checked: this script's own httpx imports it.
NEVER_IN_THE_SERVER = (
    "typer",
    "watchfiles",
    "cryptography.hazmat.primitives.ciphers.aead",
    "rich",
    "attr",
)

# The serve path: the server process's module, the server with its loop and parser, the app
# built for the settings, its start-up (every service), then the first requests of each kind:
# the web page, a login, a /v1 completion streamed from a mock model, a native turn with its
# events.
SERVE_PATH = """
import asyncio, json, sys

import chatplane.process

chatplane.process.keep_rich_out()  # first, as the process's `main` does

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
loaded = sorted(name for name, module in sys.modules.items() if module is not None)
print(json.dumps({"statuses": statuses, "modules": loaded}))
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
    loaded = [name for name in (*SCALED_OR_UPSTREAM_ONLY, *NEVER_IN_THE_SERVER) if name in modules]
    assert loaded == []


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")


@needs_proc
def test_serve_hands_its_process_over_to_the_process_module(tmp_path: Path) -> None:
    """`chatplane serve` checks, prints, then becomes `python -m chatplane.process serve` in
    the same process (what the serve path above imports), so none of the command line stays."""
    port = _free_port()
    argv, output = _run_until_healthy(
        ["serve", "--port", str(port)], tmp_path, f"http://127.0.0.1:{port}/healthz"
    )

    assert argv == ["-m", "chatplane.process", "serve", "127.0.0.1", str(port)]
    assert f"on http://127.0.0.1:{port}" in output  # printed before the hand-over
    assert "Application shutdown complete" in output  # the server stopped in order


@needs_proc
async def test_worker_hands_its_process_over_with_its_options(tmp_path: Path) -> None:
    await require_redis()
    port = _free_port()
    argv, output = _run_until_healthy(
        ["worker", "--concurrency", "3", "--metrics-port", str(port)],
        tmp_path,
        f"http://127.0.0.1:{port}/metrics",
        CHATPLANE_REDIS_URL=REDIS_URL,
        CHATPLANE_REDIS_PREFIX=unique_prefix(),
    )

    assert argv == ["-m", "chatplane.process", "worker"]
    # The option reached the process it became (its lines are JSON: not a terminal).
    assert '"concurrency":3' in output
    assert "worker_draining" in output


def _run_until_healthy(
    args: list[str], data_dir: Path, url: str, **environ: str
) -> tuple[list[str], str]:
    """Run `chatplane ARGS` until URL answers 200; its argv then (less the interpreter), and
    its output once SIGTERM stopped it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(CHATPLANE_DATA_DIR=str(data_dir), CHATPLANE_HOST="127.0.0.1", **environ)
    subprocess.run(
        [sys.executable, "-m", "chatplane", "db", "upgrade"], env=env, check=True, timeout=120
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "chatplane", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert process.poll() is None, process.communicate()[0][-4000:]
            assert time.monotonic() < deadline, f"{args[0]} did not start"
            time.sleep(0.1)
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[1:-1]
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    return [arg.decode() for arg in argv], output


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


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
