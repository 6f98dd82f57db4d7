"""Tenants, managed by superadmins only: the one part of the admin API that crosses tenants,
so it has its own service and its own (unscoped, explicit) repository."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from sqlalchemy.exc import IntegrityError

from chatplane.admin.repository import TenantDirectory
from chatplane.auth.audit import AuditLog
from chatplane.auth.models import Tenant
from chatplane.auth.principal import Principal
from chatplane.auth.service import SLUG_RE, AuthService
from chatplane.db.base import new_id
from chatplane.db.engine import Database
from chatplane.errors import Conflict, Forbidden, NotFound, ValidationFailed

DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def require_superadmin(actor: Principal) -> None:
    if not (actor.is_superadmin and actor.may("admin")):
        raise Forbidden("Only superadmins may manage organisations", code="not_superadmin")


def sso_domains(domains: Iterable[str]) -> str:
    """The stored form: lowercase, unique, comma separated."""
    cleaned: list[str] = []
    for raw in domains:
        domain = raw.strip().lower()
        if not DOMAIN_RE.match(domain):
            raise ValidationFailed(f"Not a domain name: {raw!r}", field="sso_domains")
        if domain not in cleaned:
            cleaned.append(domain)
    return ",".join(cleaned)


def _name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise ValidationFailed("A name has 1 to 200 characters", field="name")
    return name


class TenantService:
    def __init__(self, db: Database, audit: AuditLog, auth: AuthService) -> None:
        self.db = db
        self.audit = audit
        self.auth = auth

    async def tenants(self, actor: Principal) -> Sequence[Tenant]:
        require_superadmin(actor)
        async with self.db.session() as session:
            return await TenantDirectory(session).tenants()

    async def create(
        self, actor: Principal, *, slug: str, name: str, domains: Iterable[str]
    ) -> Tenant:
        require_superadmin(actor)
        if not SLUG_RE.match(slug):
            raise ValidationFailed("A slug is lowercase letters, digits and -", field="slug")
        tenant = Tenant(id=new_id(), slug=slug, name=_name(name), sso_domains=sso_domains(domains))
        async with self.db.session() as session:
            TenantDirectory(session).add(tenant)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise Conflict(f"A tenant {slug!r} exists", code="tenant_exists") from exc
        await self.audit.record(
            "tenant.created",
            tenant_id=tenant.id,
            actor_id=actor.user_id,
            subject=slug,
            sso_domains=tenant.sso_domains,
        )
        return tenant

    async def update(
        self,
        actor: Principal,
        tenant_id: str,
        *,
        name: str | None,
        domains: Iterable[str] | None,
        disabled: bool | None,
    ) -> Tenant:
        require_superadmin(actor)
        values: dict[str, object] = {}
        if name is not None:
            values["name"] = _name(name)
        if domains is not None:
            values["sso_domains"] = sso_domains(domains)
        if disabled is not None:
            values["disabled"] = disabled
        async with self.db.session() as session:
            directory = TenantDirectory(session)
            if await directory.tenant(tenant_id) is None:
                raise NotFound("No such tenant", code="tenant_not_found")
            if values:
                await directory.set_tenant(tenant_id, **values)
                await session.commit()
            tenant = await directory.tenant(tenant_id)
        assert tenant is not None  # checked above; tenants are not deleted here
        if disabled:
            # Its logins and keys stop working at once, in every process.
            await self.auth.forget_everyone()
        if values:
            await self.audit.record(
                "tenant.updated",
                tenant_id=tenant.id,
                actor_id=actor.user_id,
                subject=tenant.slug,
                changes=values,
            )
        return tenant
