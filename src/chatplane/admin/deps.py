"""The admin services for a request, made from the process's `Services` (they hold only
references, so making one per request costs nothing)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from chatplane.admin.invitations import InvitationService
from chatplane.admin.keys import ApiKeyService
from chatplane.admin.service import AdminService
from chatplane.admin.tenants import TenantService
from chatplane.auth.deps import ServicesDep


async def admin_service(services: ServicesDep) -> AdminService:
    return AdminService(services.db, services.auth, services.sessions, services.audit)


async def key_service(services: ServicesDep) -> ApiKeyService:
    return ApiKeyService(services.db, services.auth, services.audit)


async def invitation_service(services: ServicesDep) -> InvitationService:
    return InvitationService(
        services.db, services.auth.passwords, services.sessions, services.audit
    )


async def tenant_service(services: ServicesDep) -> TenantService:
    return TenantService(services.db, services.audit, services.auth)


AdminServiceDep = Annotated[AdminService, Depends(admin_service)]
KeyServiceDep = Annotated[ApiKeyService, Depends(key_service)]
InvitationServiceDep = Annotated[InvitationService, Depends(invitation_service)]
TenantServiceDep = Annotated[TenantService, Depends(tenant_service)]
