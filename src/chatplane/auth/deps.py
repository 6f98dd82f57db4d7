"""FastAPI dependencies: who is calling, from a bearer token or the web app's cookie."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

import structlog
from fastapi import Depends, Request
from starlette.types import Scope

from chatplane.auth.principal import Principal
from chatplane.container import Services, get_services
from chatplane.errors import Forbidden, Unauthorized
from chatplane.http.client import ClientInfo, client_info
from chatplane.limits.service import remember, zone_of

SESSION_COOKIE = "chatplane_session"
CSRF_COOKIE = "chatplane_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Use 'Authorization: Bearer <token>'", code="invalid_authorization")
    return token.strip()


def bind_principal(principal: Principal) -> Principal:
    """Every log line of the request from here on names the tenant and the user."""
    structlog.contextvars.bind_contextvars(tenant_id=principal.tenant_id, user_id=principal.user_id)
    return principal


def saw_user(services: Services, principal: Principal) -> None:
    """The user counts as active on the operations dashboard (a set insert per request)."""
    if services.presence is not None:
        services.presence.saw_user(principal.user_id)


async def authenticate_request(
    services: Services, *, method: str, headers: Mapping[str, str], cookies: Mapping[str, str]
) -> Principal:
    """A bearer token (API key or access token), else the web app's session cookie, which
    also needs the CSRF header on anything but a read."""
    principal = await _authenticate(services, method=method, headers=headers, cookies=cookies)
    saw_user(services, principal)
    return principal


async def _authenticate(
    services: Services, *, method: str, headers: Mapping[str, str], cookies: Mapping[str, str]
) -> Principal:
    token = bearer_token(headers.get("authorization"))
    if token is not None:
        return bind_principal(await services.auth.authenticate_bearer(token))
    cookie = cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized()
    principal = bind_principal(
        await services.auth.authenticate_session_token(cookie, via_cookie=True)
    )
    if method not in SAFE_METHODS:
        expected = cookies.get(CSRF_COOKIE, "")
        given = headers.get(CSRF_HEADER, "")
        if not expected or not hmac.compare_digest(expected, given):
            raise Forbidden("Missing or wrong X-CSRF-Token header", code="csrf_failed")
    return principal


async def count_request(services: Services, principal: Principal, scope: Scope) -> None:
    """One more request for the caller's key, user and tenant limits (429 when over);
    the decision is kept for the `RateLimit-*` headers."""
    zone = zone_of(scope["path"], scope["method"]) or "chat"
    decision = await services.limits.check_requests(principal, zone)
    remember(scope.setdefault("state", {}), decision)


async def current_principal(
    request: Request, services: Annotated[Services, Depends(get_services)]
) -> Principal:
    principal = await authenticate_request(
        services, method=request.method, headers=request.headers, cookies=request.cookies
    )
    await count_request(services, principal, request.scope)
    return principal


def require_scope(principal: Principal, scope: str) -> Principal:
    if not principal.may(scope):
        raise Forbidden(f"This credential lacks the '{scope}' scope", code="insufficient_scope")
    return principal


async def chat_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    return require_scope(principal, "chat")


async def admin_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    require_scope(principal, "admin")
    if not principal.is_admin:
        raise Forbidden("Only admins of the organisation may do this", code="not_admin")
    return principal


async def request_client(request: Request) -> ClientInfo:
    """The client as the HTTP middleware resolved it (through trusted proxies only)."""
    return client_info(request.client.host if request.client else None, request.headers)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
ChatPrincipal = Annotated[Principal, Depends(chat_principal)]
AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
ServicesDep = Annotated[Services, Depends(get_services)]
ClientDep = Annotated[ClientInfo, Depends(request_client)]
