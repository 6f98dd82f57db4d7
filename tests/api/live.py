"""A real chatplane server on a loopback port, inside the test's event loop."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from chatplane.app import create_app
from chatplane.container import Services, build_services
from chatplane.db import migrate
from chatplane.process import GRACEFUL_SHUTDOWN_S
from chatplane.settings import Settings

PASSWORD = "correct horse battery"


@dataclass
class LiveServer:
    base_url: str
    services: Services
    server: uvicorn.Server
    task: asyncio.Task[None]
    email: str
    api_key: str = ""
    users: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token or self.api_key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task
        await self.services.close()


async def start_live_server(
    settings: Settings, *, email: str, run_turns: bool = True, with_user: bool = True
) -> LiveServer:
    """A server as `chatplane serve` builds it (with a turn worker inside unless
    `run_turns` is false: then a turn stays queued until the test decides what becomes of
    its job), and, `with_user`, an admin `email` with an API key."""
    if not settings.is_embedded_db:
        await migrate.upgrade(settings.resolved_database_url)
    services = await build_services(settings, run_turns=run_turns)
    app = create_app(settings, services=services)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        loop="asyncio",
        proxy_headers=False,  # as `chatplane serve` runs it
        # As `chatplane serve`: a response still running at a stop (a stream a test left
        # open) is cut after this, instead of holding the stop forever.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # uvicorn exposes only a flag
            if task.done():
                task.result()
                raise RuntimeError("the server exited while starting")
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    live = LiveServer(f"http://127.0.0.1:{port}", services, server, task, email=email)
    if with_user:
        await services.auth.create_user(live.email, PASSWORD, tenant_slug="acme", role="admin")
        _, live.api_key = await services.auth.create_api_key(live.email, "tests")
    return live
