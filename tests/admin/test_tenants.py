"""Tenants, managed by superadmins only."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from chatplane.auth.models import AuditEvent
from tests.admin.support import (
    add_user,
    client_ip,
    expect,
    make_superadmin,
    new_org,
    unique,
    unique_email,
)
from tests.api.live import LiveServer


async def test_a_superadmin_creates_lists_and_changes_tenants(live: LiveServer) -> None:
    operator = await new_org(live, superadmin=True)
    slug = unique("new")
    async with live.client(operator.owner.key) as client:
        created = expect(
            await client.post(
                "/api/admin/tenants",
                json={
                    "slug": slug,
                    "name": "New Co",
                    "sso_domains": ["NewCo.example", "newco.example", "sub.newco.example"],
                },
            ),
            201,
        )
        assert created["sso_domains"] == ["newco.example", "sub.newco.example"]
        assert created["disabled"] is False
        listed = expect(await client.get("/api/admin/tenants"), 200)
        assert {created["id"], operator.tenant_id} <= {t["id"] for t in listed}

        duplicate = await client.post("/api/admin/tenants", json={"slug": slug, "name": "Again"})
        expect(duplicate, 409, "tenant_exists")
        bad_domain = await client.post(
            "/api/admin/tenants",
            json={"slug": unique("bad"), "name": "Bad", "sso_domains": ["not a domain"]},
        )
        assert expect(bad_domain, 422, "validation_error")["field"] == "sso_domains"
        bad_slug = await client.post("/api/admin/tenants", json={"slug": "Bad Slug", "name": "x"})
        assert expect(bad_slug, 422, "validation_error")["field"] == "slug"

        changed = expect(
            await client.patch(
                f"/api/admin/tenants/{created['id']}",
                json={"name": "Newer Co", "sso_domains": [], "disabled": True},
            ),
            200,
        )
        assert (changed["name"], changed["sso_domains"], changed["disabled"]) == (
            "Newer Co",
            [],
            True,
        )
        missing = await client.patch("/api/admin/tenants/nope", json={"name": "x"})
        expect(missing, 404, "tenant_not_found")

    async with live.services.db.session() as session:
        actions = (
            await session.scalars(
                select(AuditEvent.action).where(
                    AuditEvent.tenant_id == created["id"],
                    AuditEvent.actor_id == operator.owner.id,
                )
            )
        ).all()
    assert sorted(actions) == ["tenant.created", "tenant.updated"]


async def test_tenant_admins_cannot_manage_tenants(live: LiveServer) -> None:
    org = await new_org(live)
    async with live.client(org.owner.key) as owner:
        expect(await owner.get("/api/admin/tenants"), 403, "not_superadmin")
        created = await owner.post("/api/admin/tenants", json={"slug": unique("x"), "name": "X"})
        expect(created, 403, "not_superadmin")
        renamed = await owner.patch(f"/api/admin/tenants/{org.tenant_id}", json={"name": "Mine"})
        expect(renamed, 403, "not_superadmin")


async def test_a_disabled_tenant_takes_no_new_members_and_logs_everyone_out(
    live: LiveServer,
) -> None:
    operator = await new_org(live, superadmin=True)
    org = await new_org(live)
    async with live.client(org.owner.key) as owner:
        invited = await owner.post("/api/admin/invitations", json={"email": unique_email("late")})
        token = expect(invited, 201)["token"]
    async with live.client(operator.owner.key) as client:
        disable = await client.patch(f"/api/admin/tenants/{org.tenant_id}", json={"disabled": True})
        assert expect(disable, 200)["disabled"] is True
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        accepted = await anonymous.post(
            "/api/auth/invitations/accept",
            json={"token": token, "password": "long enough password"},
            headers={"x-forwarded-for": client_ip()},
        )
    expect(accepted, 403, "tenant_disabled")
    async with live.client(org.owner.key) as owner:
        expect(await owner.get("/api/auth/me"), 401, "invalid_api_key")


async def test_tenant_owners_cannot_change_a_superadmin(live: LiveServer) -> None:
    org = await new_org(live)
    operator = await add_user(live, org)
    await make_superadmin(live, operator.id)
    async with live.client(org.owner.key) as owner:
        for change in ({"disabled": True}, {"role": "admin"}):
            refused = await owner.patch(f"/api/admin/users/{operator.id}", json=change)
            expect(refused, 403, "not_superadmin")
        still = expect(await owner.get(f"/api/admin/users/{operator.id}"), 200)
    assert (still["role"], still["disabled"], still["is_superadmin"]) == ("member", False, True)
