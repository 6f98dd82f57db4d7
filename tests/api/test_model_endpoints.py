"""Models added at run time, with the upstream key encrypted at rest."""

from __future__ import annotations

import os
import uuid

import httpx
import openai
import pytest
from sqlalchemy import select, update

from chatplane.auth.models import User
from chatplane.crypto import DecryptionFailed, SecretBox
from chatplane.providers.models import ModelEndpoint
from tests.api.live import PASSWORD, LiveServer
from tests.providers.fakes import FakeOpenAI

UPSTREAM_KEY = "sk-upstream-" + uuid.uuid4().hex


def test_secrets_are_sealed_to_their_key_and_context() -> None:
    box = SecretBox(os.urandom(32))
    sealed = box.encrypt("sk-123", context="model-a")
    assert "sk-123" not in sealed
    assert box.decrypt(sealed, context="model-a") == "sk-123"
    assert box.encrypt("sk-123", context="model-a") != sealed  # a fresh nonce each time
    with pytest.raises(DecryptionFailed):
        box.decrypt(sealed, context="model-b")
    with pytest.raises(DecryptionFailed):
        SecretBox(os.urandom(32)).decrypt(sealed, context="model-a")


async def _user_key(live: LiveServer, *, superadmin: bool, role: str = "admin") -> str:
    email = f"op-{uuid.uuid4().hex[:8]}@example.com"
    await live.services.auth.create_user(email, PASSWORD, tenant_slug="acme", role=role)
    if superadmin:
        async with live.services.db.session() as session:
            await session.execute(
                update(User).where(User.email == email).values(is_superadmin=True)
            )
            await session.commit()
    _, key = await live.services.auth.create_api_key(
        email,
        "ops",
        scopes=frozenset({"chat", "admin"}) if role != "member" else frozenset({"chat"}),
    )
    return key


async def test_an_operator_adds_a_model_whose_key_is_stored_encrypted(live: LiveServer) -> None:
    name = f"secret-gpt-{uuid.uuid4().hex[:6]}"
    operator = await _user_key(live, superadmin=True)
    async with (
        FakeOpenAI(api_key=UPSTREAM_KEY, chunks=("Sec", "ret")) as upstream,
        live.client(operator) as admin,
    ):
        created = await admin.post(
            "/api/admin/models",
            json={
                "name": name,
                "base_url": upstream.base_url,
                "api_key": UPSTREAM_KEY,
                "upstream_model": "gpt-fake",
                "input_usd_per_mtok": 1.0,
            },
        )
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["api_key_hint"] == "…" + UPSTREAM_KEY[-4:]
        assert UPSTREAM_KEY not in created.text
        listed = (await admin.get("/api/admin/models")).text
        assert name in listed
        assert UPSTREAM_KEY not in listed

        async with live.services.db.session() as session:
            stored = await session.scalar(
                select(ModelEndpoint.api_key_encrypted).where(ModelEndpoint.name == name)
            )
        assert stored is not None
        assert UPSTREAM_KEY not in stored

        sdk = openai.AsyncOpenAI(base_url=f"{live.base_url}/v1", api_key=operator, max_retries=0)
        async with sdk:
            answer = await sdk.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content == "Secret"
            assert upstream.requests[-1].headers["authorization"] == f"Bearer {UPSTREAM_KEY}"

            removed_key = await admin.patch(
                f"/api/admin/models/{endpoint['id']}", json={"api_key": ""}
            )
            assert removed_key.json()["api_key_hint"] is None
            with pytest.raises(openai.AuthenticationError):
                await sdk.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "hi"}]
                )

            assert (await admin.delete(f"/api/admin/models/{endpoint['id']}")).status_code == 204
            with pytest.raises(openai.NotFoundError):
                await sdk.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "hi"}]
                )


async def test_only_operators_manage_models(live: LiveServer) -> None:
    tenant_admin = await _user_key(live, superadmin=False)
    member = await _user_key(live, superadmin=False, role="member")
    body = {"name": "nope", "base_url": "http://127.0.0.1:9/v1"}
    async with live.client(tenant_admin) as admin, live.client(member) as plain:
        refused = await admin.post("/api/admin/models", json=body)
        assert refused.status_code == 403
        assert refused.json()["code"] == "not_superadmin"
        assert (await plain.get("/api/admin/models")).status_code == 403
    operator = await _user_key(live, superadmin=True)
    async with live.client(operator) as admin:
        bad = await admin.post(
            "/api/admin/models", json={"name": "x", "base_url": "ftp://example.com/v1"}
        )
        assert bad.status_code == 422
        anthropic_without_key = await admin.post(
            "/api/admin/models",
            json={"name": f"c-{uuid.uuid4().hex[:6]}", "provider": "anthropic"},
        )
        assert anthropic_without_key.status_code == 422
        assert anthropic_without_key.json()["field"] == "api_key"
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        assert (await anonymous.get("/api/admin/models")).status_code == 401
