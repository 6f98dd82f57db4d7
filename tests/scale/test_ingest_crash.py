"""Ingestion on real worker processes: a worker killed with -9 mid-document leaves nothing
half-indexed; another worker reclaims the job and the document ends `ready` with each chunk
exactly once (and one vector per chunk)."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import web

from tests.api.sse import read_events
from tests.scale.procs import Cluster, Proc
from tests.scale.test_processes import client

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DIM = 8
# Nine sections of a few sentences: several chunks, each under its own heading.
DOCUMENT = "\n\n".join(
    f"# Chapter {n}\n\nThe lighthouse keeper number {n} trims the wick at dusk. "
    f"Storm number {n} batters the rocks, and the lamp still turns."
    for n in range(1, 10)
).encode()


class FakeEmbeddings:
    """An OpenAI-compatible `/v1/embeddings` (the outside vendor): the first call hangs until
    the test ends; later calls answer with vectors made from the text's hash."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_call = asyncio.Event()
        self.released = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls += 1
        if self.calls == 1:
            self.first_call.set()
            await self.released.wait()  # the worker is killed meanwhile: nobody reads this
            return web.json_response({"error": {"message": "too late"}}, status=503)
        data = [
            {"object": "embedding", "index": i, "embedding": vector(text)}
            for i, text in enumerate(body["input"])
        ]
        return web.json_response({"object": "list", "data": data, "model": body["model"]})

    async def __aenter__(self) -> FakeEmbeddings:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self.embeddings)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.runner is not None
        self.released.set()  # so the server's shutdown does not wait for the hung call
        await self.runner.cleanup()


def vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [float(x) for x in struct.unpack(f"{DIM}b", digest[:DIM])]


@pytest.fixture
async def embeddings() -> AsyncIterator[FakeEmbeddings]:
    async with FakeEmbeddings() as fake:
        yield fake


async def indexing_on(workers: list[Proc], document_id: str) -> tuple[Proc, Proc]:
    deadline = time.monotonic() + 10
    while True:
        owners = [w for w in workers if document_id in w.log()]
        if len(owners) == 1:
            return owners[0], next(w for w in workers if w is not owners[0])
        assert time.monotonic() < deadline, "no worker logged the document"
        await asyncio.sleep(0.05)


async def test_a_worker_killed_mid_document_leaves_every_chunk_once(
    cluster: Cluster, user_key: str, embeddings: FakeEmbeddings
) -> None:
    env = {
        "CHATPLANE_EMBEDDINGS": "openai:fake-embed",
        "CHATPLANE_EMBEDDINGS_BASE_URL": embeddings.base_url,
        "CHATPLANE_KB_CHUNK_TOKENS": "40",
        "CHATPLANE_KB_CHUNK_OVERLAP_TOKENS": "8",
    }
    api = cluster.api("api-1", **env)
    workers = [cluster.worker(f"worker-{n}", **env) for n in (1, 2)]
    await asyncio.gather(api.wait_ready(), *[w.wait_for_log("worker_started") for w in workers])
    async with client(api.base_url, user_key) as http:
        kb = (await http.post("/api/kb", json={"name": "Lighthouses"})).json()
        assert kb["embedding_model"] == "openai:fake-embed"
        accepted = await http.post(
            f"/api/kb/{kb['id']}/documents", files={"file": ("keepers.md", DOCUMENT)}
        )
        assert accepted.status_code == 202, accepted.text
        document_id = accepted.json()["document_id"]
        async with asyncio.timeout(20):
            await embeddings.first_call.wait()  # a worker is embedding this document now
        doomed, survivor = await indexing_on(workers, document_id)
        assert (await http.get(accepted.json()["events_url"].rsplit("/", 1)[0])).json()[
            "status"
        ] == "indexing"
        doomed.kill()

        frames = await read_events(http, accepted.json()["events_url"])
        assert frames[-1].event == "document.ready", frames
        document = (await http.get(f"/api/kb/{kb['id']}/documents/{document_id}")).json()
        assert document["status"] == "ready"
        assert document_id in survivor.log()

        search = await http.post(
            f"/api/kb/{kb['id']}/search", json={"query": "storm number 7 batters the rocks"}
        )
        body = search.json()
        assert body["mode"] == "hybrid"
        # The fake's vectors are random: the passage is among the results, not always first.
        assert any("Storm number 7" in hit["text"] for hit in body["results"])

    connection = await asyncpg.connect(
        cluster.env["CHATPLANE_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
    )
    try:
        rows = await connection.fetch(
            "SELECT ord FROM kb_chunks WHERE document_id = $1 ORDER BY ord", document_id
        )
        vectors = await connection.fetchval(
            "SELECT count(*) FROM kb_vectors v JOIN kb_chunks c ON c.id = v.chunk_id "
            "WHERE c.document_id = $1",
            document_id,
        )
    finally:
        await connection.close()
    ords = [row["ord"] for row in rows]
    assert len(ords) > 3
    assert ords == list(range(len(ords)))  # each chunk exactly once
    assert document["chunks"] == len(ords)
    assert vectors == len(ords)
