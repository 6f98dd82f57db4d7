"""The rules of API keys: a user's own keys (`/api/keys`) and a tenant's keys (admins).

A revoked key stops working at once: its cached principal is dropped in every process."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from chatplane.admin.repository import TenantRepository
from chatplane.admin.service import admin_repository
from chatplane.auth.audit import AuditLog
from chatplane.auth.models import ApiKey
from chatplane.auth.principal import Principal
from chatplane.auth.service import AuthService
from chatplane.db.base import utcnow
from chatplane.db.engine import Database
from chatplane.errors import Forbidden, NotFound


def key_not_found() -> NotFound:
    return NotFound("No such API key", code="key_not_found")


class ApiKeyService:
    def __init__(self, db: Database, auth: AuthService, audit: AuditLog) -> None:
        self.db = db
        self.auth = auth
        self.audit = audit

    # The caller's own keys.

    async def own_keys(self, principal: Principal) -> Sequence[ApiKey]:
        async with self.db.session() as session:
            return await TenantRepository(session, principal).keys_of(principal.user_id)

    async def create_own_key(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: frozenset[str],
        expires_in_days: int | None,
    ) -> tuple[ApiKey, str]:
        """A new key of the caller; the plaintext is returned once and never stored.
        A key carries 'admin' only for an admin, and never more than the credential that
        makes it (a chat-only key cannot mint an admin key)."""
        if "admin" in scopes and not principal.is_admin:
            raise Forbidden("Only admins may create admin keys", code="scope_not_allowed")
        if not scopes <= principal.scopes:
            raise Forbidden(
                "A key cannot have scopes the calling credential lacks", code="scope_not_allowed"
            )
        expires_at = None
        if expires_in_days is not None:
            expires_at = utcnow() + timedelta(days=expires_in_days)
        # AuthService makes the key (one format of keys) and audits key.created.
        return await self.auth.create_api_key(
            principal.email, name, scopes=scopes, expires_at=expires_at
        )

    async def revoke_own_key(self, principal: Principal, key_id: str) -> None:
        async with self.db.session() as session:
            repo = TenantRepository(session, principal)
            key = await repo.key(key_id, user_id=principal.user_id)
            if key is None:
                raise key_not_found()
            revoked = await repo.revoke_key(key.id, utcnow())
            await session.commit()
        await self._revoked(principal, key, revoked)

    # A tenant's keys (admins).

    async def tenant_keys(self, actor: Principal) -> list[tuple[ApiKey, str]]:
        async with self.db.session() as session:
            return await admin_repository(session, actor).keys_with_owners()

    async def revoke_tenant_key(self, actor: Principal, key_id: str) -> None:
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            key = await repo.key(key_id)
            if key is None:
                raise key_not_found()
            revoked = await repo.revoke_key(key.id, utcnow())
            await session.commit()
        await self._revoked(actor, key, revoked)

    async def _revoked(self, actor: Principal, key: ApiKey, revoked: bool) -> None:
        await self.auth.forget_api_key(key.key_hash)
        if revoked:  # revoking a revoked key changes nothing and is not audited again
            await self.audit.record(
                "key.revoked",
                tenant_id=actor.tenant_id,
                actor_id=actor.user_id,
                subject=key.prefix,
                key_id=key.id,
                owner_id=key.user_id,
            )
