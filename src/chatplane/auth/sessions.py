"""Logins and their sessions: password and SSO login with brute-force limits, refresh
tokens rotated on every use with reuse detection, logout (here or everywhere), and
password changes that end the other sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import jwt
from sqlalchemy import select, update

from chatplane.auth.audit import AuditLog
from chatplane.auth.models import Invitation, RefreshToken, Tenant, User, WebSession
from chatplane.auth.principal import Principal
from chatplane.auth.repository import AuthRepository
from chatplane.auth.secrets import Passwords, new_opaque_token, token_hash
from chatplane.auth.service import JWT_ALGORITHM, AuthService, normalize_email, validate_password
from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import (
    Forbidden,
    InvalidCredentials,
    NotFound,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from chatplane.http.client import ClientInfo
from chatplane.limits.counters import WindowCounter
from chatplane.observability.metrics import login_failed
from chatplane.settings import Settings


@dataclass(frozen=True, slots=True)
class LoginResult:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str
    session_token: str  # for the web app's cookie; lives as long as the session
    session_expires_in: int


class SessionService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        passwords: Passwords,
        auth: AuthService,
        failures: WindowCounter,
        audit: AuditLog,
    ) -> None:
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self.auth = auth
        self.failures = failures
        self.audit = audit

    # Password login with brute-force limits.

    async def login(self, email: str, password: str, client: ClientInfo) -> LoginResult:
        try:
            email = normalize_email(email)
        except ValidationFailed:
            email = ""
        keys = [f"login:account:{email}", f"login:ip:{client.ip or 'unknown'}"]
        await self._refuse_when_locked(keys, email, client)
        async with self.db.session() as session:
            repo = AuthRepository(session)
            user = await repo.user_by_email(email) if email else None
            tenant_off = user is not None and await repo.tenant_disabled(user.tenant_id)
        # Always verify, so an unknown email costs the same time as a wrong password.
        valid = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not valid or user.disabled:
            login_failed("disabled" if user is not None and valid else "credentials")
            for key in keys:
                await self.failures.hit(key, window_s=self.settings.login_window_s)
            await self.audit.record(
                "login.failed",
                tenant_id=user.tenant_id if user else None,
                subject=email or None,
                ip=client.ip,
                reason="disabled" if user is not None and valid else "credentials",
            )
            raise InvalidCredentials()
        await self.failures.reset(keys[0])
        if tenant_off:
            raise Forbidden("This organisation is disabled", code="tenant_disabled")
        return await self.open_session(user, method="password", client=client)

    async def _refuse_when_locked(self, keys: list[str], email: str, client: ClientInfo) -> None:
        limit = self.settings.login_max_failures
        for key in keys:
            window = await self.failures.peek(key)
            if window.count >= limit:
                await self.audit.record(
                    "login.locked", subject=email or None, ip=client.ip, scope=key.split(":")[1]
                )
                login_failed("locked")
                retry_after = max(1, int(window.retry_after_s + 0.999))
                raise TooManyRequests(
                    f"Too many failed logins; try again in {retry_after} seconds",
                    code="login_locked",
                    retry_after=retry_after,
                )

    # Sessions.

    async def open_session(self, user: User, *, method: str, client: ClientInfo) -> LoginResult:
        now = utcnow()
        refresh = new_opaque_token()
        web_session = WebSession(
            id=new_id(),
            user_id=user.id,
            expires_at=now + timedelta(seconds=self.settings.session_ttl_s),
            method=method,
            ip=client.ip,
            user_agent=client.user_agent,
            last_used_at=now,
        )
        async with self.db.session() as session:
            session.add(web_session)
            await session.flush()
            session.add(
                RefreshToken(id=new_id(), session_id=web_session.id, token_hash=token_hash(refresh))
            )
            await session.execute(update(User).where(User.id == user.id).values(last_login_at=now))
            await session.commit()
        await self.audit.record(
            "login.succeeded",
            tenant_id=user.tenant_id,
            actor_id=user.id,
            subject=user.email,
            ip=client.ip,
            method=method,
        )
        return self._tokens(user, web_session, refresh)

    async def refresh(self, refresh_token: str, client: ClientInfo) -> LoginResult:
        """Trade a refresh token for new tokens. A token works once: presenting it again
        means two parties hold it, so the whole session (every token of it) is revoked."""
        now = utcnow()
        invalid = Unauthorized("The refresh token is not valid", code="invalid_refresh_token")
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(RefreshToken, WebSession, User)
                    .join(WebSession, WebSession.id == RefreshToken.session_id)
                    .join(User, User.id == WebSession.user_id)
                    .where(RefreshToken.token_hash == token_hash(refresh_token))
                )
            ).first()
            if row is None:
                raise invalid
            token, web_session, user = row
            if not _alive(web_session) or user.disabled:
                raise invalid
            # Claim the token with a conditional update: of two concurrent uses, one wins.
            claimed = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if not getattr(claimed, "rowcount", 0):
                family, tenant_id, user_id = web_session.id, user.tenant_id, user.id
                await session.rollback()  # expires the loaded rows: use the copies above
                await self._revoke([family], reason="refresh_reuse")
                await self.audit.record(
                    "refresh.reused",
                    tenant_id=tenant_id,
                    actor_id=user_id,
                    subject=family,
                    ip=client.ip,
                )
                raise Unauthorized(
                    "This refresh token was already used; the session is ended",
                    code="refresh_token_reused",
                )
            new_refresh = new_opaque_token()
            session.add(
                RefreshToken(
                    id=new_id(), session_id=web_session.id, token_hash=token_hash(new_refresh)
                )
            )
            web_session.last_used_at = now
            await session.commit()
        return self._tokens(user, web_session, new_refresh)

    async def logout(self, principal: Principal) -> None:
        if principal.session_id is not None:
            await self._revoke([principal.session_id], reason="logout")
            await self.audit.record(
                "logout", tenant_id=principal.tenant_id, actor_id=principal.user_id
            )

    async def logout_everywhere(self, user_id: str, *, keep: str | None = None) -> int:
        """End every session of the user (but `keep`); returns how many ended."""
        async with self.db.session() as session:
            ids = list(
                (
                    await session.scalars(
                        select(WebSession.id).where(
                            WebSession.user_id == user_id,
                            WebSession.revoked_at.is_(None),
                            WebSession.id != (keep or ""),
                        )
                    )
                ).all()
            )
        await self._revoke(ids, reason="logout_everywhere")
        return len(ids)

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        validate_password(new)
        async with self.db.session() as session:
            user = await session.get(User, principal.user_id)
        if user is None or not await self.passwords.verify(user.password_hash, current):
            raise InvalidCredentials("The current password is wrong")
        new_hash = await self.passwords.hash(new)
        async with self.db.session() as session:
            await session.execute(
                update(User).where(User.id == principal.user_id).values(password_hash=new_hash)
            )
            await session.commit()
        ended = await self.logout_everywhere(principal.user_id, keep=principal.session_id)
        await self.audit.record(
            "password.changed",
            tenant_id=principal.tenant_id,
            actor_id=principal.user_id,
            sessions_ended=ended,
        )

    async def list_sessions(self, user_id: str) -> list[WebSession]:
        """Open sessions of a user, newest first."""
        async with self.db.session() as session:
            rows = await session.scalars(
                select(WebSession)
                .where(
                    WebSession.user_id == user_id,
                    WebSession.revoked_at.is_(None),
                    WebSession.expires_at > utcnow(),
                )
                .order_by(WebSession.created_at.desc())
            )
            return list(rows.all())

    async def end_session(self, actor: Principal, session_id: str, *, owner_id: str) -> None:
        """End one session of `owner_id` (the caller's own, or a user an admin manages)."""
        async with self.db.session() as session:
            found = await session.scalar(
                select(WebSession.id).where(
                    WebSession.id == session_id,
                    WebSession.user_id == owner_id,
                    WebSession.revoked_at.is_(None),
                )
            )
        if found is None:
            raise NotFound("No such session", code="session_not_found")
        await self._revoke([session_id], reason="ended")
        await self.audit.record(
            "session.revoked",
            tenant_id=actor.tenant_id,
            actor_id=actor.user_id,
            subject=session_id,
        )

    async def _revoke(self, session_ids: list[str], *, reason: str) -> None:
        if not session_ids:
            return
        async with self.db.session() as session:
            await session.execute(
                update(WebSession)
                .where(WebSession.id.in_(session_ids), WebSession.revoked_at.is_(None))
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
            await session.commit()
        for session_id in session_ids:
            await self.auth.forget_session(session_id)

    # Single sign-on provisioning.

    async def provision_sso_user(self, email: str, client: ClientInfo) -> User:
        """The user for a verified SSO email: an existing account, else a new member of the
        tenant whose SSO domains include the email's domain, else one a pending
        invitation names. Anyone else is refused."""
        email = normalize_email(email)
        domain = email.rsplit("@", 1)[1]
        async with self.db.session() as session:
            repo = AuthRepository(session)
            user = await repo.user_by_email(email)
            if user is not None:
                if user.disabled:
                    raise Forbidden("This account is disabled", code="account_disabled")
                return user
            invitation = (
                await session.scalars(
                    select(Invitation)
                    .where(
                        Invitation.email == email,
                        Invitation.accepted_at.is_(None),
                        Invitation.expires_at > utcnow(),
                    )
                    .order_by(Invitation.created_at.desc())
                )
            ).first()
            tenant_id, role = None, "member"
            if invitation is not None:
                tenant_id, role = invitation.tenant_id, invitation.role
                invitation.accepted_at = utcnow()
            else:
                for tenant in (await session.scalars(select(Tenant))).all():
                    if not tenant.disabled and domain in _domains(tenant.sso_domains):
                        tenant_id = tenant.id
                        break
            if tenant_id is None:
                raise Forbidden(
                    "No account and no organisation for this email address",
                    code="sso_not_provisioned",
                )
            user = User(id=new_id(), tenant_id=tenant_id, email=email, role=role)
            session.add(user)
            await session.commit()
        await self.audit.record(
            "user.provisioned", tenant_id=tenant_id, subject=email, ip=client.ip, role=role
        )
        return user

    # Tokens.

    def _tokens(self, user: User, web_session: WebSession, refresh: str) -> LoginResult:
        access_ttl = self.settings.access_token_ttl_s
        session_left = max(1, int((web_session.expires_at - utcnow()).total_seconds()))
        return LoginResult(
            access_token=self._jwt(user, web_session.id, min(access_ttl, session_left)),
            refresh_token=refresh,
            expires_in=min(access_ttl, session_left),
            session_id=web_session.id,
            session_token=self._jwt(user, web_session.id, session_left),
            session_expires_in=session_left,
        )

    def _jwt(self, user: User, session_id: str, ttl_s: int) -> str:
        now = utcnow()
        claims = {
            "sub": user.id,
            "tid": user.tenant_id,
            "sid": session_id,
            "iat": now,
            "exp": now + timedelta(seconds=ttl_s),
        }
        return jwt.encode(claims, self.settings.signing_key, algorithm=JWT_ALGORITHM)


def _alive(web_session: WebSession) -> bool:
    return web_session.revoked_at is None and web_session.expires_at > utcnow()


def _domains(raw: str) -> set[str]:
    return {part.strip().lower() for part in raw.split(",") if part.strip()}
