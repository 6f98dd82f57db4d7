"""Administering users: create, list, roles, owners, disabling, sessions, the audit log."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from chatplane.auth.models import User
from tests.admin.support import (
    access_token,
    add_user,
    audit_actions,
    expect,
    login,
    make_superadmin,
    new_org,
    status_of,
    unique,
)
from tests.api.live import PASSWORD, LiveServer


async def test_create_list_filter_and_page_users(live: LiveServer) -> None:
    org = await new_org(live)
    marker = unique("team")
    async with live.client(org.owner.key) as admin:
        with_password = expect(
            await admin.post(
                "/api/admin/users",
                json={"email": f"a.{marker}@example.com", "password": PASSWORD, "role": "admin"},
            ),
            201,
        )
        assert with_password["role"] == "admin"
        assert with_password["has_password"] is True
        sso_only = expect(
            await admin.post("/api/admin/users", json={"email": f"B.{marker}@Example.com"}), 201
        )
        assert sso_only == {**sso_only, "email": f"b.{marker}@example.com", "role": "member"}
        assert sso_only["has_password"] is False
        expect(await admin.post("/api/admin/users", json={"email": f"c.{marker}@example.com"}), 201)

        duplicate = await admin.post("/api/admin/users", json={"email": f"a.{marker}@example.com"})
        expect(duplicate, 409, "user_exists")
        bad = expect(await admin.post("/api/admin/users", json={"email": "nope"}), 422)
        assert bad["field"] == "email"
        short = expect(
            await admin.post(
                "/api/admin/users", json={"email": f"d.{marker}@example.com", "password": "short"}
            ),
            422,
        )
        assert short["field"] == "password"

        first = expect(
            await admin.get("/api/admin/users", params={"email": marker, "limit": 2}), 200
        )
        assert first["total"] == 3
        assert [u["email"][0] for u in first["items"]] == ["a", "b"]
        assert first["next_offset"] == 2
        rest = expect(
            await admin.get("/api/admin/users", params={"email": marker.upper(), "offset": 2}), 200
        )
        assert [u["email"][0] for u in rest["items"]] == ["c"]
        assert rest["next_offset"] is None
        everyone = expect(await admin.get("/api/admin/users"), 200)
        assert everyone["total"] == 4  # the owner too, and nobody of another organisation
        one = expect(await admin.get(f"/api/admin/users/{sso_only['id']}"), 200)
        assert one["email"] == sso_only["email"]

    assert (await login(live, f"a.{marker}@example.com")).status_code == 200
    assert (await login(live, f"b.{marker}@example.com", PASSWORD)).status_code == 401
    assert ("user.created", sso_only["id"]) in await audit_actions(live, org.tenant_id)


async def test_only_an_owner_grants_or_changes_the_owner_role(live: LiveServer) -> None:
    org = await new_org(live)
    admin = await add_user(live, org, role="admin")
    member = await add_user(live, org)
    async with live.client(admin.key) as client:
        grant = await client.patch(f"/api/admin/users/{member.id}", json={"role": "owner"})
        expect(grant, 403, "owner_required")
        create = await client.post(
            "/api/admin/users", json={"email": f"{unique('o')}@example.com", "role": "owner"}
        )
        expect(create, 403, "owner_required")
        disable_owner = await client.patch(
            f"/api/admin/users/{org.owner.id}", json={"disabled": True}
        )
        expect(disable_owner, 403, "owner_required")
        promoted = await client.patch(f"/api/admin/users/{member.id}", json={"role": "admin"})
        assert expect(promoted, 200)["role"] == "admin"
    async with live.client(org.owner.key) as client:
        granted = await client.patch(f"/api/admin/users/{member.id}", json={"role": "owner"})
        assert expect(granted, 200)["role"] == "owner"
    actions = await audit_actions(live, org.tenant_id)
    assert actions.count(("user.role_changed", member.id)) == 2


async def test_a_demoted_admin_loses_admin_access_at_once(live: LiveServer) -> None:
    org = await new_org(live)
    admin = await add_user(live, org, role="admin")
    assert await status_of(live, admin.key, "/api/admin/users") == 200  # cached now
    async with live.client(org.owner.key) as client:
        expect(await client.patch(f"/api/admin/users/{admin.id}", json={"role": "member"}), 200)
    async with live.client(admin.key) as client:
        expect(await client.get("/api/admin/users"), 403, "not_admin")


async def test_the_last_owner_stays(live: LiveServer) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as owner:
        demote = await owner.patch(f"/api/admin/users/{org.owner.id}", json={"role": "admin"})
        expect(demote, 409, "last_owner")
        myself = await owner.patch(f"/api/admin/users/{org.owner.id}", json={"disabled": True})
        expect(myself, 400, "cannot_disable_self")

    second = await add_user(live, org, role="owner")
    async with live.client(second.key) as second_owner:
        demoted = await second_owner.patch(
            f"/api/admin/users/{org.owner.id}", json={"role": "member"}
        )
        assert expect(demoted, 200)["role"] == "member"
        last = await second_owner.patch(f"/api/admin/users/{second.id}", json={"role": "admin"})
        expect(last, 409, "last_owner")
    # A superadmin may change owners without being one, but not remove the last one.
    operator = await add_user(live, org, role="admin")
    await make_superadmin(live, operator.id)
    async with live.client(operator.key) as superadmin:
        disable_last = await superadmin.patch(
            f"/api/admin/users/{second.id}", json={"disabled": True}
        )
        expect(disable_last, 409, "last_owner")
        promoted = await superadmin.patch(
            f"/api/admin/users/{org.owner.id}", json={"role": "owner"}
        )
        assert expect(promoted, 200)["role"] == "owner"
    async with live.client(second.key) as second_owner:
        still = expect(await second_owner.get(f"/api/admin/users/{second.id}"), 200)
    assert (still["role"], still["disabled"]) == ("owner", False)


async def test_two_owners_demoting_each_other_leave_one_owner(live: LiveServer) -> None:
    org = await new_org(live)
    other = await add_user(live, org, role="owner")
    async with live.client(org.owner.key) as first, live.client(other.key) as second:
        results = await asyncio.gather(
            first.patch(f"/api/admin/users/{other.id}", json={"role": "admin"}),
            second.patch(f"/api/admin/users/{org.owner.id}", json={"role": "admin"}),
        )
    statuses = sorted(r.status_code for r in results)
    assert statuses[0] == 200, [r.text for r in results]
    assert statuses[1] in (403, 409), [r.text for r in results]
    async with live.services.db.session() as session:
        owners = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.tenant_id == org.tenant_id, User.role == "owner")
        )
    assert owners == 1


async def test_disabling_a_user_ends_its_sessions_and_keys(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    laptop = await access_token(live, member.email)
    phone = await access_token(live, member.email)
    for credential in (laptop, phone, member.key):  # each principal is cached now
        assert await status_of(live, credential) == 200
    async with live.client(org.owner.key) as admin:
        sessions = expect(await admin.get(f"/api/admin/users/{member.id}/sessions"), 200)
        assert len(sessions) == 2
        disabled = await admin.patch(f"/api/admin/users/{member.id}", json={"disabled": True})
        assert expect(disabled, 200)["disabled"] is True
        for credential in (laptop, phone, member.key):
            assert await status_of(live, credential) == 401
        assert (await login(live, member.email)).status_code == 401
        assert expect(await admin.get(f"/api/admin/users/{member.id}/sessions"), 200) == []

        enabled = await admin.patch(f"/api/admin/users/{member.id}", json={"disabled": False})
        assert expect(enabled, 200)["disabled"] is False
    assert await status_of(live, member.key) == 200  # the key was not revoked
    assert await status_of(live, laptop) == 401  # the sessions stay ended
    assert (await login(live, member.email)).status_code == 200
    actions = await audit_actions(live, org.tenant_id)
    assert ("user.disabled", member.id) in actions
    assert ("user.enabled", member.id) in actions


async def test_admin_ends_one_session_or_all_of_them(live: LiveServer) -> None:
    org = await new_org(live)
    member, bystander = await add_user(live, org), await add_user(live, org)
    laptop = await access_token(live, member.email)
    phone = await access_token(live, member.email)
    async with live.client(laptop) as client:
        mine = expect(await client.get("/api/auth/sessions"), 200)
    laptop_session = next(s["id"] for s in mine if s["current"])
    base = f"/api/admin/users/{member.id}/sessions"
    async with live.client(org.owner.key) as admin:
        wrong_user = await admin.delete(
            f"/api/admin/users/{bystander.id}/sessions/{laptop_session}"
        )
        expect(wrong_user, 404, "session_not_found")
        assert await status_of(live, laptop) == 200
        expect(await admin.delete(f"{base}/{laptop_session}"), 204)
        assert await status_of(live, laptop) == 401
        assert await status_of(live, phone) == 200
        expect(await admin.delete(f"{base}/{laptop_session}"), 404, "session_not_found")
        ended = expect(await admin.post(f"/api/admin/users/{member.id}/logout-all"), 200)
        assert ended == {"sessions_ended": 1}
        assert await status_of(live, phone) == 401
    actions = await audit_actions(live, org.tenant_id)
    assert ("session.revoked", laptop_session) in actions
    assert ("session.revoked", member.id) in actions


async def test_the_audit_log_is_newest_first_and_pages(live: LiveServer) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as admin:
        for n in range(3):
            email = f"{unique(f'audit{n}')}@example.com"
            expect(await admin.post("/api/admin/users", json={"email": email}), 201)
        first = expect(await admin.get("/api/admin/audit", params={"limit": 2}), 200)
        assert len(first["items"]) == 2
        assert first["next_before"] == first["items"][-1]["id"]
        rest = expect(
            await admin.get("/api/admin/audit", params={"before": first["next_before"]}), 200
        )
        events = first["items"] + rest["items"]
        assert rest["next_before"] is None
        assert len({e["id"] for e in events}) == len(events)
        stamps = [e["created_at"] for e in events]
        assert stamps == sorted(stamps, reverse=True)
        created = [e for e in events if e["action"] == "user.created"]
        assert len(created) == 3
        assert created[0]["detail"]["email"].startswith("audit2-")
        assert created[0]["actor_id"] == org.owner.id
        expect(
            await admin.get("/api/admin/audit", params={"before": "nope"}), 400, "invalid_cursor"
        )


@pytest.mark.parametrize(
    ("body", "field"),
    [({"role": "god"}, "role"), ({"disabled": "maybe"}, "disabled"), ({"email": "x"}, "email")],
)
async def test_bad_user_changes_are_422(
    live: LiveServer, body: dict[str, object], field: str
) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as admin:
        response = await admin.patch(f"/api/admin/users/{org.owner.id}", json=body)
    assert expect(response, 422, "validation_error")["field"] == field


async def test_unknown_users_are_404(live: LiveServer) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as admin:
        for response in (
            await admin.get("/api/admin/users/nope"),
            await admin.patch("/api/admin/users/nope", json={"role": "admin"}),
            await admin.get("/api/admin/users/nope/sessions"),
            await admin.post("/api/admin/users/nope/logout-all"),
        ):
            expect(response, 404, "user_not_found")
