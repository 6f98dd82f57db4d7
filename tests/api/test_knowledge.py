"""Knowledge bases through the API, on SQLite, on Postgres and in the scaled shape: upload ->
ready -> search, delete, duplicates, bad uploads, and tenant isolation on every route."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from tests.api.live import PASSWORD, LiveServer
from tests.api.sse import read_events

GUIDE = """# Field guide

## Otters

The sea otter uses a flat stone as an anvil to crack open clams. Otters hold hands while
they sleep so that they do not drift apart.

## Herons

The grey heron stands motionless in shallow water and spears fish with its bill.
"""
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
BROKEN_PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<<"


def unique(word: str) -> str:
    return f"{word}-{uuid.uuid4().hex[:8]}"


async def create_kb(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/kb", json={"name": unique("kb"), **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def upload(
    client: httpx.AsyncClient, kb_id: str, name: str, data: bytes, status: int = 202
) -> dict[str, Any]:
    response = await client.post(f"/api/kb/{kb_id}/documents", files={"file": (name, data)})
    assert response.status_code == status, response.text
    return dict(response.json())


async def indexed(client: httpx.AsyncClient, kb_id: str, name: str, data: bytes) -> dict[str, Any]:
    """Upload a document and follow its events until it is ready."""
    accepted = await upload(client, kb_id, name, data)
    frames = await read_events(client, accepted["events_url"])
    assert frames[-1].event == "document.ready", frames
    document = (await client.get(f"/api/kb/{kb_id}/documents/{accepted['document_id']}")).json()
    assert document["status"] == "ready"
    return dict(document)


async def search(client: httpx.AsyncClient, kb_id: str, query: str) -> list[dict[str, Any]]:
    response = await client.post(f"/api/kb/{kb_id}/search", json={"query": query})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "lexical"  # no embedder configured
    return list(body["results"])


async def listed_ids(client: httpx.AsyncClient) -> list[str]:
    return [item["id"] for item in (await client.get("/api/kb")).json()["items"]]


async def other_user(live: LiveServer, *, tenant: str, role: str = "member") -> str:
    """An API key of a new user of `tenant`."""
    email = f"{unique('user')}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug=tenant, role=role)
    _, key = await live.services.auth.create_api_key(email, "tests")
    return key


async def test_upload_index_search_download_and_duplicate(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client, description="Animals")
        assert kb["documents"] == 0
        assert kb["can_edit"] is True
        accepted = await upload(client, kb["id"], "guide.md", GUIDE.encode())
        assert accepted["status"] == "queued"
        assert accepted["duplicate"] is False
        frames = await read_events(client, accepted["events_url"])
        kinds = [frame.event for frame in frames]
        assert kinds[0] == "document.queued"
        assert "document.indexing" in kinds
        assert kinds[-1] == "document.ready"
        assert frames[-1].data["chunks"] >= 1

        listing = (await client.get(f"/api/kb/{kb['id']}/documents")).json()
        [document] = listing["items"]
        assert document["id"] == accepted["document_id"]
        assert document["status"] == "ready"
        assert document["media_type"] == "text/markdown"
        assert document["chunks"] == frames[-1].data["chunks"]
        assert document["size_bytes"] == len(GUIDE.encode())

        results = await search(client, kb["id"], "which animal cracks clams with a stone?")
        assert results, "the passage was not found"
        assert results[0]["document_id"] == document["id"]
        assert "flat stone" in results[0]["text"]
        assert results[0]["filename"] == "guide.md"
        assert "Otters" in (results[0]["heading"] or "")

        content = await client.get(f"/api/kb/{kb['id']}/documents/{document['id']}/content")
        assert content.status_code == 200
        assert content.content == GUIDE.encode()
        assert "guide.md" in content.headers["content-disposition"]

        again = await upload(client, kb["id"], "copy.md", GUIDE.encode(), status=200)
        assert again["duplicate"] is True
        assert again["document_id"] == document["id"]
        assert (await client.get(f"/api/kb/{kb['id']}")).json()["documents"] == 1


async def test_a_deleted_document_leaves_the_results_at_once(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client)
        keep = await indexed(client, kb["id"], "herons.txt", b"The heron spears fish.")
        doomed = await indexed(client, kb["id"], "guide.md", GUIDE.encode())
        assert {r["document_id"] for r in await search(client, kb["id"], "heron")} == {
            keep["id"],
            doomed["id"],
        }
        deleted = await client.delete(f"/api/kb/{kb['id']}/documents/{doomed['id']}")
        assert deleted.status_code == 204
        assert {r["document_id"] for r in await search(client, kb["id"], "heron")} == {keep["id"]}
        assert await search(client, kb["id"], "otters clams") == []
        gone = await client.get(f"/api/kb/{kb['id']}/documents/{doomed['id']}")
        assert gone.status_code == 404
        assert gone.json()["code"] == "document_not_found"
        content = await client.get(f"/api/kb/{kb['id']}/documents/{doomed['id']}/content")
        assert content.status_code == 404


async def test_bad_uploads_are_refused_and_change_nothing(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client)
        await indexed(client, kb["id"], "guide.md", GUIDE.encode())

        unsupported = await client.post(
            f"/api/kb/{kb['id']}/documents", files={"file": ("notes.txt", PNG)}
        )
        assert unsupported.status_code == 415
        assert unsupported.json()["code"] == "unsupported_media_type"

        broken = await client.post(
            f"/api/kb/{kb['id']}/documents", files={"file": ("report.pdf", BROKEN_PDF)}
        )
        assert broken.status_code == 422, broken.text
        assert broken.json()["code"] == "document_unreadable"

        empty = await client.post(f"/api/kb/{kb['id']}/documents", files={"file": ("e.txt", b"")})
        assert empty.status_code == 400
        assert empty.json()["code"] == "empty_document"

        limit = live.services.settings.upload_max_bytes
        too_big = await client.post(
            f"/api/kb/{kb['id']}/documents", files={"file": ("big.txt", b"a" * (limit + 1))}
        )
        assert too_big.status_code == 413
        assert too_big.json()["code"] == "upload_too_large"

        missing = await client.post(f"/api/kb/{kb['id']}/documents", data={"x": "1"})
        assert missing.status_code == 422

        listing = (await client.get(f"/api/kb/{kb['id']}/documents")).json()
        assert [d["filename"] for d in listing["items"]] == ["guide.md"]
        assert (await search(client, kb["id"], "otters"))[0]["filename"] == "guide.md"


async def test_knowledge_bases_are_listed_renamed_and_deleted(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client, visibility="tenant")
        await indexed(client, kb["id"], "guide.md", GUIDE.encode())
        listed = (await client.get("/api/kb")).json()["items"]
        assert kb["id"] in [item["id"] for item in listed]

        renamed = await client.patch(
            f"/api/kb/{kb['id']}", json={"name": "Animals", "visibility": "private"}
        )
        assert renamed.status_code == 200
        assert renamed.json()["name"] == "Animals"
        assert renamed.json()["visibility"] == "private"
        assert renamed.json()["documents"] == 1

        bad = await client.patch(f"/api/kb/{kb['id']}", json={"visibility": "public"})
        assert bad.status_code == 422

        assert (await client.delete(f"/api/kb/{kb['id']}")).status_code == 204
        assert (await client.get(f"/api/kb/{kb['id']}")).status_code == 404
        assert kb["id"] not in [
            item["id"] for item in (await client.get("/api/kb")).json()["items"]
        ]


async def test_every_route_hides_another_tenant_s_knowledge(live: LiveServer) -> None:
    async with live.client() as owner:
        kb = await create_kb(owner, visibility="tenant")
        document = await indexed(owner, kb["id"], "guide.md", GUIDE.encode())
    base = f"/api/kb/{kb['id']}"
    doc = f"{base}/documents/{document['id']}"
    stranger = await other_user(live, tenant=unique("other").lower())
    async with live.client(stranger) as client:
        assert kb["id"] not in [
            item["id"] for item in (await client.get("/api/kb")).json()["items"]
        ]
        calls = [
            client.get(base),
            client.patch(base, json={"name": "mine"}),
            client.delete(base),
            client.get(f"{base}/documents"),
            client.post(f"{base}/documents", files={"file": ("x.txt", b"hello there")}),
            client.get(doc),
            client.delete(doc),
            client.get(f"{doc}/content"),
            client.get(f"{doc}/events"),
            client.post(f"{base}/search", json={"query": "otters"}),
            client.post("/api/conversations", json={"knowledge_base_ids": [kb["id"]]}),
        ]
        for response in await asyncio.gather(*calls):
            assert response.status_code == 404, (response.request.url, response.text)
            assert "guide" not in response.text
    async with live.client() as owner:  # nothing changed
        assert (await owner.get(doc)).json()["status"] == "ready"
        assert (await owner.get(base)).json()["name"] == kb["name"]


async def test_sharing_within_a_tenant(live: LiveServer) -> None:
    colleague = await other_user(live, tenant="acme")
    async with live.client() as owner:
        shared = await create_kb(owner, visibility="tenant")
        private = await create_kb(owner)
        await indexed(owner, shared["id"], "guide.md", GUIDE.encode())
    async with live.client(colleague) as client:
        visible = {item["id"]: item for item in (await client.get("/api/kb")).json()["items"]}
        assert shared["id"] in visible
        assert private["id"] not in visible
        assert visible[shared["id"]]["can_edit"] is False
        assert (await client.get(f"/api/kb/{private['id']}")).status_code == 404
        assert (await search(client, shared["id"], "heron"))[0]["filename"] == "guide.md"
        refused = await client.post(
            f"/api/kb/{shared['id']}/documents", files={"file": ("x.txt", b"my own text")}
        )
        assert refused.status_code == 403
        assert refused.json()["code"] == "knowledge_base_read_only"
        assert (await client.delete(f"/api/kb/{shared['id']}")).status_code == 403
        conversation = await client.post(
            "/api/conversations", json={"knowledge_base_ids": [shared["id"]]}
        )
        assert conversation.status_code == 201
        assert conversation.json()["knowledge_base_ids"] == [shared["id"]]
        private_attach = await client.post(
            "/api/conversations", json={"knowledge_base_ids": [private["id"]]}
        )
        assert private_attach.status_code == 404
        assert private_attach.json()["code"] == "knowledge_base_not_found"


async def test_document_events_resume_after_an_id(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client)
        accepted = await upload(client, kb["id"], "guide.md", GUIDE.encode())
        first = await read_events(client, accepted["events_url"], limit=1)
        assert first[0].event == "document.queued"
        rest = await read_events(client, accepted["events_url"], last_event_id=first[0].id)
        assert rest[0].id != first[0].id
        assert rest[-1].event == "document.ready"


async def test_knowledge_health(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client)
        await indexed(client, kb["id"], "health.txt", unique("health check text").encode())
        body = (await client.get("/api/kb/health")).json()
        assert body["status"] == "ok"
        assert body["blob_store"] == "ok"
        assert body["embeddings"] == "none"
        assert set(body["documents"]) == {"queued", "indexing", "ready", "failed"}
        assert body["documents"]["ready"] >= 1
        assert body["queue_depth"] >= 0


@pytest.mark.parametrize("body", [{"query": ""}, {"query": "x", "top_k": 0}, {}])
async def test_bad_searches_are_refused(live: LiveServer, body: dict[str, Any]) -> None:
    async with live.client() as client:
        kb = await create_kb(client)
        response = await client.post(f"/api/kb/{kb['id']}/search", json=body)
        assert response.status_code == 422


async def test_metrics_show_documents_by_status(live: LiveServer) -> None:
    async with live.client() as client:
        kb = await create_kb(client)
        await indexed(client, kb["id"], "metrics.txt", unique("metrics text").encode())
        text = (await client.get("/metrics")).text
    ready = [
        line
        for line in text.splitlines()
        if line.startswith('chatplane_kb_documents_by_status{status="ready"}')
    ]
    assert ready, "no ready documents gauge"
    assert float(ready[0].rsplit(" ", 1)[1]) >= 1
    assert "chatplane_kb_oldest_waiting_document_age_seconds" in text
    assert "chatplane_kb_chunks_indexed_total" in text
