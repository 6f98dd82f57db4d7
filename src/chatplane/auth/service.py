"""Identity rules: users, API keys, logins and turning a credential into a Principal."""

from __future__ import annotations

import re
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy.exc import IntegrityError

from chatplane.auth.audit import AuditLog
from chatplane.auth.models import ROLES, ApiKey, Tenant, User, WebSession
from chatplane.auth.principal import Principal
from chatplane.auth.repository import AuthRepository
from chatplane.auth.secrets import (
    API_KEY_PREFIX,
    Passwords,
    new_api_key,
    token_hash,
)
from chatplane.cache import Cache, LocalCache, Namespace
from chatplane.db.base import new_id, utcnow
from chatplane.db.engine import Database
from chatplane.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from chatplane.limits.models import Budget
from chatplane.settings import Settings

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
JWT_ALGORITHM = "HS256"
LAST_USED_RESOLUTION = timedelta(minutes=1)


API_KEY_SCOPES = frozenset({"chat", "admin"})


def _dump_principal(principal: Principal) -> dict[str, Any]:
    data = asdict(principal)
    del data["via_cookie"]  # how this request came, not what the credential is
    data["scopes"] = sorted(principal.scopes)
    return data


def _load_principal(data: dict[str, Any]) -> Principal:
    return Principal(**{**data, "scopes": frozenset(data["scopes"])})


# API keys (`k:<sha256 of the key>`) and web sessions (`s:<session id>`) -> Principal.
PRINCIPALS = Namespace[Principal]("principals", _dump_principal, _load_principal)


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"The password needs at least {MIN_PASSWORD_LENGTH} characters", field="password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"The password has at most {MAX_PASSWORD_LENGTH} characters", field="password"
        )


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 320:
        raise ValidationFailed("Not a valid email address", field="email")
    return email


class AuthService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        passwords: Passwords,
        audit: AuditLog,
        cache: Cache | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self.audit = audit
        # Revocations reach every process at once (the cache invalidates across them).
        self.cache: Cache = cache or LocalCache(
            ttl_s=settings.cache_local_ttl_s, max_items=settings.cache_max_items
        )

    async def forget_session(self, session_id: str) -> None:
        await self.cache.invalidate(PRINCIPALS, f"s:{session_id}")

    async def forget_api_key(self, key_hash: str) -> None:
        await self.cache.invalidate(PRINCIPALS, f"k:{key_hash}")

    async def forget_everyone(self) -> None:
        await self.cache.invalidate_all(PRINCIPALS)

    # Users and keys (CLI and admin).

    async def create_user(
        self, email: str, password: str, *, tenant_slug: str = "default", role: str = "member"
    ) -> User:
        email = normalize_email(email)
        validate_password(password)
        if role not in ROLES:
            raise ValidationFailed(f"Unknown role {role!r}", field="role")
        if not SLUG_RE.match(tenant_slug):
            raise ValidationFailed("A tenant slug is lowercase letters, digits and -")
        password_hash = await self.passwords.hash(password)
        async with self.db.session() as session:
            repo = AuthRepository(session)
            tenant = await repo.tenant_by_slug(tenant_slug)
            if tenant is None:
                tenant = Tenant(id=new_id(), slug=tenant_slug, name=tenant_slug)
                session.add(tenant)
                role = "owner"  # whoever opens a tenant owns it
            user = User(
                id=new_id(),
                tenant_id=tenant.id,
                email=email,
                password_hash=password_hash,
                role=role,
            )
            session.add(user)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise Conflict(f"A user with email {email} exists", code="user_exists") from exc
        return user

    async def create_api_key(
        self,
        email: str,
        name: str,
        *,
        rpm: int | None = None,
        budget_usd: float | None = None,
        expires_at: datetime | None = None,
        scopes: frozenset[str] = frozenset({"chat"}),
    ) -> tuple[ApiKey, str]:
        email = normalize_email(email)
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise ValidationFailed("A key name has 1 to 100 characters", field="name")
        if not scopes or not scopes <= API_KEY_SCOPES:
            raise ValidationFailed(
                f"Scopes are one or more of {sorted(API_KEY_SCOPES)}", field="scopes"
            )
        plaintext = new_api_key()
        async with self.db.session() as session:
            user = await AuthRepository(session).user_by_email(email)
            if user is None:
                raise NotFound(f"No user with email {email}")
            key = ApiKey(
                id=new_id(),
                tenant_id=user.tenant_id,
                user_id=user.id,
                name=name,
                prefix=plaintext[: len(API_KEY_PREFIX) + 6],
                key_hash=token_hash(plaintext),
                scopes=",".join(sorted(scopes)),
                rpm=rpm,
                expires_at=expires_at,
            )
            session.add(key)
            if budget_usd is not None:
                await session.flush()  # the key row first: the budget refers to it
                session.add(
                    Budget(
                        tenant_id=user.tenant_id,
                        scope="key",
                        subject_id=key.id,
                        period="lifetime",
                        limit_usd=budget_usd,
                    )
                )
            await session.commit()
        await self.audit.record(
            "key.created",
            tenant_id=user.tenant_id,
            actor_id=user.id,
            subject=key.prefix,
            scopes=key.scopes,
        )
        return key, plaintext

    # Authentication of requests.

    async def authenticate_bearer(self, token: str) -> Principal:
        if token.startswith(API_KEY_PREFIX):
            return await self.authenticate_api_key(token)
        return await self.authenticate_session_token(token)

    async def authenticate_api_key(self, key: str) -> Principal:
        digest = token_hash(key)
        return await self.cache.load(PRINCIPALS, f"k:{digest}", lambda: self._key_principal(digest))

    async def _key_principal(self, digest: str) -> tuple[Principal, float | None]:
        """The principal of a key from the database, kept no longer than the key lives."""
        now = utcnow()
        async with self.db.session() as session:
            repo = AuthRepository(session)
            found = await repo.api_key_with_user(digest)
            if found is None:
                raise Unauthorized("The API key is not valid", code="invalid_api_key")
            api_key, user = found
            if api_key.revoked_at is not None or user.disabled:
                raise Unauthorized("The API key was revoked", code="invalid_api_key")
            if api_key.expires_at is not None and api_key.expires_at <= now:
                raise Unauthorized("The API key has expired", code="invalid_api_key")
            if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
                await repo.touch_api_key(api_key.id, now)
                await session.commit()
        principal = replace(
            _principal(user, api_key_id=api_key.id),
            scopes=frozenset(api_key.scopes.split(",")),
        )
        return principal, _seconds_until(api_key.expires_at, now)

    async def authenticate_session_token(
        self, token: str, *, via_cookie: bool = False
    ) -> Principal:
        try:
            claims = jwt.decode(token, self.settings.signing_key, algorithms=[JWT_ALGORITHM])
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The session has expired", code="token_expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("The token is not valid", code="invalid_token") from exc
        session_id = str(claims.get("sid", ""))
        principal = await self.cache.load(
            PRINCIPALS, f"s:{session_id}", lambda: self._session_principal(session_id)
        )
        return replace(principal, via_cookie=True) if via_cookie else principal

    async def _session_principal(self, session_id: str) -> tuple[Principal, float | None]:
        async with self.db.session() as session:
            found = await AuthRepository(session).session_with_user(session_id)
        if found is None or not _session_alive(found[0]) or found[1].disabled:
            raise Unauthorized("The session has ended", code="session_ended")
        return _principal(found[1], session_id=session_id), _seconds_until(
            found[0].expires_at, utcnow()
        )


def _session_alive(web_session: WebSession) -> bool:
    return web_session.revoked_at is None and web_session.expires_at > utcnow()


def _seconds_until(when: datetime | None, now: datetime) -> float | None:
    return None if when is None else max(0.0, (when - now).total_seconds())


def _principal(user: User, **extra: str | None) -> Principal:
    return Principal(
        user_id=user.id,
        tenant_id=user.tenant_id,
        email=user.email,
        role=user.role,
        is_superadmin=user.is_superadmin,
        api_key_id=extra.get("api_key_id"),
        session_id=extra.get("session_id"),
    )
