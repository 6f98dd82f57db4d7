"""HTTP routes of the admin API (`/api/admin`, within the caller's own tenant; tenants
themselves for superadmins) and of accepting an invitation. HTTP only: the rules and the
tenant scoping live in the services and their repository."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from chatplane.admin.deps import (
    AdminServiceDep,
    InvitationServiceDep,
    KeyServiceDep,
    TenantServiceDep,
)
from chatplane.admin.invitations import accept_url
from chatplane.admin.schemas import (
    AuditPage,
    InvitationAcceptIn,
    InvitationCreated,
    InvitationIn,
    InvitationOut,
    TenantIn,
    TenantKeyOut,
    TenantOut,
    TenantPatch,
    UserIn,
    UserOut,
    UserPage,
    UserPatch,
    audit_out,
    tenant_key_out,
    tenant_out,
    user_out,
)
from chatplane.auth.cookies import set_session_cookies
from chatplane.auth.deps import AdminPrincipal, ClientDep, ServicesDep
from chatplane.auth.schemas import LogoutAllOut, SessionOut, TokensOut

router = APIRouter(prefix="/api/admin", tags=["admin"])
accept_router = APIRouter(prefix="/api/auth", tags=["auth"])

NO_CONTENT = 204


# Users.


@router.get("/users", response_model=UserPage)
async def list_users(
    actor: AdminPrincipal,
    admin: AdminServiceDep,
    email: Annotated[str | None, Query(max_length=320, description="Part of the email")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> UserPage:
    """The users of the organisation, by email."""
    users, total = await admin.list_users(actor, email_contains=email, limit=limit, offset=offset)
    next_offset = offset + len(users) if offset + len(users) < total else None
    return UserPage(items=[user_out(u) for u in users], total=total, next_offset=next_offset)


@router.post("/users", status_code=201, response_model=UserOut)
async def create_user(body: UserIn, actor: AdminPrincipal, admin: AdminServiceDep) -> UserOut:
    """A user of the organisation; without a password it signs in with SSO only."""
    user = await admin.create_user(actor, email=body.email, password=body.password, role=body.role)
    return user_out(user)


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: str, actor: AdminPrincipal, admin: AdminServiceDep) -> UserOut:
    return user_out(await admin.get_user(actor, user_id))


@router.patch("/users/{user_id}", response_model=UserOut)
async def update_user(
    user_id: str, body: UserPatch, actor: AdminPrincipal, admin: AdminServiceDep
) -> UserOut:
    """Change the role or disable the user. Only an owner grants or changes the owner role;
    the last owner stays; disabling ends the user's sessions and stops its keys."""
    user = await admin.update_user(actor, user_id, role=body.role, disabled=body.disabled)
    return user_out(user)


@router.get("/users/{user_id}/sessions", response_model=list[SessionOut])
async def user_sessions(
    user_id: str, actor: AdminPrincipal, admin: AdminServiceDep
) -> list[SessionOut]:
    sessions = await admin.user_sessions(actor, user_id)
    return [
        SessionOut.model_validate(s, from_attributes=True).model_copy(
            update={"current": s.id == actor.session_id}
        )
        for s in sessions
    ]


@router.delete("/users/{user_id}/sessions/{session_id}", status_code=NO_CONTENT)
async def end_user_session(
    user_id: str, session_id: str, actor: AdminPrincipal, admin: AdminServiceDep
) -> Response:
    await admin.end_user_session(actor, user_id, session_id)
    return Response(status_code=NO_CONTENT)


@router.post("/users/{user_id}/logout-all", response_model=LogoutAllOut)
async def logout_user_everywhere(
    user_id: str, actor: AdminPrincipal, admin: AdminServiceDep
) -> LogoutAllOut:
    return LogoutAllOut(sessions_ended=await admin.logout_user_everywhere(actor, user_id))


# Invitations.


@router.get("/invitations", response_model=list[InvitationOut])
async def pending_invitations(
    actor: AdminPrincipal, invitations: InvitationServiceDep
) -> list[InvitationOut]:
    """Invitations not yet accepted and not expired, newest first."""
    pending = await invitations.pending(actor)
    return [InvitationOut.model_validate(i, from_attributes=True) for i in pending]


@router.post("/invitations", status_code=201, response_model=InvitationCreated)
async def invite(
    body: InvitationIn, actor: AdminPrincipal, invitations: InvitationServiceDep
) -> InvitationCreated:
    """Invite an email with a role. The token is shown once: send `accept_url` to them."""
    invitation, token = await invitations.invite(
        actor, email=body.email, role=body.role, expires_in_days=body.expires_in_days
    )
    return InvitationCreated(
        **InvitationOut.model_validate(invitation, from_attributes=True).model_dump(),
        token=token,
        accept_url=accept_url(token),
    )


@router.delete("/invitations/{invitation_id}", status_code=NO_CONTENT)
async def revoke_invitation(
    invitation_id: str, actor: AdminPrincipal, invitations: InvitationServiceDep
) -> Response:
    await invitations.revoke(actor, invitation_id)
    return Response(status_code=NO_CONTENT)


@accept_router.post("/invitations/accept", response_model=TokensOut)
async def accept_invitation(
    body: InvitationAcceptIn,
    request: Request,
    response: Response,
    invitations: InvitationServiceDep,
    services: ServicesDep,
    client: ClientDep,
) -> TokensOut:
    """Become the invited user with this password, logged in as by `/api/auth/login`."""
    result = await invitations.accept(body.token, body.password, client)
    set_session_cookies(response, result, request=request, settings=services.settings)
    return TokensOut(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        expires_in=result.expires_in,
    )


# API keys of the organisation.


@router.get("/keys", response_model=list[TenantKeyOut])
async def tenant_keys(actor: AdminPrincipal, keys: KeyServiceDep) -> list[TenantKeyOut]:
    """Every API key of the organisation, revoked ones included, newest first."""
    return [tenant_key_out(key, email) for key, email in await keys.tenant_keys(actor)]


@router.delete("/keys/{key_id}", status_code=NO_CONTENT)
async def revoke_tenant_key(key_id: str, actor: AdminPrincipal, keys: KeyServiceDep) -> Response:
    await keys.revoke_tenant_key(actor, key_id)
    return Response(status_code=NO_CONTENT)


# Audit log.


@router.get("/audit", response_model=AuditPage)
async def audit_log(
    actor: AdminPrincipal,
    admin: AdminServiceDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(max_length=64, description="An event id")] = None,
) -> AuditPage:
    """The organisation's security events, newest first."""
    events, next_before = await admin.audit_page(actor, limit=limit, before=before)
    return AuditPage(items=[audit_out(e) for e in events], next_before=next_before)


# Tenants (superadmins).


@router.get("/tenants", response_model=list[TenantOut])
async def list_tenants(actor: AdminPrincipal, tenants: TenantServiceDep) -> list[TenantOut]:
    return [tenant_out(t) for t in await tenants.tenants(actor)]


@router.post("/tenants", status_code=201, response_model=TenantOut)
async def create_tenant(
    body: TenantIn, actor: AdminPrincipal, tenants: TenantServiceDep
) -> TenantOut:
    tenant = await tenants.create(actor, slug=body.slug, name=body.name, domains=body.sso_domains)
    return tenant_out(tenant)


@router.patch("/tenants/{tenant_id}", response_model=TenantOut)
async def update_tenant(
    tenant_id: str, body: TenantPatch, actor: AdminPrincipal, tenants: TenantServiceDep
) -> TenantOut:
    tenant = await tenants.update(
        actor, tenant_id, name=body.name, domains=body.sso_domains, disabled=body.disabled
    )
    return tenant_out(tenant)
