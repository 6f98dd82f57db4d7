"""The rules of administering one tenant's users, their sessions and the audit log.

Every method takes the acting `Principal` and reaches rows only through a
`TenantRepository` built from it (see `repository.py`), so an id from another tenant is
"not found". The acting user's role is re-read inside the transaction: a role cached with
a credential may be a few seconds old."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from chatplane.admin.repository import TenantRepository
from chatplane.auth.audit import AuditLog
from chatplane.auth.models import ROLES, AuditEvent, User, WebSession
from chatplane.auth.principal import Principal
from chatplane.auth.service import AuthService, normalize_email, validate_password
from chatplane.auth.sessions import SessionService
from chatplane.db.base import new_id
from chatplane.db.engine import Database
from chatplane.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed


def admin_repository(session: AsyncSession, actor: Principal) -> TenantRepository:
    """The repository of the actor's tenant, for an admin credential only (the routes
    check this too; the rules do not rely on them)."""
    if not (actor.is_admin and actor.may("admin")):
        raise Forbidden("Only admins of the organisation may do this", code="not_admin")
    return TenantRepository(session, actor)


async def acting_user(repo: TenantRepository, actor: Principal) -> User:
    user = await repo.user(actor.user_id)
    if user is None or user.disabled:
        raise Forbidden("This account may not do this", code="not_admin")
    return user


def require_owner_for(actor: Principal, acting: User, *roles: str | None) -> None:
    """Only an owner (or a superadmin) may grant the owner role, or change an owner."""
    if "owner" in roles and acting.role != "owner" and not actor.is_superadmin:
        raise Forbidden("Only an owner may grant or change the owner role", code="owner_required")


def user_not_found() -> NotFound:
    return NotFound("No such user", code="user_not_found")


@dataclass(frozen=True, slots=True)
class UserChange:
    user: User
    role_from: str
    disabled_from: bool


class AdminService:
    def __init__(
        self, db: Database, auth: AuthService, sessions: SessionService, audit: AuditLog
    ) -> None:
        self.db = db
        self.auth = auth
        self.sessions = sessions
        self.audit = audit

    # Users.

    async def list_users(
        self, actor: Principal, *, email_contains: str | None, limit: int, offset: int
    ) -> tuple[Sequence[User], int]:
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            needle = (email_contains or "").strip().lower() or None
            return await repo.users_page(email_contains=needle, limit=limit, offset=offset)

    async def get_user(self, actor: Principal, user_id: str) -> User:
        async with self.db.session() as session:
            user = await admin_repository(session, actor).user(user_id)
        if user is None:
            raise user_not_found()
        return user

    async def create_user(
        self, actor: Principal, *, email: str, password: str | None, role: str
    ) -> User:
        """A user of the actor's tenant. Without a password it signs in with SSO only."""
        email = normalize_email(email)
        if role not in ROLES:
            raise ValidationFailed(f"Unknown role {role!r}", field="role")
        password_hash = None
        if password is not None:
            validate_password(password)
            password_hash = await self.auth.passwords.hash(password)
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            require_owner_for(actor, await acting_user(repo, actor), role)
            user = repo.add(User(id=new_id(), email=email, password_hash=password_hash, role=role))
            try:
                await session.commit()
            except IntegrityError as exc:
                raise Conflict(f"A user with email {email} exists", code="user_exists") from exc
        await self.audit.record(
            "user.created",
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=user.id,
            email=email,
            role=role,
            password=password_hash is not None,
        )
        return user

    async def update_user(
        self, actor: Principal, user_id: str, *, role: str | None, disabled: bool | None
    ) -> User:
        """Change a user's role or disable it. Disabling ends its sessions, and its API
        keys stop working, at once in every process."""
        change = await self._apply_user_change(actor, user_id, role=role, disabled=disabled)
        user = change.user
        audit = {"tenant_id": actor.tenant_id, "actor_id": actor.user_id, "subject": user.id}
        if user.role != change.role_from:
            await self.audit.record(
                "user.role_changed", **audit, role_from=change.role_from, role_to=user.role
            )
        if user.disabled and not change.disabled_from:
            ended = await self.sessions.logout_everywhere(user.id)
            await self.audit.record("user.disabled", **audit, sessions_ended=ended)
        elif change.disabled_from and not user.disabled:
            await self.audit.record("user.enabled", **audit)
        if user.role != change.role_from or user.disabled != change.disabled_from:
            await self._forget_credentials(actor, user.id)
        return user

    async def _apply_user_change(
        self, actor: Principal, user_id: str, *, role: str | None, disabled: bool | None
    ) -> UserChange:
        if role is not None and role not in ROLES:
            raise ValidationFailed(f"Unknown role {role!r}", field="role")
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            await repo.lock_tenant()  # owner changes of one tenant happen one at a time
            acting = await acting_user(repo, actor)
            user = await repo.user(user_id)
            if user is None:
                raise user_not_found()
            change = UserChange(user, role_from=user.role, disabled_from=user.disabled)
            values: dict[str, object] = {}
            if role is not None and role != user.role:
                values["role"] = role
            if disabled is not None and disabled != user.disabled:
                values["disabled"] = disabled
            if not values:
                return change
            require_owner_for(actor, acting, user.role, role)
            if user.is_superadmin and not actor.is_superadmin:
                raise Forbidden("Only a superadmin may change a superadmin", code="not_superadmin")
            if values.get("disabled") and user.id == actor.user_id:
                raise BadRequest("You cannot disable yourself", code="cannot_disable_self")
            await repo.set_user(user.id, **values)
            if await repo.active_owners() == 0:
                await session.rollback()
                raise Conflict(
                    "The organisation needs at least one active owner", code="last_owner"
                )
            await session.commit()  # the update also set the new values on `user`
        return change

    async def _forget_credentials(self, actor: Principal, user_id: str) -> None:
        """Drop the cached principals of a user's sessions and keys, so the next request
        reads its new role or disabled flag."""
        async with self.db.session() as session:
            keys = await TenantRepository(session, actor).keys_of(user_id)
        for key in keys:
            await self.auth.forget_api_key(key.key_hash)
        for web_session in await self.sessions.list_sessions(user_id):
            await self.auth.forget_session(web_session.id)

    # Sessions of a user.

    async def user_sessions(self, actor: Principal, user_id: str) -> list[WebSession]:
        user = await self.get_user(actor, user_id)
        return await self.sessions.list_sessions(user.id)

    async def end_user_session(self, actor: Principal, user_id: str, session_id: str) -> None:
        user = await self.get_user(actor, user_id)
        await self.sessions.end_session(actor, session_id, owner_id=user.id)

    async def logout_user_everywhere(self, actor: Principal, user_id: str) -> int:
        user = await self.get_user(actor, user_id)
        ended = await self.sessions.logout_everywhere(user.id)
        await self.audit.record(
            "session.revoked",
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=user.id,
            everywhere=True,
            sessions_ended=ended,
        )
        return ended

    # Audit log.

    async def audit_page(
        self, actor: Principal, *, limit: int, before: str | None
    ) -> tuple[Sequence[AuditEvent], str | None]:
        """The tenant's events, newest first; `before` is the id of the last one seen."""
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            cursor = None
            if before is not None:
                cursor = await repo.audit_event(before)
                if cursor is None:
                    raise BadRequest(
                        "The cursor is not valid", code="invalid_cursor", field="before"
                    )
            events = await repo.audit_page(limit=limit + 1, before=cursor)
        page = events[:limit]
        return page, (page[-1].id if len(events) > limit else None)
