"""Queries of the identity tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.auth.models import ApiKey, Tenant, User, WebSession


class AuthRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def tenant_by_slug(self, slug: str) -> Tenant | None:
        result = await self.session.scalars(select(Tenant).where(Tenant.slug == slug))
        return result.first()

    async def user_by_email(self, email: str) -> User | None:
        result = await self.session.scalars(select(User).where(User.email == email))
        return result.first()

    async def tenant_disabled(self, tenant_id: str) -> bool:
        tenant = await self.session.get(Tenant, tenant_id)
        return tenant is None or tenant.disabled

    async def user_by_id(self, user_id: str) -> User | None:
        return await self.session.get(User, user_id)

    async def has_users(self) -> bool:
        return await self.session.scalar(select(User.id).limit(1)) is not None

    async def api_key_with_user(self, key_hash: str) -> tuple[ApiKey, User] | None:
        statement = (
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .join(Tenant, Tenant.id == User.tenant_id)
            .where(ApiKey.key_hash == key_hash, Tenant.disabled.is_(False))
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else (row[0], row[1])

    async def touch_api_key(self, key_id: str, when: datetime) -> None:
        await self.session.execute(
            update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when)
        )

    async def session_with_user(self, session_id: str) -> tuple[WebSession, User] | None:
        statement = (
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .join(Tenant, Tenant.id == User.tenant_id)
            .where(WebSession.id == session_id, Tenant.disabled.is_(False))
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else (row[0], row[1])
