"""Answers with citations, end to end: documents uploaded and indexed, a turn (or a `/v1`
call with the `chatplane` extension) that retrieves, and citations that each resolve to a
passage the model was given."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select, text

from chatplane.auth.principal import Principal
from chatplane.broker.protocol import Event
from chatplane.chat.models import Message
from chatplane.chat.worker import TurnWorker
from chatplane.container import Services, build_services
from chatplane.db.base import new_id
from chatplane.knowledge.chunking import ChunkDraft
from chatplane.knowledge.models import Chunk, Document
from chatplane.knowledge.prompt import parse_passages
from chatplane.providers.mock import NO_SOURCES_REPLY
from tests.api.conftest import Shape, shape_server
from tests.api.live import PASSWORD, LiveServer
from tests.api.sse import read_events, text_of
from tests.broker.support import events_until_end
from tests.conftest import make_settings
from tests.providers.fakes import FakeOpenAI

QUESTION = "How do I install chatplane on Linux?"
DOCUMENTS = {
    "install.md": (
        b"# Install\n\nInstall chatplane on Linux with pip in a virtual environment. "
        b"It needs Python 3.11.\n"
    ),
    "upgrade.md": (
        b"# Upgrade\n\nUpgrades on Linux keep your data. Install the new version, then "
        b"run the migrations.\n"
    ),
}


@dataclass
class Setup:
    live: LiveServer
    fake: FakeOpenAI
    kb_id: str
    documents: dict[str, str]  # document id -> filename


@pytest.fixture(scope="module", params=["embedded", "postgres"])
def answers_shape(request: pytest.FixtureRequest) -> Shape:
    """SQLite with FTS5, and Postgres with its tsvector index."""
    if request.param == "embedded":
        return Shape("embedded")
    return Shape("postgres", database_url=request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module")
async def setup(
    answers_shape: Shape, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    """A live server of the shape with one knowledge base of two indexed documents."""
    shape = answers_shape
    async with (
        FakeOpenAI(chunks=("Hello", ",", " world", "!")) as fake,
        shape_server(
            shape,
            tmp_path_factory.mktemp(f"answers-{shape.name}"),
            fake,
            email=f"cite.{shape.name}@example.com",
        ) as live,
        live.client() as client,
    ):
        created = await client.post("/api/kb", json={"name": "Docs"})
        assert created.status_code == 201, created.text
        kb_id = created.json()["id"]
        documents = {}
        for filename, data in DOCUMENTS.items():
            accepted = await client.post(
                f"/api/kb/{kb_id}/documents", files={"file": (filename, data, "text/markdown")}
            )
            assert accepted.status_code == 202, accepted.text
            frames = await read_events(client, accepted.json()["events_url"])
            assert frames[-1].event == "document.ready", frames[-1]
            documents[accepted.json()["document_id"]] = filename
        yield Setup(live, fake, kb_id, documents)


async def _chunks(live: LiveServer, chunk_ids: list[int]) -> dict[int, Chunk]:
    async with live.services.db.session() as session:
        rows = await session.scalars(select(Chunk).where(Chunk.id.in_(chunk_ids)))
        return {chunk.id: chunk for chunk in rows.all()}


async def _assert_resolvable(setup: Setup, citations: list[dict[str, Any]]) -> None:
    """Every citation names a chunk of the knowledge base, with its document, and quotes
    words that chunk holds."""
    chunks = await _chunks(setup.live, [c["chunk_id"] for c in citations])
    for citation in citations:
        chunk = chunks[citation["chunk_id"]]
        assert chunk.kb_id == setup.kb_id
        assert chunk.document_id == citation["document_id"]
        assert citation["filename"] == setup.documents[chunk.document_id]
        assert citation["page"] == chunk.page
        assert citation["quote"]
        assert citation["quote"] in chunk.text


async def _search(client: httpx.AsyncClient, setup: Setup) -> list[int]:
    found = await client.post(
        f"/api/kb/{setup.kb_id}/search",
        json={"query": QUESTION, "top_k": setup.live.services.settings.kb_top_k},
    )
    assert found.status_code == 200, found.text
    return [result["chunk_id"] for result in found.json()["results"]]


async def test_a_turn_cites_the_passages_it_was_given(setup: Setup) -> None:
    async with setup.live.client() as client:
        conversation = await client.post(
            "/api/conversations",
            json={"model": "mock-cite", "knowledge_base_ids": [setup.kb_id]},
        )
        assert conversation.status_code == 201, conversation.text
        conversation_id = conversation.json()["id"]
        accepted = await client.post(
            f"/api/conversations/{conversation_id}/messages", json={"content": QUESTION}
        )
        assert accepted.status_code == 202, accepted.text
        frames = await read_events(client, accepted.json()["events_url"])
        ranked = await _search(client, setup)
        view = (await client.get(f"/api/conversations/{conversation_id}")).json()

    kinds = [frame.event for frame in frames]
    assert kinds[-1] == "turn.completed"
    assert kinds.count("turn.citations") == 1
    assert kinds.index("turn.citations") == len(kinds) - 2  # right before turn.completed
    citations = frames[kinds.index("turn.citations")].data["citations"]
    # mock-cite cites the first two passages it was given: the two best search results.
    assert [c["n"] for c in citations] == [1, 2]
    assert [c["chunk_id"] for c in citations] == ranked[:2]
    await _assert_resolvable(setup, citations)
    answer = text_of(frames)
    for citation in citations:
        assert f'[{citation["n"]}] "{citation["quote"]}"' in answer

    assistant = view["messages"][-1]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == answer
    assert assistant["citations"] == citations
    assert view["messages"][0]["citations"] is None  # the question cites nothing


async def test_a_turn_without_knowledge_bases_has_no_citations(setup: Setup) -> None:
    async with setup.live.client() as client:
        conversation = (await client.post("/api/conversations", json={"model": "mock-cite"})).json()
        accepted = await client.post(
            f"/api/conversations/{conversation['id']}/messages", json={"content": QUESTION}
        )
        frames = await read_events(client, accepted.json()["events_url"])
        view = (await client.get(f"/api/conversations/{conversation['id']}")).json()
    assert "turn.citations" not in [frame.event for frame in frames]
    assert text_of(frames) == NO_SOURCES_REPLY
    assert view["messages"][-1]["citations"] is None


def _body(setup: Setup, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": QUESTION},
        ],
        "chatplane": {"knowledge_base_ids": [setup.kb_id]},
        **extra,
    }


def _data_lines(body: str) -> list[str]:
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]


async def test_the_gateway_answers_with_citations(setup: Setup) -> None:
    async with setup.live.client() as client:
        response = await client.post("/v1/chat/completions", json=_body(setup, "mock-cite"))
        ranked = await _search(client, setup)
    assert response.status_code == 200, response.text
    payload = response.json()
    citations = payload["chatplane"]["citations"]
    assert [c["chunk_id"] for c in citations] == ranked[:2]
    await _assert_resolvable(setup, citations)
    answer = payload["choices"][0]["message"]["content"]
    assert all(f"[{c['n']}]" in answer for c in citations)


async def test_the_gateway_streams_the_citations_last(setup: Setup) -> None:
    async with setup.live.client() as client:
        response = await client.post(
            "/v1/chat/completions", json=_body(setup, "mock-cite", stream=True)
        )
    assert response.status_code == 200, response.text
    data = _data_lines(response.text)
    assert data[-1] == "[DONE]"
    assert data.count("[DONE]") == 1
    last = json.loads(data[-2])
    assert last["object"] == "chat.completion.chunk"
    assert last["choices"] == []
    assert last["id"] == json.loads(data[0])["id"]
    citations = last["chatplane"]["citations"]
    assert [c["n"] for c in citations] == [1, 2]
    await _assert_resolvable(setup, citations)
    text = "".join(
        chunk["choices"][0]["delta"].get("content") or ""
        for chunk in map(json.loads, data[:-2])
        if chunk["choices"]
    )
    assert all(f'[{c["n"]}] "{c["quote"]}"' in text for c in citations)


async def test_the_openai_sdk_reads_the_extension_unchanged(setup: Setup) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{setup.live.base_url}/v1", api_key=setup.live.api_key, max_retries=0
    ) as client:
        extra = {"chatplane": {"knowledge_base_ids": [setup.kb_id]}}
        completion = await client.chat.completions.create(
            model="mock-cite",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body=extra,
        )
        stream = await client.chat.completions.create(
            model="mock-cite",
            messages=[{"role": "user", "content": QUESTION}],
            extra_body=extra,
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    assert completion.model_extra is not None
    assert len(completion.model_extra["chatplane"]["citations"]) == 2
    assert chunks[-1].choices == []
    assert chunks[-1].model_extra is not None
    assert chunks[-1].model_extra["chatplane"] == completion.model_extra["chatplane"]


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_upstream_gets_the_passages(setup: Setup, stream: bool) -> None:
    """Passed through to an OpenAI-compatible upstream: the passages go first in its
    messages, and the answer (which cites nothing here) still ends with `citations`."""
    async with setup.live.client() as client:
        response = await client.post(
            "/v1/chat/completions", json=_body(setup, "gpt-fake", stream=stream)
        )
    assert response.status_code == 200, response.text
    sent = setup.fake.requests[-1].json
    assert "chatplane" not in sent
    assert sent["messages"][0]["role"] == "system"
    assert len(parse_passages(sent["messages"][0]["content"])) == 2
    assert sent["messages"][1:] == _body(setup, "gpt-fake")["messages"]
    if stream:
        data = _data_lines(response.text)
        assert data[-1] == "[DONE]"
        assert data.count("[DONE]") == 1
        assert json.loads(data[-2])["chatplane"] == {"citations": []}
        text = "".join(
            chunk["choices"][0]["delta"].get("content") or ""
            for chunk in map(json.loads, data[:-1])
            if chunk.get("choices")
        )
        assert text == "Hello, world!"
    else:
        assert response.json()["chatplane"] == {"citations": []}
        assert response.json()["choices"][0]["message"]["content"] == "Hello, world!"


async def test_the_gateway_refuses_a_knowledge_base_the_key_cannot_read(setup: Setup) -> None:
    services = setup.live.services
    email = f"other.{new_id()}@example.com"
    await services.auth.create_user(email, PASSWORD, tenant_slug="acme")
    _, other_key = await services.auth.create_api_key(email, "other")
    async with setup.live.client(other_key) as other:
        private = await other.post("/api/kb", json={"name": "Mine", "visibility": "private"})
        assert private.status_code == 201, private.text
    async with setup.live.client() as client:
        for kb_id in (private.json()["id"], "no-such-kb"):
            body = _body(setup, "mock-cite")
            body["chatplane"] = {"knowledge_base_ids": [setup.kb_id, kb_id]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 404, response.text
            assert response.json()["error"]["code"] == "knowledge_base_not_found"
        bad = await client.post(
            "/v1/chat/completions",
            json={**_body(setup, "mock-cite"), "chatplane": {"knowledge_base_ids": "x"}},
        )
        assert bad.status_code == 400
        plain = await client.post(
            "/v1/chat/completions",
            json={"model": "mock-cite", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert "chatplane" not in plain.json()
    assert plain.json()["choices"][0]["message"]["content"] == NO_SOURCES_REPLY


# The runner on its own (embedded): outcomes the HTTP API cannot time.


async def _services(tmp_path: Path, **settings: Any) -> tuple[Services, Principal]:
    services = await build_services(make_settings(tmp_path, **settings), run_turns=False)
    user = await services.auth.create_user("t@example.com", "password-123")
    principal = Principal(
        user_id=user.id, tenant_id=user.tenant_id, email=user.email, role=user.role
    )
    return services, principal


async def _seed(services: Services, principal: Principal, texts: list[str]) -> str:
    """A knowledge base with one single-chunk document per text, written straight into
    the index."""
    kb = await services.knowledge.create_knowledge_base(
        principal, name="Seeded", description="", visibility="private"
    )
    async with services.db.session() as session:
        for i, body in enumerate(texts):
            document = Document(
                id=new_id(),
                kb_id=kb.kb.id,
                tenant_id=principal.tenant_id,
                uploaded_by=principal.user_id,
                filename=f"doc{i}.md",
                media_type="text/markdown",
                size_bytes=len(body),
                sha256=hashlib.sha256(body.encode()).hexdigest(),
                blob_key=f"seeded/{i}",
                status="ready",
                chunk_count=1,
            )
            session.add(document)
            await session.flush()
            draft = ChunkDraft(ord=0, text=body, heading=None, page=None, tokens=len(body) // 4)
            await services.index.write_document(
                session,
                tenant_id=principal.tenant_id,
                kb_id=kb.kb.id,
                document_id=document.id,
                drafts=[draft],
                vectors=None,
            )
        await session.commit()
    return kb.kb.id


async def _assistant(services: Services, turn_id: str) -> Message | None:
    async with services.db.session() as session:
        found = await session.scalars(select(Message).where(Message.turn_id == turn_id))
        return found.first()


async def test_a_knowledge_base_deleted_before_the_turn_runs_is_skipped(tmp_path: Path) -> None:
    services, principal = await _services(tmp_path)
    worker = TurnWorker(services.broker, services.runner, concurrency=1, max_attempts=1)
    try:
        kb_id = await _seed(services, principal, [QUESTION + " Use pip."])
        conversation = await services.chat.create_conversation(
            principal, title=None, model="mock-cite"
        )
        turn = await services.chat.post_message(
            principal, conversation.id, content=QUESTION, model=None, knowledge_base_ids=[kb_id]
        )
        await services.knowledge.delete_knowledge_base(principal, kb_id)

        worker.start()
        events = await events_until_end(services.broker, turn.id)
    finally:
        await worker.stop(deadline_s=1)
        await services.close()
    kinds = [event.type for event in events]
    assert kinds[-2:] == ["turn.citations", "turn.completed"]
    assert events[-2].data == {"citations": []}
    text = "".join(e.data["text"] for e in events if e.type == "message.delta")
    assert text == NO_SOURCES_REPLY


async def test_a_retrieval_that_fails_fails_the_turn(tmp_path: Path) -> None:
    services, principal = await _services(tmp_path)
    worker = TurnWorker(services.broker, services.runner, concurrency=1, max_attempts=1)
    try:
        kb_id = await _seed(services, principal, [QUESTION])
        conversation = await services.chat.create_conversation(
            principal, title=None, model="mock-cite"
        )
        turn = await services.chat.post_message(
            principal, conversation.id, content=QUESTION, model=None, knowledge_base_ids=[kb_id]
        )
        async with services.db.session() as session:  # the lexical index is gone
            await session.execute(text("DROP TABLE kb_chunks_fts"))
            await session.commit()

        worker.start()
        events = await events_until_end(services.broker, turn.id)
        stored = await services.chat.get_turn(principal, turn.id)
        assistant = await _assistant(services, turn.id)
    finally:
        await worker.stop(deadline_s=1)
        await services.close()
    assert [e.type for e in events if e.type.startswith("turn.")][-1] == "turn.failed"
    assert events[-1].data["error"]["code"] == "retrieval_failed"
    assert "message.delta" not in [e.type for e in events]
    assert stored.status == "failed"
    assert stored.error_code == "retrieval_failed"
    assert assistant is None


async def test_a_cancelled_turn_stores_no_citations(tmp_path: Path) -> None:
    services, principal = await _services(tmp_path, mock_chunk_delay_ms=50)
    worker = TurnWorker(services.broker, services.runner, concurrency=1, max_attempts=1)
    try:
        long_text = " ".join(f"word{i}" for i in range(200)) + " " + QUESTION
        kb_id = await _seed(services, principal, [long_text, QUESTION + " Also this."])
        conversation = await services.chat.create_conversation(
            principal, title=None, model="mock-cite"
        )
        turn = await services.chat.post_message(
            principal, conversation.id, content=QUESTION, model=None, knowledge_base_ids=[kb_id]
        )
        worker.start()
        seen: list[Event] = []
        async with asyncio.timeout(10):
            while not any(e.type == "message.delta" for e in seen):
                seen += await services.broker.read(
                    turn.id, seen[-1].id if seen else None, timeout_s=1.0
                )
        await services.chat.cancel_turn(principal, turn.id)
        events = await events_until_end(services.broker, turn.id)
        assistant = await _assistant(services, turn.id)
    finally:
        await worker.stop(deadline_s=1)
        await services.close()
    kinds = [e.type for e in events]
    assert kinds[-1] == "turn.cancelled"
    assert "turn.citations" not in kinds
    assert assistant is not None  # the partial answer is kept, without citations
    assert assistant.citations is None
