"""Changing the embedding model re-indexes every knowledge base in the background, as jobs
on the workers, and switches each one to the new model in one step."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import func, select

from chatplane.knowledge.models import ChunkVector
from tests.api.live import LiveServer, start_live_server
from tests.api.sse import read_events
from tests.conftest import make_settings

GUIDE = b"# Tides\n\nThe moon pulls the sea into two bulges. Spring tides follow a full moon."


class Embeddings:
    """An OpenAI-compatible /v1/embeddings (the outside vendor), counting what it embeds."""

    def __init__(self) -> None:
        self.texts = 0
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.texts += len(body["input"])
        data = [
            {"object": "embedding", "index": i, "embedding": _vector(body["model"] + text)}
            for i, text in enumerate(body["input"])
        ]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"


def _vector(text: str) -> list[float]:
    return [float(x) for x in struct.unpack("8b", hashlib.sha256(text.encode()).digest()[:8])]


@pytest.fixture
async def embeddings() -> AsyncIterator[Embeddings]:
    fake = Embeddings()
    await fake.start()
    yield fake
    assert fake.runner is not None
    await fake.runner.cleanup()


async def _server(data_dir: Path, model: str, base_url: str, email: str) -> LiveServer:
    settings = make_settings(data_dir, embeddings=f"openai:{model}", embeddings_base_url=base_url)
    return await start_live_server(settings, email=email)


async def _vector_models(server: LiveServer) -> dict[str, int]:
    async with server.services.db.session() as session:
        rows = await session.execute(
            select(ChunkVector.model, func.count()).group_by(ChunkVector.model)
        )
        return {model: int(n) for model, n in rows.all()}


async def test_a_new_embedding_model_reindexes_and_switches(
    tmp_path: Path, embeddings: Embeddings
) -> None:
    first = await _server(tmp_path, "alpha", embeddings.base_url, "reindex-1@example.com")
    try:
        async with first.client() as client:
            # Shared with the tenant: the second server's user (same tenant) reads it.
            kb = (
                await client.post("/api/kb", json={"name": "Tides", "visibility": "tenant"})
            ).json()
            assert kb["embedding_model"] == "openai:alpha"
            accepted = (
                await client.post(f"/api/kb/{kb['id']}/documents", files={"file": ("t.md", GUIDE)})
            ).json()
            assert (await read_events(client, accepted["events_url"]))[-1].event == "document.ready"
            found = (await client.post(f"/api/kb/{kb['id']}/search", json={"query": "moon"})).json()
            assert found["mode"] == "hybrid"
        alpha = await _vector_models(first)
        assert set(alpha) == {"openai:alpha"}
    finally:
        await first.stop()

    embedded_before = embeddings.texts
    second = await _server(tmp_path, "beta", embeddings.base_url, "reindex-2@example.com")
    try:
        async with second.client() as client:
            deadline = time.monotonic() + 20
            while True:  # the worker re-indexes in the background
                current = (await client.get(f"/api/kb/{kb['id']}")).json()
                if current["embedding_model"] == "openai:beta":
                    break
                assert time.monotonic() < deadline, current
                found = (
                    await client.post(f"/api/kb/{kb['id']}/search", json={"query": "moon"})
                ).json()
                assert found["mode"] == "lexical"  # the old model's vectors are not used
                await asyncio.sleep(0.05)
            found = (
                await client.post(f"/api/kb/{kb['id']}/search", json={"query": "tides"})
            ).json()
            assert found["mode"] == "hybrid"
            assert "Spring tides" in found["results"][0]["text"]
        # The old model's vectors are gone, each chunk has one of the new model.
        assert await _vector_models(second) == {"openai:beta": alpha["openai:alpha"]}
        assert embeddings.texts > embedded_before
    finally:
        await second.stop()
