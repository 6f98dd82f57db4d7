"""Invitations: an admin invites an email with a role; whoever holds the token (sent out of
band) sets a password and becomes that user of the inviting tenant, logged in."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from chatplane.admin.repository import InvitationTokens, email_taken
from chatplane.admin.service import acting_user, admin_repository, require_owner_for
from chatplane.auth.audit import AuditLog
from chatplane.auth.models import ROLES, Invitation, User
from chatplane.auth.principal import Principal
from chatplane.auth.secrets import Passwords, new_opaque_token, token_hash
from chatplane.auth.service import normalize_email, validate_password
from chatplane.auth.sessions import LoginResult, SessionService
from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import BadRequest, Conflict, Forbidden, NotFound, ValidationFailed
from chatplane.http.client import ClientInfo

DEFAULT_EXPIRY_DAYS = 7


def accept_url(token: str) -> str:
    return f"/?invite={token}"


def _user_exists(email: str) -> Conflict:
    return Conflict(f"A user with email {email} exists", code="user_exists")


class InvitationService:
    def __init__(
        self, db: Database, passwords: Passwords, sessions: SessionService, audit: AuditLog
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.sessions = sessions
        self.audit = audit

    async def invite(
        self, actor: Principal, *, email: str, role: str, expires_in_days: int | None
    ) -> tuple[Invitation, str]:
        """A new invitation and its token (returned once; only its hash is stored)."""
        email = normalize_email(email)
        if role not in ROLES:
            raise ValidationFailed(f"Unknown role {role!r}", field="role")
        token = new_opaque_token()
        now = utcnow()
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            require_owner_for(actor, await acting_user(repo, actor), role)
            if await email_taken(session, email):
                raise _user_exists(email)
            if await repo.pending_invitation_for(email, now) is not None:
                raise Conflict(
                    f"{email} already has a pending invitation; revoke it first",
                    code="invitation_pending",
                )
            invitation = repo.add(
                Invitation(
                    id=new_id(),
                    email=email,
                    role=role,
                    token_hash=token_hash(token),
                    created_by=actor.user_id,
                    created_at=now,
                    expires_at=now + timedelta(days=expires_in_days or DEFAULT_EXPIRY_DAYS),
                )
            )
            await session.commit()
        await self.audit.record(
            "invitation.created",
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=email,
            invitation_id=invitation.id,
            role=role,
        )
        return invitation, token

    async def pending(self, actor: Principal) -> Sequence[Invitation]:
        async with self.db.session() as session:
            return await admin_repository(session, actor).pending_invitations(utcnow())

    async def revoke(self, actor: Principal, invitation_id: str) -> None:
        async with self.db.session() as session:
            repo = admin_repository(session, actor)
            invitation = await repo.get(Invitation, invitation_id)
            deleted = invitation is not None and await repo.delete_pending_invitation(invitation.id)
            await session.commit()
        if invitation is None or not deleted:
            raise NotFound("No such pending invitation", code="invitation_not_found")
        await self.audit.record(
            "invitation.revoked",
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=invitation.email,
            invitation_id=invitation.id,
        )

    async def accept(self, token: str, password: str, client: ClientInfo) -> LoginResult:
        """Create the invited user with this password and open its first session."""
        validate_password(password)
        digest = token_hash(token)
        async with self.db.session() as session:
            found = await InvitationTokens(session).by_hash(digest)
        if found is None:
            raise NotFound("This invitation does not exist", code="invitation_not_found")
        invitation, tenant = found
        if invitation.accepted_at is not None:
            raise BadRequest("This invitation was already used", code="invitation_used")
        if invitation.expires_at <= utcnow():
            raise BadRequest("This invitation has expired", code="invitation_expired")
        if tenant.disabled:
            raise Forbidden("This organisation is disabled", code="tenant_disabled")
        password_hash = await self.passwords.hash(password)
        async with self.db.session() as session:
            if await email_taken(session, invitation.email):
                raise _user_exists(invitation.email)
            tokens = InvitationTokens(session)
            if not await tokens.claim(invitation, utcnow()):
                raise BadRequest("This invitation was already used", code="invitation_used")
            user = tokens.add_member(invitation, User(id=new_id(), password_hash=password_hash))
            try:
                await session.commit()
            except IntegrityError as exc:  # the email was taken meanwhile
                raise _user_exists(invitation.email) from exc
        await self.audit.record(
            "invitation.accepted",
            tenant_id=user.tenant_id,
            actor_id=user.id,
            subject=user.email,
            ip=client.ip,
            invitation_id=invitation.id,
            role=user.role,
        )
        return await self.sessions.open_session(user, method="password", client=client)
