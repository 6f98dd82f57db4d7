"""A user's own API keys (/api/keys) and an organisation's keys (/api/admin/keys)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.admin.support import (
    access_token,
    add_user,
    audit_actions,
    expect,
    new_org,
    status_of,
)
from tests.api.live import LiveServer


async def test_own_key_is_shown_once_and_revoking_stops_it_at_once(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    token = await access_token(live, member.email)
    async with live.client(token) as client:
        created = expect(
            await client.post(
                "/api/keys", json={"name": "laptop", "scopes": ["chat"], "expires_in_days": 30}
            ),
            201,
        )
        key = created["key"]
        assert key.startswith("cp_")
        assert key.startswith(created["prefix"])
        assert created["scopes"] == ["chat"]
        expires_at = datetime.fromisoformat(created["expires_at"])
        assert abs(expires_at - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)

        listed = expect(await client.get("/api/keys"), 200)
        assert {k["id"] for k in listed} >= {created["id"]}
        assert all("key" not in k and "key_hash" not in k for k in listed)
        assert key not in str(listed)

        # The key works, so its principal is cached; revoking must still end it at once.
        assert await status_of(live, key, "/api/conversations") == 200
        expect(await client.delete(f"/api/keys/{created['id']}"), 204)
        async with live.client(key) as with_key:
            refused = await with_key.get("/api/conversations")
        expect(refused, 401, "invalid_api_key")
        listed = expect(await client.get("/api/keys"), 200)
        revoked = next(k for k in listed if k["id"] == created["id"])
        assert revoked["revoked_at"] is not None

    actions = await audit_actions(live, org.tenant_id)
    assert ("key.created", created["prefix"]) in actions
    assert ("key.revoked", created["prefix"]) in actions


async def test_only_admins_make_admin_keys_and_never_beyond_their_credential(
    live: LiveServer,
) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    member_token = await access_token(live, member.email)
    async with live.client(member_token) as client:
        refused = await client.post("/api/keys", json={"name": "x", "scopes": ["chat", "admin"]})
        expect(refused, 403, "scope_not_allowed")

    _, chat_only = await live.services.auth.create_api_key(org.owner.email, "chat only")
    async with live.client(chat_only) as client:
        escalate = await client.post("/api/keys", json={"name": "x", "scopes": ["admin"]})
        expect(escalate, 403, "scope_not_allowed")

    owner_token = await access_token(live, org.owner.email)
    async with live.client(owner_token) as client:
        made = expect(
            await client.post("/api/keys", json={"name": "ops", "scopes": ["admin"]}), 201
        )
    assert made["scopes"] == ["admin"]
    assert await status_of(live, made["key"], "/api/admin/users") == 200
    assert await status_of(live, made["key"], "/api/conversations") == 403


async def test_admin_routes_need_the_admin_scope_and_role(live: LiveServer) -> None:
    org = await new_org(live)
    _, chat_only = await live.services.auth.create_api_key(org.owner.email, "chat only")
    member = await add_user(live, org)
    assert await status_of(live, org.owner.key, "/api/admin/users") == 200
    async with live.client(chat_only) as client:
        expect(await client.get("/api/admin/users"), 403, "insufficient_scope")
    async with live.client(await access_token(live, member.email)) as client:
        expect(await client.get("/api/admin/users"), 403, "not_admin")


async def test_another_users_key_is_not_found(live: LiveServer) -> None:
    org = await new_org(live)
    alice, bob = await add_user(live, org), await add_user(live, org)
    async with live.client(bob.key) as client:
        bobs_key = (await client.get("/api/keys")).json()[0]
    async with live.client(alice.key) as client:
        expect(await client.delete(f"/api/keys/{bobs_key['id']}"), 404, "key_not_found")
        assert bobs_key["id"] not in str((await client.get("/api/keys")).json())
    assert await status_of(live, bob.key, "/api/conversations") == 200


async def test_admin_lists_and_revokes_the_organisations_keys(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    async with live.client(org.owner.key) as admin:
        keys = expect(await admin.get("/api/admin/keys"), 200)
        assert {k["user_email"] for k in keys} == {org.owner.email, member.email}
        member_key = next(k for k in keys if k["user_id"] == member.id)
        assert await status_of(live, member.key, "/api/conversations") == 200
        expect(await admin.delete(f"/api/admin/keys/{member_key['id']}"), 204)
        assert await status_of(live, member.key, "/api/conversations") == 401
        expect(await admin.delete(f"/api/admin/keys/{member_key['id']}"), 204)  # idempotent
        expect(await admin.delete("/api/admin/keys/nope"), 404, "key_not_found")
        keys = expect(await admin.get("/api/admin/keys"), 200)
        assert next(k for k in keys if k["id"] == member_key["id"])["revoked_at"] is not None
    revocations = [a for a in await audit_actions(live, org.tenant_id) if a[0] == "key.revoked"]
    assert revocations == [("key.revoked", member_key["prefix"])]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
    ],
)
async def test_bad_key_requests_are_422(
    live: LiveServer, body: dict[str, object], field: str
) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as client:
        problem = expect(await client.post("/api/keys", json=body), 422, "validation_error")
    assert problem["field"] == field
