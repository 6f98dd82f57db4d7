"""Invitations: an admin invites, the invitee accepts with a password and is logged in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import update

from chatplane.auth.models import Invitation
from tests.admin.support import (
    add_user,
    audit_actions,
    client_ip,
    expect,
    login,
    new_org,
    unique_email,
)
from tests.api.live import PASSWORD, LiveServer


async def _accept(live: LiveServer, token: str, password: str = PASSWORD) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.base_url) as anonymous:
        return await anonymous.post(
            "/api/auth/invitations/accept",
            json={"token": token, "password": password},
            headers={"x-forwarded-for": client_ip()},
        )


async def _invite(live: LiveServer, admin_key: str, email: str, **body: object) -> dict[str, str]:
    async with live.client(admin_key) as admin:
        response = await admin.post("/api/admin/invitations", json={"email": email, **body})
    return dict(expect(response, 201))


async def test_an_accepted_invitation_makes_a_logged_in_user(live: LiveServer) -> None:
    org = await new_org(live)
    email = unique_email("invitee")
    invitation = await _invite(live, org.owner.key, email.upper(), role="admin")
    token = invitation["token"]
    assert invitation["email"] == email
    assert invitation["role"] == "admin"
    assert invitation["accept_url"] == f"/?invite={token}"
    expires_at = datetime.fromisoformat(invitation["expires_at"])
    assert abs(expires_at - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)
    async with live.client(org.owner.key) as admin:
        pending = expect(await admin.get("/api/admin/invitations"), 200)
    assert [i["id"] for i in pending] == [invitation["id"]]
    assert token not in str(pending)

    async with httpx.AsyncClient(base_url=live.base_url) as browser:
        accepted = await browser.post(
            "/api/auth/invitations/accept",
            json={"token": token, "password": PASSWORD},
            headers={"x-forwarded-for": client_ip()},
        )
        tokens = expect(accepted, 200)
        assert tokens["token_type"] == "bearer"
        assert "chatplane_session" in browser.cookies
        me = expect(await browser.get("/api/auth/me"), 200)  # by the session cookie
    assert me["email"] == email
    assert me["tenant_id"] == org.tenant_id
    assert me["role"] == "admin"
    async with live.client(tokens["access_token"]) as invitee:
        assert expect(await invitee.get("/api/auth/me"), 200)["id"] == me["id"]

    assert (await login(live, email)).status_code == 200
    expect(await _accept(live, token), 400, "invitation_used")
    async with live.client(org.owner.key) as admin:
        assert expect(await admin.get("/api/admin/invitations"), 200) == []
    actions = await audit_actions(live, org.tenant_id)
    assert ("invitation.created", email) in actions
    assert ("invitation.accepted", email) in actions


async def test_unknown_revoked_and_expired_invitations_are_refused(live: LiveServer) -> None:
    org = await new_org(live)
    expect(await _accept(live, "no-such-token"), 404, "invitation_not_found")

    revoked = await _invite(live, org.owner.key, unique_email("revoked"))
    async with live.client(org.owner.key) as admin:
        expect(await admin.delete(f"/api/admin/invitations/{revoked['id']}"), 204)
        again = await admin.delete(f"/api/admin/invitations/{revoked['id']}")
        expect(again, 404, "invitation_not_found")
    expect(await _accept(live, revoked["token"]), 404, "invitation_not_found")
    assert ("invitation.revoked", revoked["email"]) in await audit_actions(live, org.tenant_id)

    expired = await _invite(live, org.owner.key, unique_email("late"), expires_in_days=1)
    async with live.services.db.session() as session:
        await session.execute(
            update(Invitation)
            .where(Invitation.id == expired["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    expect(await _accept(live, expired["token"]), 400, "invitation_expired")
    assert (await login(live, expired["email"])).status_code == 401

    fresh = await _invite(live, org.owner.key, unique_email("weak"))
    short = expect(await _accept(live, fresh["token"], "short"), 422, "validation_error")
    assert short["field"] == "password"


async def test_an_invitation_for_an_existing_account_is_409(live: LiveServer) -> None:
    org = await new_org(live)
    member = await add_user(live, org)
    async with live.client(org.owner.key) as admin:
        taken = await admin.post("/api/admin/invitations", json={"email": member.email})
        expect(taken, 409, "user_exists")

    email = unique_email("raced")
    invitation = await _invite(live, org.owner.key, email)
    async with live.client(org.owner.key) as admin:
        twice = await admin.post("/api/admin/invitations", json={"email": email})
        expect(twice, 409, "invitation_pending")
        # Meanwhile someone makes the account another way.
        expect(await admin.post("/api/admin/users", json={"email": email}), 201)
    expect(await _accept(live, invitation["token"]), 409, "user_exists")


async def test_only_owners_invite_owners(live: LiveServer) -> None:
    org = await new_org(live)
    admin = await add_user(live, org, role="admin")
    async with live.client(admin.key) as client:
        refused = await client.post(
            "/api/admin/invitations", json={"email": unique_email("boss"), "role": "owner"}
        )
        expect(refused, 403, "owner_required")
        bad = await client.post(
            "/api/admin/invitations", json={"email": unique_email("x"), "expires_in_days": 0}
        )
        assert expect(bad, 422, "validation_error")["field"] == "expires_in_days"
    owner_invite = await _invite(live, org.owner.key, unique_email("boss"), role="owner")
    tokens = expect(await _accept(live, owner_invite["token"]), 200)
    async with live.client(tokens["access_token"]) as new_owner:
        assert expect(await new_owner.get("/api/auth/me"), 200)["role"] == "owner"
