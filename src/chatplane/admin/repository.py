"""Queries of the admin and own-keys APIs, and the one place they enforce tenant isolation.

Rows a tenant owns are reached only through `TenantScope`. It is built from the caller's
`Principal` (never from a tenant id a request names), adds `tenant_id == <that tenant>` to
every select, update and delete it builds, and stamps the tenant on every row it adds, so a
query of another tenant's rows cannot be written with it: a foreign id simply finds nothing,
which the services answer with 404.

Three readers are unscoped on purpose, and named so: `TenantDirectory` (superadmins manage
the tenants themselves), `InvitationTokens` (an invitation is found by its secret token,
before anyone is logged in) and `email_taken` (emails are unique across tenants)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Delete, Select, Update, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.auth.models import ApiKey, AuditEvent, Invitation, Tenant, User
from chatplane.auth.principal import Principal
from chatplane.limits.models import Budget, TenantLimits

# The identity and limit tables with a tenant_id column (tests/admin/test_scoping.py checks
# the list).
TenantOwned = TypeVar("TenantOwned", User, ApiKey, Invitation, AuditEvent, Budget)


class TenantScope:
    """Statements over the caller's tenant only."""

    def __init__(self, session: AsyncSession, principal: Principal) -> None:
        self.session = session
        self.tenant_id = principal.tenant_id

    def select(self, model: type[TenantOwned]) -> Select[TenantOwned]:
        return select(model).where(model.tenant_id == self.tenant_id)

    def update(self, model: type[TenantOwned]) -> Update:
        return update(model).where(model.tenant_id == self.tenant_id)

    def delete(self, model: type[TenantOwned]) -> Delete:
        return delete(model).where(model.tenant_id == self.tenant_id)

    def add(self, row: TenantOwned) -> TenantOwned:
        row.tenant_id = self.tenant_id
        self.session.add(row)
        return row

    async def get(self, model: type[TenantOwned], row_id: str) -> TenantOwned | None:
        return (await self.session.scalars(self.select(model).where(model.id == row_id))).first()

    async def lock_tenant(self) -> None:
        """Serialise changes to this tenant's owners: a no-op write to the tenant's row
        holds its row lock (Postgres) or the write lock (SQLite) until commit."""
        await self.session.execute(
            update(Tenant).where(Tenant.id == self.tenant_id).values(slug=Tenant.slug)
        )


class TenantRepository(TenantScope):
    """The queries of the admin and own-keys APIs, all built on the scope's statements."""

    # Users.

    async def user(self, user_id: str) -> User | None:
        return await self.get(User, user_id)

    async def users_page(
        self, *, email_contains: str | None, limit: int, offset: int
    ) -> tuple[Sequence[User], int]:
        statement = self.select(User)
        if email_contains:
            statement = statement.where(User.email.contains(email_contains, autoescape=True))
        total = await self.session.scalar(select(func.count()).select_from(statement.subquery()))
        rows = await self.session.scalars(
            statement.order_by(User.email).limit(limit).offset(offset)
        )
        return rows.all(), int(total or 0)

    async def set_user(self, user_id: str, **values: Any) -> None:
        await self.session.execute(self.update(User).where(User.id == user_id).values(**values))

    async def active_owners(self) -> int:
        statement = self.select(User).where(User.role == "owner", User.disabled.is_(False))
        count = await self.session.scalar(select(func.count()).select_from(statement.subquery()))
        return int(count or 0)

    # API keys.

    async def key(self, key_id: str, *, user_id: str | None = None) -> ApiKey | None:
        statement = self.select(ApiKey).where(ApiKey.id == key_id)
        if user_id is not None:
            statement = statement.where(ApiKey.user_id == user_id)
        return (await self.session.scalars(statement)).first()

    async def keys_of(self, user_id: str) -> Sequence[ApiKey]:
        statement = self.select(ApiKey).where(ApiKey.user_id == user_id)
        return (await self.session.scalars(statement.order_by(ApiKey.created_at.desc()))).all()

    async def keys_with_owners(self) -> list[tuple[ApiKey, str]]:
        statement = (
            self.select(ApiKey)
            .join(User, and_(User.id == ApiKey.user_id, User.tenant_id == self.tenant_id))
            .add_columns(User.email)
            .order_by(ApiKey.created_at.desc())
        )
        return [(row[0], row[1]) for row in (await self.session.execute(statement)).all()]

    async def revoke_key(self, key_id: str, when: datetime) -> bool:
        result = await self.session.execute(
            self.update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=when)
        )
        return bool(getattr(result, "rowcount", 0))

    # Invitations.

    async def pending_invitations(self, now: datetime) -> Sequence[Invitation]:
        statement = self.select(Invitation).where(
            Invitation.accepted_at.is_(None), Invitation.expires_at > now
        )
        return (await self.session.scalars(statement.order_by(Invitation.created_at.desc()))).all()

    async def pending_invitation_for(self, email: str, now: datetime) -> Invitation | None:
        statement = self.select(Invitation).where(
            Invitation.email == email, Invitation.accepted_at.is_(None), Invitation.expires_at > now
        )
        return (await self.session.scalars(statement)).first()

    async def delete_pending_invitation(self, invitation_id: str) -> bool:
        result = await self.session.execute(
            self.delete(Invitation).where(
                Invitation.id == invitation_id, Invitation.accepted_at.is_(None)
            )
        )
        return bool(getattr(result, "rowcount", 0))

    # Audit events.

    async def audit_event(self, event_id: str) -> AuditEvent | None:
        return await self.get(AuditEvent, event_id)

    async def audit_page(self, *, limit: int, before: AuditEvent | None) -> Sequence[AuditEvent]:
        statement = self.select(AuditEvent)
        if before is not None:
            statement = statement.where(
                or_(
                    AuditEvent.created_at < before.created_at,
                    and_(AuditEvent.created_at == before.created_at, AuditEvent.id < before.id),
                )
            )
        statement = statement.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
        return (await self.session.scalars(statement.limit(limit))).all()


class LimitsRepository(TenantScope):
    """A tenant's limit overrides, its keys' own limits and its budgets."""

    async def overrides(self) -> TenantLimits | None:
        return await self.session.get(TenantLimits, self.tenant_id)

    def add_overrides(self) -> TenantLimits:
        row = TenantLimits(tenant_id=self.tenant_id)
        self.session.add(row)
        return row

    async def get_key(self, key_id: str) -> ApiKey | None:
        return await self.get(ApiKey, key_id)

    async def tenant_exists(self) -> bool:
        return await self.session.get(Tenant, self.tenant_id) is not None

    async def user_exists(self, user_id: str) -> bool:
        return await self.get(User, user_id) is not None

    async def budgets(self) -> Sequence[Budget]:
        statement = self.select(Budget).order_by(Budget.scope, Budget.subject_id, Budget.period)
        return (await self.session.scalars(statement)).all()

    async def budget(self, budget_id: str) -> Budget | None:
        return await self.get(Budget, budget_id)

    async def delete_budget(self, budget_id: str) -> bool:
        result = await self.session.execute(self.delete(Budget).where(Budget.id == budget_id))
        return bool(getattr(result, "rowcount", 0))

    async def labels(self, budgets: Sequence[Budget]) -> dict[str, str]:
        """Emails of the users and names of the keys that budgets name."""
        users = [b.subject_id for b in budgets if b.scope == "user"]
        keys = [b.subject_id for b in budgets if b.scope == "key"]
        labels: dict[str, str] = {}
        if users:
            rows = await self.session.execute(
                select(User.id, User.email).where(
                    User.tenant_id == self.tenant_id, User.id.in_(users)
                )
            )
            labels.update((user_id, email) for user_id, email in rows)
        if keys:
            key_rows = await self.session.execute(
                select(ApiKey.id, ApiKey.name, ApiKey.prefix).where(
                    ApiKey.tenant_id == self.tenant_id, ApiKey.id.in_(keys)
                )
            )
            labels.update({key_id: f"{name} ({prefix}…)" for key_id, name, prefix in key_rows})
        return labels


class TenantDirectory:
    """Every tenant: for superadmins only (the services check), never for tenant admins."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def tenants(self) -> Sequence[Tenant]:
        return (await self.session.scalars(select(Tenant).order_by(Tenant.slug))).all()

    async def tenant(self, tenant_id: str) -> Tenant | None:
        return await self.session.get(Tenant, tenant_id)

    def add(self, tenant: Tenant) -> None:
        self.session.add(tenant)

    async def set_tenant(self, tenant_id: str, **values: Any) -> None:
        await self.session.execute(update(Tenant).where(Tenant.id == tenant_id).values(**values))


class InvitationTokens:
    """An invitation found by its token's hash, the only scope an anonymous caller has;
    the user it creates belongs to the invitation's tenant."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_hash(self, digest: str) -> tuple[Invitation, Tenant] | None:
        statement = (
            select(Invitation, Tenant)
            .join(Tenant, Tenant.id == Invitation.tenant_id)
            .where(Invitation.token_hash == digest)
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else (row[0], row[1])

    async def claim(self, invitation: Invitation, when: datetime) -> bool:
        """Mark it accepted if it still is open: of two concurrent accepts, one wins."""
        result = await self.session.execute(
            update(Invitation)
            .where(
                Invitation.id == invitation.id,
                Invitation.accepted_at.is_(None),
                Invitation.expires_at > when,
            )
            .values(accepted_at=when)
        )
        return bool(getattr(result, "rowcount", 0))

    def add_member(self, invitation: Invitation, user: User) -> User:
        user.tenant_id = invitation.tenant_id
        user.role = invitation.role
        user.email = invitation.email
        self.session.add(user)
        return user


async def email_taken(session: AsyncSession, email: str) -> bool:
    """Emails are unique across tenants, so this one question crosses them: yes or no."""
    found = await session.scalar(select(User.id).where(User.email == email).limit(1))
    return found is not None
