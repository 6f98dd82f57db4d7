"""Pydantic shapes of the admin API, the own-keys API and invitation acceptance."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from chatplane.auth.models import ApiKey, AuditEvent, Tenant, User
from chatplane.auth.schemas import ApiKeyCreated, ApiKeyOut

Role = Literal["owner", "admin", "member"]


class Strict(BaseModel):
    """Input: an unknown field is a mistake the caller should hear about."""

    model_config = ConfigDict(extra="forbid")


# Users.


class UserIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=1024,
        description="Without one, the user signs in with SSO (or is sent an invitation).",
    )
    role: Role = "member"


class UserPatch(Strict):
    role: Role | None = None
    disabled: bool | None = None


class UserOut(BaseModel):
    id: str
    email: str
    role: str
    disabled: bool
    is_superadmin: bool
    has_password: bool
    created_at: datetime
    last_login_at: datetime | None


class UserPage(BaseModel):
    items: list[UserOut]
    total: int
    next_offset: int | None


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        role=user.role,
        disabled=user.disabled,
        is_superadmin=user.is_superadmin,
        has_password=user.password_hash is not None,
        created_at=user.created_at,
        last_login_at=user.last_login_at,
    )


# API keys.


class TenantKeyOut(ApiKeyOut):
    user_id: str
    user_email: str
    # The key's own limits (null: the organisation's key default; 0: unlimited).
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=key.scopes.split(","),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


def key_created(key: ApiKey, plaintext: str) -> ApiKeyCreated:
    return ApiKeyCreated(**key_out(key).model_dump(), key=plaintext)


def tenant_key_out(key: ApiKey, email: str) -> TenantKeyOut:
    return TenantKeyOut(
        **key_out(key).model_dump(),
        user_id=key.user_id,
        user_email=email,
        rpm=key.rpm,
        tpm=key.tpm,
        max_concurrent=key.max_concurrent,
    )


# Invitations.


class InvitationIn(Strict):
    email: str = Field(min_length=3, max_length=320)
    role: Role = "member"
    expires_in_days: int | None = Field(default=None, ge=1, le=90)


class InvitationOut(BaseModel):
    id: str
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    created_by: str | None


class InvitationCreated(InvitationOut):
    token: str = Field(description="Shown once; only its hash is stored.")
    accept_url: str


class InvitationAcceptIn(Strict):
    token: str = Field(min_length=1, max_length=512)
    password: str = Field(min_length=8, max_length=1024)


# Audit.


class AuditEventOut(BaseModel):
    id: str
    created_at: datetime
    action: str
    actor_id: str | None
    subject: str | None
    ip: str | None
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_before: str | None = Field(description="Pass as `before` for the next (older) page.")


def audit_out(event: AuditEvent) -> AuditEventOut:
    detail = orjson.loads(event.detail or "{}")
    return AuditEventOut(
        id=event.id,
        created_at=event.created_at,
        action=event.action,
        actor_id=event.actor_id,
        subject=event.subject,
        ip=event.ip,
        detail=detail if isinstance(detail, dict) else {"value": detail},
    )


# Tenants (superadmins).

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class TenantIn(Strict):
    slug: str = Field(pattern=SLUG_PATTERN, max_length=63)
    name: str = Field(min_length=1, max_length=200)
    sso_domains: list[str] = Field(default_factory=list, max_length=50)


class TenantPatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    sso_domains: list[str] | None = Field(default=None, max_length=50)
    disabled: bool | None = None


class TenantOut(BaseModel):
    id: str
    slug: str
    name: str
    sso_domains: list[str]
    disabled: bool
    created_at: datetime


def tenant_out(tenant: Tenant) -> TenantOut:
    return TenantOut(
        id=tenant.id,
        slug=tenant.slug,
        name=tenant.name,
        sso_domains=[d for d in tenant.sso_domains.split(",") if d],
        disabled=tenant.disabled,
        created_at=tenant.created_at,
    )


# Limits and budgets.

LimitValue = Annotated[int | None, Field(ge=0, le=10_000_000)]


class LimitValues(Strict):
    """Requests/minute (`*rpm`), tokens/minute (`*tpm`) and concurrent requests
    (`*max_concurrent`) for the whole organisation, each member (`user_*`) and each API key
    (`key_*`). null: the server's default; 0: unlimited."""

    rpm: LimitValue = None
    tpm: LimitValue = None
    max_concurrent: LimitValue = None
    user_rpm: LimitValue = None
    user_tpm: LimitValue = None
    user_max_concurrent: LimitValue = None
    key_rpm: LimitValue = None
    key_tpm: LimitValue = None
    key_max_concurrent: LimitValue = None
    response_cache: bool | None = Field(
        default=None,
        description="Answer repeated deterministic gateway requests from the response cache "
        "(null: off). The organisation's own admins may set this one.",
    )


class LimitsOut(BaseModel):
    tenant_id: str
    overrides: dict[str, int | None]
    defaults: dict[str, int]
    effective: dict[str, int]
    response_cache: bool = False


class KeyLimitsIn(Strict):
    """A key's own limits (null: the organisation's key default; 0: unlimited)."""

    rpm: LimitValue = None
    tpm: LimitValue = None
    max_concurrent: LimitValue = None
    response_cache: bool | None = Field(
        default=None, description="The gateway response cache for this key (null: as the "
        "organisation chose)"
    )  # fmt: skip


class KeyLimitsOut(BaseModel):
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    response_cache: bool | None = None


class BudgetIn(Strict):
    scope: Literal["tenant", "user", "key"]
    subject_id: str | None = Field(
        default=None, max_length=32, description="The user or key id (none for the tenant)"
    )
    period: Literal["day", "month", "lifetime"]
    limit_usd: float = Field(ge=0, le=10_000_000, allow_inf_nan=False)


class BudgetPatch(Strict):
    limit_usd: float = Field(ge=0, le=10_000_000, allow_inf_nan=False)


class BudgetOut(BaseModel):
    id: str
    scope: str
    subject_id: str
    subject_label: str
    period: str
    limit_usd: float
    spent_usd: float = Field(description="Settled spend in the current period")
    reserved_usd: float = Field(description="Held by requests running now")
    period_start: datetime | None = Field(description="UTC start of the period (null: lifetime)")
    created_at: datetime
